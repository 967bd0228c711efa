"""A transformers causal LM as one KV-cached decoding function, derived from the model's own forward: the wrapper
module (`KVCachedLM`) and the cache tensors it takes (`cache_specs`); decoder_export.py exports it as this graph:

    graph(input_ids: i64[1, seq], pos: i64[1], filled: i64[kv], k0, v0, k1, v1, ...) -> (logits f32[1, 1, V], k0', ...)

    k_i, v_i:  layer i's cache, [1, kv_heads, max_seq, head_dim] (slot p holds position p)
    pos:       the position of input_ids[0, 0]; the call writes slots pos .. pos + seq - 1
    filled:    only its length counts: kv = pos + seq, the slots filled once this call has written its own
    k_i', v_i': the cache with those slots written (`index_copy`, which codegen does in place: the runtime owns
               the cache arrays and no step copies them)

Prefill is this graph on the prompt (seq = its length, pos = 0); a decoding step is the same graph on one token.
Attention reads the filled prefix `cache[:, :, :kv]` only, `kv` a symbolic dim like `seq`: one compiled function
serves every length, and a step costs what the tokens so far cost, not what `max_seq` would (a length given as a
shape rather than a value, because the IR's shapes name dims and cannot be computed from tensor values).
Nothing here knows an architecture: the model runs its own forward with a `Cache` object whose layers are the
graph's inputs (`ExplicitKVLayer`), so its attention (grouped-query heads, rotary variants, soft-capping, sliding
windows, MoE routing) is exported exactly as transformers wrote it. The layer reports `kv` slots at offset 0, so
transformers' own mask functions build the causal (and, on sliding layers, windowed) mask over absolute
positions. Cache shapes come from one eager probe of the model on one token, so per-layer head counts and head
dims are whatever the model uses.

Recurrent mixers (Mamba, Mamba-2, gated DeltaNet, short convolutions: whatever transformers keeps in a linear-attention
cache layer) add their fixed-size states to the caches, `c{layer}_{i}` (convolution window) and `r{layer}_{i}`
(recurrent state), inputs and outputs like K and V but replaced, not written by slot; such a model is exported for
one token per call (its recurrent branch, cache_layers.py). States outside the cache layers (a forward keyword,
module attributes, lists of the model's own Cache subclass, or every tensor of a cache object that is not a
transformers Cache, xLSTM's) are carried the same way (model_states.py).
"""

from __future__ import annotations

import inspect
import os
import traceback
from dataclasses import dataclass

import torch
from torch import nn

from ..ir.decoding import KEYS, VALUES
from .cache_layers import POSITION_CACHES, layer_classes
from .errors import FrontendError
from .model_states import (
    CARRIERS,
    CarriedStates,
    attribute_snapshot,
    cache_class_with_lists,
    probe_states,
    restore_attributes,
)


@dataclass(frozen=True)
class CacheSpec:
    """One cache tensor of the decoding graph: its input name, shape, and where the model's cache holds it."""

    name: str
    shape: tuple[int, ...]
    layer: int = -1  # the index the model reads it by (`cache.layers[layer]`)
    kind: str = "keys"  # one of KINDS, a POSITION_CACHES attribute or a model_states.CARRIERS kind
    index: int = 0  # which of the layer's conv / recurrent states (of a carried list's tensors)
    path: str = ""  # a carried state: the keyword, module attribute or cache list holding it (model_states.py)
    dtype: torch.dtype = torch.float32  # a carried state may be a counter (xLSTM's seqlen_offset: int64)


# keys and values grow by position (max_seq slots, written in place); the states of recurrent mixers (Mamba's
# convolution window and SSM state, DeltaNet's memory) have a fixed size and are replaced by each call
KINDS = ("keys", "values", "conv", "recurrent")
STATE_KINDS = KINDS[2:]
RECURRENT_STATES = tuple(f"{kind}_states" for kind in STATE_KINDS)  # their dicts in a linear-attention layer


