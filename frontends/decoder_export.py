"""The decoding graph of a transformers causal LM through torch.export: `import_decoder`.

    graph, caches, recomputes_because = import_decoder(model, max_seq)

The model is wrapped as kv_cache.py describes (`KVCachedLM`: the KV cache as explicit inputs and outputs) and
exported with the token count `seq` and the filled length `kv` as symbolic dims, called each way of
EXPORT_VARIANTS until one imports; the graph's inputs are then named as the runtime binds them (input_ids, pos,
filled, k0, v0, ...) and each cache's filled prefix is read as a slice. A model that keeps no cache at all, or
whose cached forward exports in no variant, is imported as `graph(input_ids) -> last logits`, run on the whole
sequence each step (`_recompute_graph`); `recomputes_because` then says why the cache is not used (the decoder's
report shows it: each step costs a forward over the whole sequence), and is "" for a graph with its cache.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..errors import ActsparseError
from ..ir import Graph
from ..ir.decoding import CALL_INPUTS as INPUTS  # the runtime binds them by position
from .errors import FrontendError, UnsupportedOpError
from .kv_cache import STATE_KINDS, CacheSpec, KVCachedLM, cache_specs
from .model_states import CARRIERS

SEQ, FILLED = "seq", "kv"  # the symbolic dims: tokens fed, slots filled after the call
SEQ_EXAMPLE = 4  # tokens of the example a cacheless model is exported on
RECOMPUTE_EXAMPLES = (SEQ_EXAMPLE, 2 * SEQ_EXAMPLE)  # then a longer one, where that holds for its length only


def import_decoder(model: nn.Module, max_seq: int) -> tuple[Graph, list[CacheSpec], str]:
    """Export `model` (a transformers causal LM, float32, eval) as the decoding graph of the module docstring, or,
    for a model that keeps no cache at all or whose cache exports in no variant, as `graph(input_ids) -> last
    logits` with no caches (`_recompute_graph`) and the reason the cache is not used."""
    from .hf_source import quiet_transformers

    if max_seq < 3:
        raise FrontendError(f"max_seq={max_seq}: a decoder needs at least 3 KV-cache slots")
    model = model.eval()
    model.config.use_cache = True
    try:
        with quiet_transformers():
            specs, own_cache = cache_specs(model, max_seq)
    except FrontendError as err:  # a cache holding what decoding cannot carry (DeepSeek-V4's compressor buffers)
        return _recompute_instead(model, err, max_seq), [], _refused(err, CACHE_REFUSED)
    if not specs:
        return _recompute_graph(model, max_seq), specs, NO_CACHE
    # the one-token branch only (see cache_layers.py, model_states.py)
    recurrent = any(s.kind in STATE_KINDS or s.kind in CARRIERS for s in specs)
    errors = []
    for variant in (v for v in EXPORT_VARIANTS if v.get("one_token") or not recurrent):
        try:
            return _named_inputs(_export(model, specs, max_seq, own_cache, **variant), specs), specs, ""
        except FrontendError as err:
            errors.append(err)
    # the first error, unless it is a size read off a value, which the later variants exist to avoid: then theirs
    cached = next((e for e in errors if not any(m in str(e) for m in DATA_DEPENDENT)), errors[0])
    return _recompute_instead(model, cached, max_seq), [], _refused(cached, NO_VARIANT)


def _recompute_instead(model: nn.Module, cached: FrontendError, max_seq: int) -> Graph:
    """The whole-sequence graph of a model whose cache cannot be carried (`cached` says why: ProphetNet's cached
    forward takes one token at a position export fixes), run without it on all tokens so far each step, as a model
    without a cache is: attention over the whole sequence gives what the cache would. Where that does not export at
    a dynamic length either, one error with both reasons."""
    try:
        return _recompute_graph(model, max_seq)
    except FrontendError as uncached:
        raise FrontendError(f"{cached}; without its cache: {uncached}") from cached


# why a decoder recomputes (the start of `recomputes_because`)
NO_CACHE = "the model keeps no KV cache (its attention may see later positions, as BERT-style LM heads' does)"
CACHE_REFUSED = "its cache cannot be carried"
NO_VARIANT = "its cached forward exports in no variant"
REASON_CHARS = 300  # of the refusing error in a report note: its first sentence, not export's hints


def _refused(err: FrontendError, what: str) -> str:
    """`what` and the start of the error that refused the cache: why decoding recomputes, for the report."""
    text = str(err).split(". Hints:")[0].strip().splitlines()
    first = text[0] if text else type(err).__name__
    return f"{what} ({first if len(first) <= REASON_CHARS else first[:REASON_CHARS - 1] + '…'})"


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
            ones_mask: bool = False, one_token: bool = False, seen_from_shapes: bool = False,
            min_seq: int = 1) -> Graph:
    """The decoding graph through torch.export, the model called as the EXPORT_VARIANTS entry says, for `min_seq`
    .. max_seq tokens per call (a prefill graph's 2 .. max_seq: prefill.py)."""
    from torch.export.graph_signature import OutputKind

    from .hf_source import quiet_transformers
    from .moe import per_expert_routing
    from .torch_export import HINTS, decompose_missing
    from .torch_importer import Importer

    wrapper = KVCachedLM(model, ones_mask, tuple(specs), own_cache, seen_from_shapes)
    ids = torch.zeros(1, 1 if one_token else 2, dtype=torch.long)
    cache = tuple(torch.zeros(s.shape, dtype=s.dtype) for s in specs)
    filled = torch.zeros(3, dtype=torch.long)  # a length other than the example's seq: two distinct dims
    try:
        with per_expert_routing(model), torch.no_grad(), quiet_transformers():
            program = _export_dynamic(wrapper, (ids, torch.zeros(1, dtype=torch.long), filled, cache), max_seq,
                                      one_token, min_seq)
    except Exception as err:
        text = str(err).strip().splitlines()
        raise FrontendError(f"torch.export could not export {type(model).__name__} with a KV cache: "
                            f"{type(err).__name__}: {text[0] if text else ''}. Hints: {HINTS}.") from err
    program.graph_module.graph.eliminate_dead_code()  # lengths computed for branches not taken (BLOOM's past + seq)
    program = decompose_missing(program)  # as the full-sequence import does: the long tail by torch's decompositions
    importer = Importer(program, KVCachedLM.actsparse_prefix)
    importer.symbols.update(_dim_symbols(program))
    importer.bounds = {SEQ: (min_seq, max_seq), FILLED: (1, max_seq)}  # what the runtime feeds (runtime/decoder.py)
    graph = importer.run()
    # a recurrent kernel that writes a state in place (`conv_state.copy_`) adds an output for that input mutation
    # ahead of the user outputs; the wrapper returns the written state itself, so only the user outputs are kept
    kinds = [spec.kind for spec in program.graph_signature.output_specs]
    return graph.with_outputs(o for o, kind in zip(graph.outputs, kinds, strict=True) if kind == OutputKind.USER_OUTPUT)


def _export_dynamic(wrapper: nn.Module, args: tuple, max_seq: int, one_token: bool, min_seq: int = 1):
    """torch.export with `seq` dynamic in min_seq .. max_seq and `kv` in 1 .. max_seq. A prefill graph's `seq`
    (from 2 on: no size-1 branch to keep) is first given as a bounded hint, `Dim.DYNAMIC(min, max)`: a guard torch's
    solver cannot prove over the range then stays unchecked instead of failing the export after a whole trace
    (Mamba-2's chunk padding, `seq + pad == 256`: ~16 s of a tiny Falcon-H1's compile), and a guard that narrows
    the range narrows the hint (Kimi-Linear's chunk loop: seq <= chunk), which the graph then says (ir/limits.py):
    the named dims would fail on it after a whole trace, and both DYNAMIC give that same narrowed program after
    another. Otherwise, or where that fails, both dims are named ranged `Dim`s; where torch cannot prove a guard
    over those (DeepSeek-V3.2's `min(index_topk, kv) <= kv`), both are left DYNAMIC (the importer then bounds them
    by max_seq itself: Importer.bounds). A length the model's code fixes to the example's (`_specialized`) ends the
    tries at the first."""
    from torch.export.dynamic_shapes import Dim

    ranged = (Dim(SEQ, min=min_seq, max=max_seq), Dim(FILLED, min=1, max=max_seq), False)
    attempts = [ranged, (Dim.DYNAMIC, Dim.DYNAMIC, False)]
    if min_seq >= 2 and not one_token:
        attempts.insert(0, (Dim.DYNAMIC(min=min_seq, max=max_seq), ranged[1], True))
    for i, (seq, kv, hinted) in enumerate(attempts):
        dynamic = (None if one_token else {1: seq}, None, {0: kv}, tuple(None for _ in args[3]))
        try:
            program = torch.export.export(wrapper, args, dynamic_shapes=dynamic, strict=False)
        except (torch._dynamo.exc.UserError, AssertionError) as err:
            if i == len(attempts) - 1 or _specialized(err) or not _other_dims_may_export(err, hinted):
                raise
            continue
        return program


def _other_dims_may_export(err: Exception, hinted: bool) -> bool:
    """Whether another form of the dims may export where this one failed: a hint's failure, violated constraints,
    or torch's report of them failing on a derived dim whose range it narrowed to one value (an AssertionError)."""
    if isinstance(err, AssertionError):
        return "Cannot create Dim" in str(err)
    return hinted or "Constraints violated" in str(err)


def _specialized(err: Exception) -> bool:
    """Whether the model's code fixed the length to the example's (MiniMax's lightning attention loops over
    `seq // block` blocks in Python): that comes from the code, not from the dims' ranges, so no other form of the
    dims exports (each try a whole trace: 18 of a tiny MiniMax's 35 s compile)."""
    return "specialized it to be a constant" in str(err)


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
        self._own_inputs = _rewrites_generation_ids(model)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self._own_inputs:  # what the model's generate feeds (XLM: a mask token appended, whose logits predict)
            given = self.model.prepare_inputs_for_generation(input_ids)
            out = self.model(**{k: v for k, v in given.items() if isinstance(v, torch.Tensor)}, use_cache=False,
                             **self._last_logits_only)
            return out.logits[:, -1:]
        positions = {"position_ids": torch.arange(input_ids.shape[1]).unsqueeze(0)} if self._positions else {}
        out = self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False,
                         **positions, **self._last_logits_only)
        return out.logits[:, -1:]


