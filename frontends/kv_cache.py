"""A transformers causal LM -> one KV-cached decoding graph, derived from the model's own forward.

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
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from ..ir import Graph
from .errors import FrontendError

KEYS, VALUES = "k", "v"
INPUTS = ("input_ids", "pos", "filled")  # the inputs before the caches (the runtime binds them by position)
SEQ, FILLED = "seq", "kv"  # the symbolic dims: tokens fed, slots filled after the call


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

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, offset: torch.Tensor, filled):
            super().__init__()
            self.keys, self.values, self.offset, self.filled = keys, values, offset, filled
            self.is_initialized = True

        def lazy_initialization(self, key_states, value_states) -> None:  # the tensors are given
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            positions = torch.arange(key_states.shape[-2], device=key_states.device) + self.offset
            self.keys = torch.index_copy(self.keys, 2, positions, key_states.to(self.keys.dtype))
            self.values = torch.index_copy(self.values, 2, positions, value_states.to(self.values.dtype))
            # the filled prefix only: kept slots 0 .. kv - 1 (a slice view would make torch branch on whether it is
            # contiguous, i.e. on kv == max_seq, a guard that fails the export)
            filled = torch.arange(self.filled, device=self.keys.device)
            return self.keys.index_select(2, filled), self.values.index_select(2, filled)

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.filled, 0  # the filled slots, at absolute positions: the mask does the rest

        def get_seq_length(self):
            return self.offset

        def get_max_length(self) -> int:
            return self.keys.shape[-2]

    class ExplicitKVCache(Cache):
        def __init__(self, layers):
            super().__init__(layers=layers)

    return ExplicitKVLayer, ExplicitKVCache


class KVCachedLM(nn.Module):
    """`(input_ids, pos, filled, *cache) -> (last logits, *updated cache)` around a transformers causal LM."""

    actsparse_prefix = "model"

    def __init__(self, model: nn.Module, ones_mask: bool = False):
        super().__init__()
        self.model = model
        self.ones_mask = ones_mask  # see EXPORT_VARIANTS
        self._layer, self._cache = _layer_classes()
        takes = inspect.signature(model.forward).parameters
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in takes else {}  # lm_head on 1 token
        self._cache_argument = cache_argument(model)

    def forward(self, input_ids: torch.Tensor, pos: torch.Tensor, filled: torch.Tensor,
                cache: tuple[torch.Tensor, ...]):
        offset = pos.reshape(())
        layers = [self._layer(cache[2 * i], cache[2 * i + 1], offset, filled.shape[0]) for i in range(len(cache) // 2)]
        positions = (torch.arange(input_ids.shape[1], device=input_ids.device) + offset).unsqueeze(0)
        mask = {"attention_mask": torch.ones_like(filled).unsqueeze(0)} if self.ones_mask else {}
        out = self.model(input_ids=input_ids, position_ids=positions, use_cache=True, **self._last_logits_only,
                         **mask, **{self._cache_argument: self._cache(layers)})
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

    try:
        with torch.no_grad():
            out = model(input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=True)
    except (ValueError, TypeError, AttributeError, IndexError, RuntimeError) as err:  # hybrids, looped layers
        raise FrontendError(f"{type(model).__name__} failed a one-token forward with use_cache=True ({err}); "
                            "decoding supports decoders whose caches hold attention keys and values") from err
    layers = getattr(returned_cache(out), "layers", None)
    if not layers:
        raise FrontendError(f"{type(model).__name__} returned no KV cache from a forward with use_cache=True; "
                            "only decoders with attention caches can be compiled for decoding")
    specs = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, CacheLayerMixin) or getattr(layer, "keys", None) is None:
            raise FrontendError(f"{type(model).__name__} layer {i} keeps a {type(layer).__name__} state, not "
                                "attention keys/values; decoding supports attention-only decoders")
        extra = sorted(name for name, value in vars(layer).items()  # cached per-token state, not settings (a
                       if isinstance(value, torch.Tensor) and value.ndim >= 3  # sliding layer's window size)
                       and not name.startswith("_") and name not in ("keys", "values"))
        if extra:
            raise FrontendError(f"{type(model).__name__} layer {i} keeps more than keys and values in its cache "
                                f"({', '.join(extra)}: e.g. DeepSeek-V3.2's sparse-attention indexer); decoding "
                                "caches attention keys and values only")
        k, v = layer.keys, layer.values
        specs.append(CacheSpec(f"{KEYS}{i}", (1, k.shape[1], max_seq, k.shape[3])))
        specs.append(CacheSpec(f"{VALUES}{i}", (1, v.shape[1], max_seq, v.shape[3])))
    return specs


def import_decoder(model: nn.Module, max_seq: int) -> tuple[Graph, list[CacheSpec]]:
    """Export `model` (a transformers causal LM, float32, eval) as the decoding graph of the module docstring."""
    from .hf_source import quiet_transformers

    if max_seq < 3:
        raise FrontendError(f"max_seq={max_seq}: a decoder needs at least 3 KV-cache slots")
    model = model.eval()
    model.config.use_cache = True
    with quiet_transformers():
        specs = cache_specs(model, max_seq)
    first = None
    for variant in EXPORT_VARIANTS:
        try:
            return _named_inputs(_export(model, specs, max_seq, **variant), specs), specs
        except FrontendError as err:
            first = first or err
    raise first


# How the model is called for export, tried in order until one imports: first it builds its own causal mask from
# the cache's filled length; models that derive positions from the attention mask (OPT, BioGPT: a cumsum over
# `ones(past + seq)`, a length read off the `pos` tensor, which neither export nor the IR can make a shape of) get
# an all-ones mask over the filled slots, a [1, kv] shape torch can name. Last, models whose forward computes
# sizes from the token count that the IR cannot name (Llama 4's chunked attention) are exported for one token at
# a time (`seq` fixed to 1): the runtime then feeds a prompt token by token (runtime/decoder.py).
EXPORT_VARIANTS = ({}, {"ones_mask": True}, {"one_token": True}, {"one_token": True, "ones_mask": True})


def _export(model: nn.Module, specs: list[CacheSpec], max_seq: int, ones_mask: bool = False,
            one_token: bool = False) -> Graph:
    """The decoding graph through torch.export, the model called as the EXPORT_VARIANTS entry says."""
    from .hf_source import quiet_transformers
    from .moe import per_expert_routing
    from .torch_export import HINTS, Importer, decompose_missing

    wrapper = KVCachedLM(model, ones_mask)
    ids = torch.zeros(1, 1 if one_token else 2, dtype=torch.long)
    cache = tuple(torch.zeros(s.shape) for s in specs)
    filled = torch.zeros(3, dtype=torch.long)  # a length other than the example's seq: two distinct dims
    seq, kv = torch.export.Dim(SEQ, min=1, max=max_seq), torch.export.Dim(FILLED, min=1, max=max_seq)
    dynamic = (None if one_token else {1: seq}, None, {0: kv}, tuple(None for _ in specs))
    try:
        with per_expert_routing(model), torch.no_grad(), quiet_transformers():
            program = torch.export.export(wrapper, (ids, torch.zeros(1, dtype=torch.long), filled, cache),
                                          dynamic_shapes=dynamic, strict=False)
    except Exception as err:
        text = str(err).strip().splitlines()
        raise FrontendError(f"torch.export could not export {type(model).__name__} with a KV cache: "
                            f"{type(err).__name__}: {text[0] if text else ''}. Hints: {HINTS}.") from err
    program.graph_module.graph.eliminate_dead_code()  # lengths computed for branches not taken (BLOOM's past + seq)
    program = decompose_missing(program)  # as the full-sequence import does: the long tail by torch's decompositions
    importer = Importer(program, KVCachedLM.actsparse_prefix)
    importer.symbols.update(_dim_symbols(program))
    return importer.run()


def _dim_symbols(program) -> dict:
    """torch's symbols of the two dynamic dims -> their IR names (`seq`, `kv`), read off the user inputs."""
    from torch.export.graph_signature import InputKind

    placeholders = {n.name: n for n in program.graph_module.graph.nodes if n.op == "placeholder"}
    users = [placeholders[s.arg.name].meta["val"] for s in program.graph_signature.input_specs
             if s.kind == InputKind.USER_INPUT]
    named = {}
    for val, axis, name in ((users[0], 1, SEQ), (users[2], 0, FILLED)):
        size = val.shape[axis]
        if isinstance(size, torch.SymInt) and size.node.expr.is_Symbol:
            named[size.node.expr] = name
    return named


