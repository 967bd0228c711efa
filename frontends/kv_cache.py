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

Recurrent mixers (Mamba, Mamba-2, gated DeltaNet, short convolutions: whatever transformers keeps in a linear-attention
cache layer) add their fixed-size states to the caches, `c{layer}_{i}` (convolution window) and `r{layer}_{i}`
(recurrent state), inputs and outputs like K and V but replaced, not written by slot; such a model is exported for
one token per call (its recurrent branch, cache_layers.py).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from ..ir import Graph
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

KEYS, VALUES = "k", "v"
INPUTS = ("input_ids", "pos", "filled")  # the inputs before the caches (the runtime binds them by position)
SEQ, FILLED = "seq", "kv"  # the symbolic dims: tokens fed, slots filled after the call
SEQ_EXAMPLE = 4  # tokens of the example a cacheless model is exported on


@dataclass(frozen=True)
class CacheSpec:
    """One cache tensor of the decoding graph: its input name, shape, and where the model's cache holds it."""

    name: str
    shape: tuple[int, ...]
    layer: int = -1  # the index the model reads it by (`cache.layers[layer]`)
    kind: str = "keys"  # one of KINDS, a POSITION_CACHES attribute or a model_states.CARRIERS kind
    index: int = 0  # which of the layer's conv / recurrent states (of a carried list's tensors)
    path: str = ""  # a carried state: the keyword, module attribute or cache list holding it (model_states.py)


# keys and values grow by position (max_seq slots, written in place); the states of recurrent mixers (Mamba's
# convolution window and SSM state, DeltaNet's memory) have a fixed size and are replaced by each call
KINDS = ("keys", "values", "conv", "recurrent")
STATE_KINDS = KINDS[2:]
RECURRENT_STATES = tuple(f"{kind}_states" for kind in STATE_KINDS)  # their dicts in a linear-attention layer


class KVCachedLM(nn.Module):
    """`(input_ids, pos, filled, *cache) -> (last logits, *updated cache)` around a transformers causal LM."""

    actsparse_prefix = "model"

    def __init__(self, model: nn.Module, ones_mask: bool = False, specs: tuple[CacheSpec, ...] = (),
                 own_cache: type | None = None, seen_from_shapes: bool = False):
        super().__init__()
        self.model = model
        self.ones_mask, self.seen_from_shapes = ones_mask, seen_from_shapes  # see EXPORT_VARIANTS
        # which cache layer each tensor belongs to: a model may size its cache by a count larger than the layers
        # that write it (BART-style decoders count the encoder's layers too); a layer between them stays empty
        self.specs = specs
        self._classes = layer_classes()
        self._carried = CarriedStates(model, specs)  # states outside cache layers (model_states.py)
        self._cache_class = cache_class_with_lists(own_cache) if own_cache else self._classes[-1]
        self._takes_cache = any(s.kind not in CARRIERS or s.kind == "cache_list" for s in specs)
        takes = inspect.signature(model.forward).parameters
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in takes else {}  # lm_head on 1 token
        self._cache_argument = cache_argument(model)

    def forward(self, input_ids: torch.Tensor, pos: torch.Tensor, filled: torch.Tensor,
                cache: tuple[torch.Tensor, ...]):
        from transformers.cache_utils import DummyLayer

        offset = pos.reshape(())
        used = self._layers(cache, offset, filled.shape[0])
        for layer in used.values() if self.seen_from_shapes else ():
            layer.seen = filled.shape[0] - input_ids.shape[1]  # kv - seq: a size, not a value read off `pos`
        layers = [used.get(i) or DummyLayer() for i in range(max(used, default=-1) + 1)]  # DummyLayer: holds nothing
        positions = (torch.arange(input_ids.shape[1], device=input_ids.device) + offset).unsqueeze(0)
        mask = {"attention_mask": torch.ones_like(filled).unsqueeze(0)} if self.ones_mask else {}
        named = {s.name: t for s, t in zip(self.specs, cache, strict=True)}
        own = self._cache_class(layers, self._carried.cache_lists(named)) if self._takes_cache else None
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
        kv_layer, state_layer, hybrid_layer, _ = self._classes
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
                layers[i] = state_layer(part["conv"], part["recurrent"])
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


