"""Recurrent states a model keeps outside transformers' cache-layer classes, found by what its forward reads and
writes on one probing step, one entry of CARRIERS per way a model carries them:

    argument    the forward takes them as a keyword and returns them in its output under the same name
                (RWKV's `state`: a list of tensors, written in place by the blocks)
    attribute   modules keep them as plain tensor attributes that a forward with use_cache sets
                (RecurrentGemma's `conv1d_state` and `rg_lru.recurrent_states`)
    cache_list  the model's own Cache subclass keeps a list of tensors beside its attention layers
                (MiniMax's `linear_cache`: lightning attention's K^T V per layer)
    cache_field the model's cache is an object of its own, not a transformers Cache with layers: every tensor it
                holds, however nested in dicts, lists and tuples (xLSTM's `rnn_state[layer]` = (C, n, m) and its
                `seqlen_offset` counter), is a state; the forward is given a copy of the probe's object whose
                tensors are the graph's inputs (its other attributes as one step left them: a cache in use)

Each state is a graph input and output like K and V (frontends/kv_cache.py), of fixed size, replaced by each call,
zeros at the start. A zero state is what these models' first-token paths assume (RWKV's running maximum starts
at -1e30 rather than 0, but with a zero numerator and denominator any offset represents the same empty sum), so
the graph is exported for one token per call and takes the model's recurrent branch from the first token on, as
the linear-attention cache layers do (cache_layers.py). States are cloned before the forward: a model that
writes them in place (RWKV) then writes a copy, and the graph has no input mutation.
"""

from __future__ import annotations

import copy
import inspect
import json

import torch
from torch import nn

# kind -> the prefix of its graph inputs' names (prefix + running index)
CARRIERS = {"argument": "s", "attribute": "m", "cache_list": "l", "cache_field": "o"}


def _tensors(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(t, torch.Tensor) for t in value)


def attribute_snapshot(model: nn.Module) -> dict[str, object]:
    """`module.path.attr` -> value, for every plain (non-parameter, non-buffer) attribute of every module that is a
    tensor or None: what a stateful forward may set."""
    return {f"{name}.{attr}" if name else attr: value for name, module in model.named_modules()
            for attr, value in vars(module).items()
            if not attr.startswith("_") and (value is None or isinstance(value, torch.Tensor))}


def restore_attributes(model: nn.Module, snapshot: dict[str, object]) -> None:
    """Undo what a forward set: every attribute of `snapshot` back to its value."""
    for path, value in snapshot.items():
        module, attr = _owner(model, path)
        setattr(module, attr, value)