class KVCachedLM(nn.Module):
    """`(input_ids, pos, filled, *cache) -> (last logits, *updated cache)` around a transformers causal LM."""

    actsparse_prefix = "model"

    def __init__(self, model: nn.Module, ones_mask: bool = False, specs: tuple[CacheSpec, ...] = (),
                 own_cache: type | object | None = None, seen_from_shapes: bool = False):
        super().__init__()
        self.model = model
        self.ones_mask, self.seen_from_shapes = ones_mask, seen_from_shapes  # see EXPORT_VARIANTS
        # which cache layer each tensor belongs to: a model may size its cache by a count larger than the layers
        # that write it (BART-style decoders count the encoder's layers too); a layer between them stays empty
        self.specs = specs
        self._classes = layer_classes()
        self._carried = CarriedStates(model, specs)  # states outside cache layers (model_states.py)
        # own_cache: the model's Cache subclass, or (`cache_field` states) the model's own cache object, a template
        self._template = own_cache if own_cache is not None and not isinstance(own_cache, type) else None
        self._cache_class = (cache_class_with_lists(own_cache) if own_cache and self._template is None
                             else self._classes[-1])
        self._takes_cache = any(s.kind not in CARRIERS or s.kind in ("cache_list", "cache_field") for s in specs)
        takes = inspect.signature(model.forward).parameters
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in takes else {}  # lm_head on 1 token
        self._cache_argument = cache_argument(model)

    def forward(self, input_ids: torch.Tensor, pos: torch.Tensor, filled: torch.Tensor,
                cache: tuple[torch.Tensor, ...]):
        offset = pos.reshape(())
        used = self._layers(cache, offset, filled.shape[0])
        empty = self._classes[3](offset, filled.shape[0])  # holds nothing, answers for the position
        layers = [used.get(i) or empty for i in range(max(used, default=-1) + 1)]
        for layer in {id(x): x for x in layers}.values() if self.seen_from_shapes else ():
            layer.seen = filled.shape[0] - input_ids.shape[1]  # kv - seq: a size, not a value read off `pos`
        positions = (torch.arange(input_ids.shape[1], device=input_ids.device) + offset).unsqueeze(0)
        mask = {"attention_mask": torch.ones_like(filled).unsqueeze(0)} if self.ones_mask else {}
        named = {s.name: t for s, t in zip(self.specs, cache, strict=True)}
        own = (None if not self._takes_cache else self._carried.cache_object(self._template, named)
               if self._template is not None else self._cache_class(layers, self._carried.cache_lists(named)))
        was = self._carried.set_attributes(named)
        try:
            out = self.model(input_ids=input_ids, position_ids=positions, use_cache=True, **self._last_logits_only,
                             **mask, **self._carried.arguments(named),
                             **({self._cache_argument: own} if own is not None else {}))
            return (out.logits[:, -1:], *(self._carried.read(s, out, own) if s.kind in CARRIERS
                                          else _read(used[s.layer], s) for s in self.specs))
        finally:
            restore_attributes(self.model, was)

    def _layers(self, cache, offset, filled) -> dict:
        kv_layer, state_layer, hybrid_layer, _, _ = self._classes
        parts: dict[int, dict] = {}
        for spec, tensor in zip(self.specs, cache, strict=True):
            if spec.kind in CARRIERS:
                continue
            part = parts.setdefault(spec.layer, {"conv": {}, "recurrent": {}})
            if spec.kind in STATE_KINDS:
                part[spec.kind][spec.index] = tensor
            else:
                part[spec.kind] = tensor
        layers = {}
        for i, part in parts.items():
            has_kv, has_state = "keys" in part, bool(part["conv"] or part["recurrent"])
            extras = {name: part[name] for name in POSITION_CACHES if name in part}
            if has_kv and has_state:
                layers[i] = hybrid_layer(part["keys"], part["values"], offset, filled, part["conv"], part["recurrent"],
                                         extras)
            elif has_kv:
                layers[i] = kv_layer(part["keys"], part["values"], offset, filled, extras)
            else:
                layers[i] = state_layer(part["conv"], part["recurrent"], offset)
        return layers


def _read(layer, spec: CacheSpec) -> torch.Tensor:
    """The tensor `spec` names in `layer` after the forward (written or replaced by it)."""
    return getattr(layer, spec.kind) if spec.kind not in STATE_KINDS else getattr(layer, f"{spec.kind}_states")[
        spec.index]


def cache_argument(model: nn.Module) -> str:
    """The keyword a transformers model takes its cache by (`cache` since 5.x renamed `past_key_values`)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(out):
    """The cache a transformers forward returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def cache_specs(model: nn.Module, max_seq: int) -> tuple[list[CacheSpec], type | object | None]:
    """The cache tensors of `model`, from one eager step on one token with transformers' own cache, and the model's
    own Cache subclass where the wrapper must build one (it keeps states beside its layers: model_states.py), or
    its own cache object where that is not a transformers Cache (the wrapper copies it: model_states.py)."""
    before = attribute_snapshot(model)
    try:
        out = _probe(model)
        cache = returned_cache(out)
        carried = probe_states(model, out, cache, before)
        if cache is None and any(kind == "attribute" for kind, *_ in carried):  # KV kept out of sight too: probe
            from transformers.cache_utils import DynamicCache  # again with a cache the forward is given

            restore_attributes(model, before)
            cache = DynamicCache(config=model.config)
            _probe(model, {cache_argument(model): cache})
    finally:
        restore_attributes(model, before)  # the probe's states are not the model's
    own_object = any(kind == "cache_field" for kind, *_ in carried)
    specs = _layer_specs(model, cache, max_seq) if cache is not None and not own_object else []
    specs += [CacheSpec(f"{CARRIERS[kind]}{n}", shape, -1, kind, index, path, dtype)
              for n, (kind, path, index, shape, dtype) in enumerate(carried)]
    if cache is None and not specs:
        return [], None  # a model without a cache (BERT-style LM heads): decoding recomputes the sequence
    if not specs:
        raise FrontendError(f"{type(model).__name__} wrote no layer of its KV cache in a forward with use_cache=True; "
                            "only decoders with attention caches can be compiled for decoding")
    return specs, cache if own_object else type(cache) if any(s.kind == "cache_list" for s in specs) else None