def cache_specs(model: nn.Module, max_seq: int) -> tuple[list[CacheSpec], type | None]:
    """The cache tensors of `model`, from one eager step on one token with transformers' own cache, and the model's
    own Cache subclass where the wrapper must build one (it keeps states beside its layers: model_states.py)."""
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
    specs = _layer_specs(model, cache, max_seq) if cache is not None else []
    specs += [CacheSpec(f"{CARRIERS[kind]}{n}", shape, -1, kind, index, path)
              for n, (kind, path, index, shape) in enumerate(carried)]
    if cache is None and not specs:
        return [], None  # a model without a cache (BERT-style LM heads): decoding recomputes the sequence
    if not specs:
        raise FrontendError(f"{type(model).__name__} wrote no layer of its KV cache in a forward with use_cache=True; "
                            "only decoders with attention caches can be compiled for decoding")
    return specs, type(cache) if any(s.kind == "cache_list" for s in specs) else None


def _probe(model: nn.Module, given: dict | None = None):
    try:
        with torch.no_grad():
            return model(input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=True, **(given or {}))
    except (ValueError, TypeError, AttributeError, IndexError, RuntimeError) as err:  # hybrids, looped layers
        raise FrontendError(f"{type(model).__name__} failed a one-token forward with use_cache=True ({err}); decoding "
                            "supports decoders whose caches hold attention keys and values or recurrent states") \
                            from err


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


def import_decoder(model: nn.Module, max_seq: int) -> tuple[Graph, list[CacheSpec]]:
    """Export `model` (a transformers causal LM, float32, eval) as the decoding graph of the module docstring, or,
    for a model that keeps no cache at all, as `graph(input_ids) -> last logits` with no caches (`_recompute_graph`)."""
    from .hf_source import quiet_transformers

    if max_seq < 3:
        raise FrontendError(f"max_seq={max_seq}: a decoder needs at least 3 KV-cache slots")
    model = model.eval()
    model.config.use_cache = True
    with quiet_transformers():
        specs, own_cache = cache_specs(model, max_seq)
    if not specs:
        return _recompute_graph(model), specs
    # the one-token branch only (see cache_layers.py, model_states.py)
    recurrent = any(s.kind in STATE_KINDS or s.kind in CARRIERS for s in specs)
    errors = []
    for variant in (v for v in EXPORT_VARIANTS if v.get("one_token") or not recurrent):
        try:
            return _named_inputs(_export(model, specs, max_seq, own_cache, **variant), specs), specs
        except FrontendError as err:
            errors.append(err)
    # the first error, unless it is a size read off a value, which the later variants exist to avoid: then theirs
    raise next((e for e in errors if not any(m in str(e) for m in DATA_DEPENDENT)), errors[0])


DATA_DEPENDENT = ("GuardOnDataDependentSymNode", "depends on tensor values")  # what torch / the importer say


# How the model is called for export, tried in order until one imports: first it builds its own causal mask from
# the cache's filled length; models that derive positions from the attention mask (OPT, BioGPT: a cumsum over
# `ones(past + seq)`, a length read off the `pos` tensor, which neither export nor the IR can make a shape of) get
# an all-ones mask over the filled slots, a [1, kv] shape torch can name. Last, models whose forward computes
# sizes from the token count that the IR cannot name (Llama 4's chunked attention) are exported for one token at
# a time (`seq` fixed to 1): the runtime then feeds a prompt token by token (runtime/decoder.py). Last, models that
# slice a table by the cache's length (MPT's ALiBi bias: `bias[:, past + seq - kv:]`) get the length as a size,
# kv - seq, instead of the `pos` value, which would make the slice's size depend on tensor values; so do models
# that count learned positions from it (MVP, TrOCR: `arange(past, past + seq)` becomes arange(kv-seq, kv)).
EXPORT_VARIANTS = ({}, {"ones_mask": True}, {"one_token": True}, {"one_token": True, "ones_mask": True},
                   {"seen_from_shapes": True}, {"one_token": True, "seen_from_shapes": True})