def _named_inputs(graph: Graph, specs: list[CacheSpec]) -> Graph:
    """Inputs named input_ids, pos, filled, k0, v0, ... whatever FX called them (the runtime binds them by
    position), and the filled prefix of each cache read as a slice."""
    from ..ir import Node, verify
    from ..ir.graph import rewrite

    names = [*INPUTS, *(s.name for s in specs)]
    if len(graph.inputs) != len(names):
        raise FrontendError(f"internal: the decoding graph has {len(graph.inputs)} inputs, expected {len(names)}")
    renamed = {id(n): Node("input", (), {"name": name}, n.type) for n, name in zip(graph.inputs, names)}

    def rename_or_slice(node: Node) -> Node | None:
        # index_select(x, arange(kv)){axis} -> slice(x){axis, 0:kv}: the filled prefix as the slice it is
        if node.op == "index_select" and node.inputs[1].op == "arange" and node.inputs[1].attrs.get("end") == FILLED \
                and node.inputs[1].attrs.get("start", 0) == 0 and node.inputs[1].attrs.get("step", 1) == 1:
            prefix = {"axis": node.attrs["axis"], "start": 0, "end": FILLED, "step": 1}
            return Node("slice", node.inputs[:1], prefix, node.type, node.loc)
        return renamed.get(id(node))

    outputs = rewrite(graph, rename_or_slice).outputs
    return verify(Graph(tuple(renamed.values()), outputs, graph.weights, graph.name))