def _owner(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    name, _, attr = path.rpartition(".")
    return (model.get_submodule(name) if name else model), attr


def probe_states(model: nn.Module, out, cache, before: dict[str, object]) -> list[tuple]:
    """(kind, path, index, shape, dtype) of each state the probing forward left: `out` its output, `cache` the cache
    it returned (or None), `before` the attribute snapshot taken before it."""
    if cache is not None and not _is_cache(cache):  # the model's own cache object (`cache_field`)
        return [("cache_field", json.dumps(path), 0, tuple(t.shape), t.dtype) for path, t in object_tensors(cache)]
    found = []
    takes = inspect.signature(model.forward).parameters
    for field, value in (out.items() if hasattr(out, "items") else ()):
        if field in takes and not _is_cache(value) and _tensors(value) and _fixed_size(model, field, value):
            found += [("argument", field, i, tuple(t.shape), t.dtype) for i, t in enumerate(value)]
    if cache is None and not found:  # set by the forward, per batch row (a lazily built rotary table is not batched)
        for path, value in attribute_snapshot(model).items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim >= 2 \
                    and value.shape[0] == 1 and _set_by_forward(value, before.get(path)):
                found.append(("attribute", path, 0, tuple(value.shape), value.dtype))
    if cache is not None:
        for field, value in vars(cache).items():  # a list of per-layer tensors ([] where a layer has none)
            if field.startswith("_") or not isinstance(value, list) or field == "layers":
                continue
            if any(isinstance(t, torch.Tensor) for t in value) and all(isinstance(t, torch.Tensor) or t == []
                                                                       for t in value):
                found += [("cache_list", field, i, tuple(t.shape), t.dtype) for i, t in enumerate(value)
                          if isinstance(t, torch.Tensor)]
    return found


def _set_by_forward(value: torch.Tensor, was) -> bool:
    """Whether the probe set this attribute: there was nothing before, or a state a forward before ours left (the
    user ran `generate` first), which the probe replaced by another value; a table rebuilt the same is not a state."""
    return was is None or (isinstance(was, torch.Tensor) and value is not was and value.shape == was.shape
                           and not torch.equal(value, was))


def object_tensors(obj) -> list[tuple[list, torch.Tensor]]:
    """([attribute, key or index, ...], tensor) for every tensor a cache object holds in its public attributes,
    through nested dicts, lists and tuples."""
    return [([field, *path], t) for field, value in vars(obj).items() if not field.startswith("_")
            for path, t in _leaves(value)]


def _leaves(value) -> list[tuple[list, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return [([], value)]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    return [([key, *path], t) for key, item in items for path, t in _leaves(item)]


def _with_leaves(value, prefix: tuple, given: dict[tuple, torch.Tensor]):
    """`value` rebuilt (its containers new, so the template is never written) with the tensor at each path of
    `given` replaced by a clone of the given one (the model may write it in place: the copy is written)."""
    if isinstance(value, torch.Tensor):
        return given[prefix].clone() if prefix in given else value
    if isinstance(value, dict):
        return {k: _with_leaves(v, (*prefix, k), given) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_with_leaves(v, (*prefix, i), given) for i, v in enumerate(value))
    return value


def _at(value, path: list):
    for key in path:
        value = value[key] if isinstance(value, (dict, list, tuple)) else getattr(value, key)
    return value


def _fixed_size(model: nn.Module, field: str, value: list) -> bool:
    """Whether the state comes back from a second step the size it went in (RWKV's does; XLNet's `mems` grow by a
    position each step: a memory of past tokens, not a recurrent state)."""
    try:
        with torch.no_grad():
            again = model(input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=True,
                          **{field: [t.clone() for t in value]})[field]
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, RuntimeError):
        return False  # it does not take its own output back: not a state
    return _tensors(again) and [t.shape for t in again] == [t.shape for t in value]


def _is_cache(value) -> bool:
    from transformers.cache_utils import Cache

    return isinstance(value, Cache)


class CarriedStates:
    """Puts the graph's state inputs where the model reads them before its forward and reads them back after."""

    def __init__(self, model: nn.Module, specs):
        self.model = model
        self.specs = [s for s in specs if s.kind in CARRIERS]

    def arguments(self, tensors: dict) -> dict:
        """Forward keywords: each `argument` state list, cloned (the model may write it in place)."""
        lists: dict[str, list] = {}
        for spec in self.specs:
            if spec.kind == "argument":
                lists.setdefault(spec.path, []).insert(spec.index, tensors[spec.name].clone())
        return lists

    def set_attributes(self, tensors: dict) -> dict[str, object]:
        """Module attributes set to their states; returns what they were, for `restore_attributes`."""
        was = {}
        for spec in self.specs:
            if spec.kind == "attribute":
                module, attr = _owner(self.model, spec.path)
                was[spec.path] = getattr(module, attr)
                setattr(module, attr, tensors[spec.name].clone())
        return was

    def cache_lists(self, tensors: dict) -> dict[str, list]:
        """The cache's own per-layer lists ([] where a layer keeps none)."""
        lists: dict[str, list] = {}
        for spec in self.specs:
            if spec.kind == "cache_list":
                held = lists.setdefault(spec.path, [])
                held.extend([] for _ in range(spec.index + 1 - len(held)))
                held[spec.index] = tensors[spec.name]
        return lists

    def cache_object(self, template, tensors: dict):
        """A copy of the model's own cache object `template` holding the graph's `cache_field` states."""
        given = {tuple(json.loads(s.path)): tensors[s.name] for s in self.specs if s.kind == "cache_field"}
        obj = copy.copy(template)
        for field in {path[0] for path in given}:
            setattr(obj, field, _with_leaves(getattr(template, field), (field,), given))
        return obj

    def read(self, spec, out, cache) -> torch.Tensor:
        """The state `spec` names after the forward."""
        if spec.kind == "cache_field":
            return _at(cache, json.loads(spec.path))
        if spec.kind == "argument":
            return out[spec.path][spec.index]
        if spec.kind == "attribute":
            module, attr = _owner(self.model, spec.path)
            return getattr(module, attr)
        return getattr(cache, spec.path)[spec.index]


def cache_class_with_lists(own: type) -> type:
    """An ExplicitCache that is also the model's own Cache subclass (a model may insist on it: MiniMax), built
    from given layers and lists instead of the subclass's constructor."""
    from transformers.cache_utils import Cache

    class OwnExplicitCache(own):
        def __init__(self, layers, lists=None):
            Cache.__init__(self, layers=layers)
            for field, value in (lists or {}).items():
                setattr(self, field, value)

    OwnExplicitCache.__name__ = f"Explicit{own.__name__}"
    return OwnExplicitCache