def _probe(model: nn.Module, given: dict | None = None):
    try:
        with torch.no_grad():
            return model(input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=True, **(given or {}))
    except (ValueError, TypeError, AttributeError, IndexError, RuntimeError) as err:  # hybrids, looped layers
        # the call is transformers' own (nothing of ours in it but a cache it is given): say so, and where it broke
        frame = traceback.extract_tb(err.__traceback__)[-1]
        call = (f"model(input_ids=zeros(1, 1), use_cache=True{', ' if given else ''}"
                f"{', '.join(f'{k}={type(v).__name__}()' for k, v in (given or {}).items())})")
        raise FrontendError(f"{type(model).__name__}'s cached forward fails in transformers itself "
                            f"({os.path.basename(frame.filename)}:{frame.lineno}): `{call}` raised "
                            f"{type(err).__name__}: {err}; decoding needs that forward to run") from err


def _layer_specs(model: nn.Module, cache, max_seq: int) -> list[CacheSpec]:
    """The tensors of the cache's layers (K and V, per-position caches, linear-attention states)."""
    from transformers.cache_utils import CacheLayerMixin, DummyLayer, LinearAttentionCacheLayerMixin

    layers = getattr(cache, "layers", None)
    if layers is None:
        raise FrontendError(f"{type(model).__name__} returned a {type(cache).__name__} without layers from a forward "
                            "with use_cache=True; only decoders with attention caches can be compiled for decoding")
    specs: list[CacheSpec] = []  # layers nothing wrote (sized by a count beyond the decoder's own) are left out
    for i, layer in enumerate(layers):
        attends, recurs = isinstance(layer, CacheLayerMixin), isinstance(layer, LinearAttentionCacheLayerMixin)
        if isinstance(layer, DummyLayer):  # a layer without attention or recurrence (an MLP-only block)
            continue
        if not attends and not recurs:
            raise FrontendError(f"{type(model).__name__} layer {i} keeps a {type(layer).__name__} state, neither "
                                "attention keys/values nor a recurrent layer's states; decoding supports these two")
        if attends and getattr(layer, "keys", None) is not None:
            specs += _kv_specs(model, i, layer, max_seq)
        if recurs:  # fixed-size states, as the probe left them
            specs += [CacheSpec(f"{kind[0]}{i}_{index}", tuple(state.shape), i, kind, index)
                      for kind in STATE_KINDS for index, state in getattr(layer, f"{kind}_states").items()
                      if state is not None]
    return specs


def _kv_specs(model: nn.Module, i: int, layer, max_seq: int) -> list[CacheSpec]:
    extra = sorted(name for name, value in vars(layer).items()  # cached per-token state, not settings (a sliding
                   if isinstance(value, torch.Tensor) and value.ndim >= 3  # layer's window size)
                   and not name.startswith("_") and name not in ("keys", "values"))
    unknown = [name for name in extra if name not in POSITION_CACHES] + sorted(  # per-entry dicts of tensors
        name for name, value in vars(layer).items() if isinstance(value, dict) and not name.startswith("_")
        and name not in RECURRENT_STATES and any(isinstance(t, torch.Tensor) for t in value.values()))
    # (DeepSeek-V4's compressor buffers; a hybrid layer's own recurrent states are read as STATE_KINDS)
    if unknown:
        raise FrontendError(f"{type(model).__name__} layer {i} keeps more than keys and values in its cache "
                            f"({', '.join(unknown)}); decoding caches attention keys and values and the per-position "
                            f"tensors of frontends/cache_layers.POSITION_CACHES ({', '.join(POSITION_CACHES)})")
    k, v = layer.keys, layer.values
    slots = [CacheSpec(f"{POSITION_CACHES[name].prefix}{i}", _with_slots(getattr(layer, name), max_seq,
                                                                          POSITION_CACHES[name].axis), i, name)
             for name in extra]  # max_seq slots along its position axis, as K and V have
    return [CacheSpec(f"{KEYS}{i}", (1, k.shape[1], max_seq, k.shape[3]), i, "keys"),
            CacheSpec(f"{VALUES}{i}", (1, v.shape[1], max_seq, v.shape[3]), i, "values"), *slots]


def _with_slots(tensor: torch.Tensor, max_seq: int, axis: int) -> tuple[int, ...]:
    return tuple(max_seq if a == axis else n for a, n in enumerate(tensor.shape))
