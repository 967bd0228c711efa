"""A transformers causal LM -> one KV-cached decoding graph, derived from the model's own forward.

    graph(input_ids: i64[1, seq], pos: i64[1], k0, v0, k1, v1, ...) -> (logits f32[1, 1, V], k0', v0', ...)

    k_i, v_i:  layer i's cache, [1, kv_heads, max_seq, head_dim] (slot p holds position p)
    pos:       the position of input_ids[0, 0]; the call writes slots pos .. pos + seq - 1
    k_i', v_i': the cache with those slots written (`index_copy`, which codegen does in place: the runtime owns
               the cache arrays and no step copies them)

Prefill is this graph on the prompt (seq = its length, pos = 0); a decoding step is the same graph on one token.
Nothing here knows an architecture: the model runs its own forward with a `Cache` object whose layers are the
graph's inputs (`ExplicitKVLayer`), so its attention (grouped-query heads, rotary variants, soft-capping, sliding
windows, MoE routing) is exported exactly as transformers wrote it. The layer reports `max_seq` slots at offset
0, so transformers' own mask functions build the causal (and, on sliding layers, windowed) mask over absolute
positions, which is also what keeps the unwritten slots out. Cache shapes come from one eager probe of the model
on one token, so per-layer head counts and head dims are whatever the model uses.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from ..ir import Graph
from .errors import FrontendError

KEYS, VALUES = "k", "v"


@dataclass(frozen=True)
class CacheSpec:
    """One cache tensor of the decoding graph: its input name and shape."""

    name: str
    shape: tuple[int, ...]


def _layer_classes():
    from transformers.cache_utils import Cache, CacheLayerMixin

    class ExplicitKVLayer(CacheLayerMixin):
        """A static cache layer whose tensors are graph inputs; `update` writes functionally (index_copy)."""

        is_compileable = True
        is_sliding = False

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, offset: torch.Tensor):
            super().__init__()
            self.keys, self.values, self.offset = keys, values, offset
            self.is_initialized = True

        def lazy_initialization(self, key_states, value_states) -> None:  # the tensors are given
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            positions = torch.arange(key_states.shape[-2], device=key_states.device) + self.offset
            self.keys = torch.index_copy(self.keys, 2, positions, key_states.to(self.keys.dtype))
            self.values = torch.index_copy(self.values, 2, positions, value_states.to(self.values.dtype))
            return self.keys, self.values

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.keys.shape[-2], 0  # every slot, at absolute positions: the mask does the rest

        def get_seq_length(self):
            return self.offset

        def get_max_length(self) -> int:
            return self.keys.shape[-2]

    class ExplicitKVCache(Cache):
        def __init__(self, layers):
            super().__init__(layers=layers)

    return ExplicitKVLayer, ExplicitKVCache


class KVCachedLM(nn.Module):
    """`(input_ids, pos, *cache) -> (last logits, *updated cache)` around a transformers causal LM."""

    actsparse_prefix = "model"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._layer, self._cache = _layer_classes()
        takes = inspect.signature(model.forward).parameters
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in takes else {}  # lm_head on 1 token
        self._cache_argument = cache_argument(model)

    def forward(self, input_ids: torch.Tensor, pos: torch.Tensor, cache: tuple[torch.Tensor, ...]):
        offset = pos.reshape(())
        layers = [self._layer(cache[2 * i], cache[2 * i + 1], offset) for i in range(len(cache) // 2)]
        positions = (torch.arange(input_ids.shape[1], device=input_ids.device) + offset).unsqueeze(0)
        out = self.model(input_ids=input_ids, position_ids=positions, use_cache=True, **self._last_logits_only,
                         **{self._cache_argument: self._cache(layers)})
        return (out.logits[:, -1:], *(t for layer in layers for t in (layer.keys, layer.values)))


def cache_argument(model: nn.Module) -> str:
    """The keyword a transformers model takes its cache by (`cache` since 5.x renamed `past_key_values`)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(out):
    """The cache a transformers forward returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def cache_specs(model: nn.Module, max_seq: int) -> list[CacheSpec]:
    """The cache tensors of `model`, from one eager step on one token with transformers' own DynamicCache."""
    from transformers.cache_utils import CacheLayerMixin

    with torch.no_grad():
        out = model(input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=True)
    layers = getattr(returned_cache(out), "layers", None)
    if not layers:
        raise FrontendError(f"{type(model).__name__} returned no KV cache from a forward with use_cache=True; "
                            "only decoders with attention caches can be compiled for decoding")
    specs = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, CacheLayerMixin) or getattr(layer, "keys", None) is None:
            raise FrontendError(f"{type(model).__name__} layer {i} keeps a {type(layer).__name__} state, not "
                                "attention keys/values; decoding supports attention-only decoders")
        k, v = layer.keys, layer.values
        specs.append(CacheSpec(f"{KEYS}{i}", (1, k.shape[1], max_seq, k.shape[3])))
        specs.append(CacheSpec(f"{VALUES}{i}", (1, v.shape[1], max_seq, v.shape[3])))
    return specs


def import_decoder(model: nn.Module, max_seq: int) -> tuple[Graph, list[CacheSpec]]:
    """Export `model` (a transformers causal LM, float32, eval) as the decoding graph of the module docstring."""
    from .hf_source import quiet_transformers
    from .moe import per_expert_routing
    from .torch_export import HINTS, Importer

    model = model.eval()
    model.config.use_cache = True
    with quiet_transformers():
        specs = cache_specs(model, max_seq)
    wrapper = KVCachedLM(model)
    ids = torch.zeros(1, 2, dtype=torch.long)
    cache = tuple(torch.zeros(s.shape) for s in specs)
    seq = torch.export.Dim("seq", min=1, max=max_seq)
    dynamic = ({1: seq}, None, tuple(None for _ in specs))
    try:
        with per_expert_routing(model), torch.no_grad(), quiet_transformers():
            program = torch.export.export(wrapper, (ids, torch.zeros(1, dtype=torch.long), cache),
                                          dynamic_shapes=dynamic, strict=False)
    except Exception as err:
        text = str(err).strip().splitlines()
        raise FrontendError(f"torch.export could not export {type(model).__name__} with a KV cache: "
                            f"{type(err).__name__}: {text[0] if text else ''}. Hints: {HINTS}.") from err
    graph = Importer(program, KVCachedLM.actsparse_prefix).run()
    return _named_inputs(graph, specs), specs


def _named_inputs(graph: Graph, specs: list[CacheSpec]) -> Graph:
    """Inputs named input_ids, pos, k0, v0, ... whatever FX called them (the runtime binds them by position)."""
    from ..ir import Node, verify
    from ..ir.graph import rewrite

    names = ["input_ids", "pos", *(s.name for s in specs)]
    if len(graph.inputs) != len(names):
        raise FrontendError(f"internal: the decoding graph has {len(graph.inputs)} inputs, expected {len(names)}")
    renamed = {id(n): Node("input", (), {"name": name}, n.type) for n, name in zip(graph.inputs, names)}
    outputs = rewrite(graph, lambda n: renamed.get(id(n))).outputs
    return verify(Graph(tuple(renamed.values()), outputs, graph.weights, graph.name))