def _export(model: nn.Module, specs: list[CacheSpec], max_seq: int, own_cache: type | None = None,
            ones_mask: bool = False, one_token: bool = False, seen_from_shapes: bool = False) -> Graph:
    """The decoding graph through torch.export, the model called as the EXPORT_VARIANTS entry says."""
    from torch.export.graph_signature import OutputKind

    from .hf_source import quiet_transformers
    from .moe import per_expert_routing
    from .torch_export import HINTS, Importer, decompose_missing

    wrapper = KVCachedLM(model, ones_mask, tuple(specs), own_cache, seen_from_shapes)
    ids = torch.zeros(1, 1 if one_token else 2, dtype=torch.long)
    cache = tuple(torch.zeros(s.shape) for s in specs)
    filled = torch.zeros(3, dtype=torch.long)  # a length other than the example's seq: two distinct dims
    try:
        with per_expert_routing(model), torch.no_grad(), quiet_transformers():
            program = _export_dynamic(wrapper, (ids, torch.zeros(1, dtype=torch.long), filled, cache), max_seq,
                                      one_token)
    except Exception as err:
        text = str(err).strip().splitlines()
        raise FrontendError(f"torch.export could not export {type(model).__name__} with a KV cache: "
                            f"{type(err).__name__}: {text[0] if text else ''}. Hints: {HINTS}.") from err
    program.graph_module.graph.eliminate_dead_code()  # lengths computed for branches not taken (BLOOM's past + seq)
    program = decompose_missing(program)  # as the full-sequence import does: the long tail by torch's decompositions
    importer = Importer(program, KVCachedLM.actsparse_prefix)
    importer.symbols.update(_dim_symbols(program))
    importer.bounds = {SEQ: (1, max_seq), FILLED: (1, max_seq)}  # what the runtime feeds (runtime/decoder.py)
    graph = importer.run()
    # a recurrent kernel that writes a state in place (`conv_state.copy_`) adds an output for that input mutation
    # ahead of the user outputs; the wrapper returns the written state itself, so only the user outputs are kept
    kinds = [spec.kind for spec in program.graph_signature.output_specs]
    return graph.with_outputs(o for o, kind in zip(graph.outputs, kinds, strict=True) if kind == OutputKind.USER_OUTPUT)


def _export_dynamic(wrapper: nn.Module, args: tuple, max_seq: int, one_token: bool):
    """torch.export with `seq` and `kv` dynamic in 1 .. max_seq; where torch's solver cannot prove a guard over that
    range that holds on it (DeepSeek-V3.2's `min(index_topk, kv) <= kv`), with both left DYNAMIC instead (the
    importer then bounds them by max_seq itself: Importer.bounds)."""
    from torch.export.dynamic_shapes import Dim

    ranged = (Dim(SEQ, min=1, max=max_seq), Dim(FILLED, min=1, max=max_seq))
    for seq, kv in (ranged, (Dim.DYNAMIC, Dim.DYNAMIC)):
        dynamic = (None if one_token else {1: seq}, None, {0: kv}, tuple(None for _ in args[3]))
        try:
            return torch.export.export(wrapper, args, dynamic_shapes=dynamic, strict=False)
        except torch._dynamo.exc.UserError as err:
            if "Constraints violated" not in str(err) or seq is Dim.DYNAMIC:
                raise


class LastLogits(nn.Module):
    """`input_ids -> the last position's logits [1, 1, V]`: a model without a cache, run on the whole sequence."""

    actsparse_prefix = "model"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        takes = inspect.signature(model.forward).parameters
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in takes else {}
        self._positions = "position_ids" in takes  # given as transformers' generate gives them (0, 1, ...), which
        # is not what RoBERTa-style models derive themselves (padding_idx + 1 + i)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = {"position_ids": torch.arange(input_ids.shape[1]).unsqueeze(0)} if self._positions else {}
        out = self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False,
                         **positions, **self._last_logits_only)
        return out.logits[:, -1:]


def _recompute_graph(model: nn.Module) -> Graph:
    """`graph(input_ids: i64[1, seq]) -> logits f32[1, 1, V]` for a model that keeps no cache (its attention may
    see later positions, as BERT-style LM heads without is_decoder do, so no cache could be reused): transformers'
    `generate` runs it on the whole sequence each step, and so does the runtime (runtime/decoder.py)."""
    import warnings

    from ..ir import Node, verify
    from ..ir.graph import rewrite
    from .hf_source import quiet_transformers
    from .torch_export import import_torch

    vocab = max(2, model.get_input_embeddings().num_embeddings)
    ids = torch.arange(SEQ_EXAMPLE, dtype=torch.long).reshape(1, -1) % vocab
    with torch.no_grad(), quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fallback to static shapes is checked below
        graph = import_torch(LastLogits(model), (ids,), dynamic_seq=True)
    if len(graph.inputs) != 1 or graph.inputs[0].type.shape[1] != SEQ:
        raise FrontendError(f"{type(model).__name__} keeps no KV cache and its forward could only be exported for a "
                            f"fixed sequence length, so it cannot be run on a growing sequence either")
    named = Node("input", (), {"name": INPUTS[0]}, graph.inputs[0].type)
    outputs = rewrite(graph, lambda n: named if n is graph.inputs[0] else None).outputs
    return verify(Graph((named,), outputs, graph.weights, graph.name))


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