def _rewrites_generation_ids(model: nn.Module) -> bool:
    """Whether the model's own `prepare_inputs_for_generation` feeds its forward other token ids than the sequence
    so far (XLM appends its mask token and a language id per token): generate then predicts from those, and so
    must the recomputed graph."""
    from transformers.generation.utils import GenerationMixin

    own = getattr(type(model), "prepare_inputs_for_generation", None)
    if own is None or own is GenerationMixin.prepare_inputs_for_generation:
        return False
    ids = torch.zeros(1, SEQ_EXAMPLE, dtype=torch.long)
    given = model.prepare_inputs_for_generation(ids).get("input_ids")
    return isinstance(given, torch.Tensor) and given.shape != ids.shape


def _recompute_graph(model: nn.Module, max_seq: int) -> Graph:
    """`graph(input_ids: i64[1, seq]) -> logits f32[1, 1, V]` for a model that keeps no cache (its attention may
    see later positions, as BERT-style LM heads without is_decoder do, so no cache could be reused): transformers'
    `generate` runs it on the whole sequence each step, and so does the runtime (runtime/decoder.py). A model whose
    export at SEQ_EXAMPLE tokens holds for that length only (a branch on a count derived from the length, taken
    another way by longer sequences: DeepSeek-V4's compressors) is exported again on a longer example; its graph
    then holds from a least length on, which its input carries and the runtime checks (ir/limits.py)."""
    import warnings

    from ..ir import Node, verify
    from ..ir.graph import rewrite
    from .hf_source import quiet_transformers
    from .torch_export import import_torch

    vocab = max(2, model.get_input_embeddings().num_embeddings)
    lengths = [n for i, n in enumerate(RECOMPUTE_EXAMPLES) if i == 0 or n <= max_seq]
    why = ""
    for length in lengths:
        ids = torch.arange(length, dtype=torch.long).reshape(1, -1) % vocab
        last = length == lengths[-1]  # only the last example falls back to static shapes (to say why)
        with torch.no_grad(), quiet_transformers(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # a fallback to static shapes is checked below, its warning kept as why
            try:
                graph = import_torch(LastLogits(model), (ids,), dynamic_seq=True, fallback=last)
            except (ActsparseError, TypeError, ValueError) as err:  # what import_torch falls back on
                if last or isinstance(err, UnsupportedOpError):
                    raise
                why = why or f" ({err})"
                continue
        if len(graph.inputs) == 1 and graph.inputs[0].type.shape[1] == SEQ:
            named = Node("input", (), {**graph.inputs[0].attrs, "name": INPUTS[0]}, graph.inputs[0].type)  # `least`
            outputs = rewrite(graph, lambda n, named=named, graph=graph: named if n is graph.inputs[0] else None)
            return verify(Graph((named,), outputs.outputs, graph.weights, graph.name))
        why = why or next((f" ({w.message})" for w in caught if "symbolic sequence length" in str(w.message)), "")
    raise FrontendError(f"{type(model).__name__}'s forward without a cache could only be exported for a fixed "
                        f"sequence length, so it cannot be run on a growing sequence either{why}")


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
    renamed = {id(n): Node("input", (), {**n.attrs, "name": name}, n.type) for n, name in zip(graph.inputs, names)}

    def rename_or_slice(node: Node) -> Node | None:
        # index_select(x, arange(kv)){axis} -> slice(x){axis, 0:kv}: the filled prefix as the slice it is
        if node.op == "index_select" and node.inputs[1].op == "arange" and node.inputs[1].attrs.get("end") == FILLED \
                and node.inputs[1].attrs.get("start", 0) == 0 and node.inputs[1].attrs.get("step", 1) == 1:
            prefix = {"axis": node.attrs["axis"], "start": 0, "end": FILLED, "step": 1}
            return Node("slice", node.inputs[:1], prefix, node.type, node.loc)
        return renamed.get(id(node))

    outputs = rewrite(graph, rename_or_slice).outputs
    return verify(Graph(tuple(renamed.values()), outputs, graph.weights, graph.name))
