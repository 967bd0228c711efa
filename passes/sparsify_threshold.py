"""sparsify-threshold: training-free sparsity for any gated MLP (SwiGLU, GeGLU, ReLU family) from calibrated
thresholds, by one of the methods of `sparsity_methods.METHODS`.

Matches every `gated_mlp`. Per-neuron methods (cats, product) produce (weights laid out as in `sparsify-exact`:
down transposed, fused gate_up split, biases folded in homogeneous coordinates)

    gated_mlp(x, @Wg, @Wu, @Wd) -> sparse_gated_mlp(x, @Wg, @Wu, @Wd.t){mode='threshold', threshold=t, criterion=c}

whose semantics (the "threshold" entry of `ir/sparse_variants.py`) zero a neuron for a token when
|act(g)| <= t (criterion 'gate', CATS) or |act(g)·up| <= t (criterion 'product'). Input-sparsity methods
(teal, wina, teal-cats, topk, *-greedy) produce

    gated_mlp(x, @Wg, @Wu, @Wd) -> sparse_gated_mlp(x, @Wg.t, @Wu.t, @Wd.t, @x_thr, @h_thr){mode='input', ...}

(`ir/input_sparse.py`): gate/up transposed so a skipped input channel skips one contiguous weight row, and the
per-channel thresholds of x and of the down projection's input as weights.

It is lossy by design: thresholds are chosen by `calibrate.py` on calibration data for the target `sparsity`;
the report shows the calibrated sparsity, the effective sparsity (weight bytes not read) and the sparsity
measured on held-out inputs and the error of the outputs.

Options: `sparsity` (0 < s < 1: the method's target; for input methods the fraction of MLP weight bytes skipped),
`method` (see METHODS; default DEFAULT_METHOD), `thresholds` (explicit per-location thresholds
`((location, t), ...)` for per-neuron methods, skipping calibration for those blocks), `calibration` (input
tuples; not part of the text form), `max_tokens` (calibration rows kept per block), `progress` (tqdm bars),
`sensitivity` (per block g² of the loss on the calibration samples' rows, passes/loss_sensitivity.py: a greedy
method then pools the budget across blocks by it, sensitivity_allocation.py; not part of the text form),
`storage` (how the weights will be stored: a `quantize=` value; None: as the graph holds them), which prices a
rotated method's Q against the block's bytes and tells the quantize pass what Q may become
(`rotation.ROTATION_STORAGE`), `expert_allocation` and `routed_experts` (routed MoE experts, below; pass options, no
compile() arguments).

Cost rule (`target`, its `input_byte_cost` and `input_fixed_bytes`): an input-mode block whose kernel would read (1 - s)
of the bytes at a higher cost per byte than the dense kernel, plus a fixed cost per call, pays too little when (1 - s) x
cost + fixed / the block's bytes > `PAYING_TIME` (s its calibrated effective sparsity, a rotation's bytes already
subtracted; the fixed part weighs on small blocks: SmolLM2-135M's, not Mistral-7B's); it stays dense as dense mode
builds it (the fused dense kernel, `sparse_gated_mlp{mode='dense'}`; under quantized storage three linears on its rows
as stored, e.g. a GGUF's own blocks), the report's row gives the reason, and counts as `kept-dense-by-cost`
(input_cost.py; where the dense build keeps a file's blocks, `file_layouts`, its bytes are theirs). Under 4-bit
storage an input method's block over a file's quantized blocks stays dense the same way, uncalibrated: its re-laid
copies would round those blocks again at 4 bits (+82-84% perplexity on SmolLM2-135M's Q4_1 file at 0.5),
`kept-dense-file-blocks`.

MoE experts that route-moe will route take, with `routed_experts="input"`, the asked input method (TEAL / WINA) per
expert on the tokens routed to it, a rotated method's basis fitted once per MoE layer and shared by its experts
(`sparse_gated_mlp(linear(x, @Q), @Wg.t, @Wu.t, @Wd.t, @x_thr, @h_thr){mode=input}` per expert, one `linear` per
layer; passes/routed_input.py; route-moe stacks them into `routed_moe{mode=input}`) where the target's routed kernel
runs input-sparse experts (ir/moe.py's `ROUTED_MODES["input"]`: x86 and ARM) and the method counts no fixed number
per token; the cost rule does not apply to them (a layer's experts route as one kind). Not the default: half the
perplexity increase of the cuts at more bytes skipped, but measured slower than the dense experts on an AVX2 host
(routed_input.py). By default ("cuts") they take weighted CATS, a threshold per neuron calibrated on the tokens routed
to its expert, then a cut on h (`sparse_gated_mlp(x, @Wg, @Wu, @Wd.t, @neuron_thr, R_e){mode='neuron-threshold'}`:
|act(g_i)|·|R_e| > t_i, then |h_i|·|R_e| > t'_i, R_e the token's routing weight to the expert), a layer's experts
sharing one pair of cuts on its output scale (`expert_allocation`: "shared", the default, or "uniform": one per expert;
passes/routed_thresholds.py; route-moe stacks them into `routed_moe{mode=threshold}`), where the target's routed kernel
takes them (ir/moe.py's `ROUTED_MODES`: x86, ARM and CUDA's) and the experts have no biases. Elsewhere
(`route_moe.lossless_routed_experts`) they are left lossless, with the reason in the report (`ir.moe.routed_reason`):
run all-experts they would cost E/k times the routed experts' reads; ReLU-family experts (without biases) run exact,
their zero neurons skipped; others dense. Explicit `thresholds` for an expert still apply. A block whose hidden vector
is RMS-normalised (BitNet's ffn_sub_norm) takes no thresholds either (no threshold kernel applies the norm): exact where
ReLU-family and the target's exact kernel applies the norm, else dense.

Statistics: one count per pattern rewritten (`swiglu`, `geglu-fused`, ...); `routed-expert-input` per routed expert
calibrated by an input method; `routed-expert-thresholds` per routed expert calibrated by cuts per neuron
(`routed-expert-too-few-tokens` among them: threshold 0), `shared-cut-layers` per MoE layer whose experts shared one
cut; `exact-routed-experts` / `kept-dense-routed-experts` per expert left exact / dense; `exact-hidden-norm` /
`kept-dense-hidden-norm` per normed block; `fisher-allocation` once when the budget was pooled by `sensitivity`;
`rotation-<kind>` per rotation stored (`int8`: q8_0, see `rotation.ROTATION_STORAGE`); `kept-dense-by-cost` per block
the cost rule kept dense; `kept-dense-file-blocks` per block kept on a file's quantized blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import ActsparseError
from ..ir import Graph, Node, TensorType, rewrite, weight_node
from ..ir.activations import reads_input
from ..ir.graph import quantized_weight_node
from ..ir.mlp import HIDDEN_NORM_REASON, has_hidden_norm, is_exactly_sparse, pattern_name
from ..ir.moe import routed_kernel_takes
from ..ir.quant import FLOAT_KINDS, QUANTIZE_KINDS, quantize
from ..ir.sparse_variants import dense_variant_attrs
from ..targets import Target
from .base import Pass, coerce_options, note, record
from .calibrate import (
    InputThresholds,
    NeuronThreshold,
    calibrate,
    calibration_samples,
    collect_inputs,
    refused,
    threshold_attrs,
)
from .detect_gated_mlp import plain_as_gated
from .input_cost import block_bytes, dense_pays, file_blocks_reason
from .rotation import ROTATION_STORAGE
from .route_moe import lossless_routed_experts, routed_experts, with_routing_scale
from .routed_input import calibrate_routed_input, takes_input_method
from .routed_thresholds import (
    EXPERT_ALLOCATIONS,
    ROUTED_METHOD,
    ExpertThresholds,
    calibrate_routed_experts,
    routed_reason,
)
from .sparse_layout import to_sparse_layout
from .sparsify_exact import exact_block
from .sparsity_methods import DEFAULT_METHOD, METHODS, method

# what routed experts take: "cuts" (the default), each neuron's cuts (routed_thresholds.py), or "input", the asked
# input method per expert (routed_input.py), where the target's routed kernel runs it (module docstring)
ROUTED_EXPERT_KINDS = ("cuts", "input")


@dataclass(frozen=True)
class SparsifyThreshold(Pass):
    name = "sparsify-threshold"
    data_options = ("calibration", "sensitivity", "target", "loss_guard", "file_layouts")
    sparsity: float = 0.5
    method: str = DEFAULT_METHOD
    thresholds: tuple = ()
    calibration: tuple = field(default=(), repr=False, compare=False)
    sensitivity: tuple = field(default=(), repr=False, compare=False)
    max_tokens: int = 4096
    skip_positions: int = 0   # each calibration sample's first positions left out (calibrate.SINK_POSITIONS)
    progress: bool = True
    storage: str | None = None
    expert_allocation: str = "shared"   # routed experts' cut: routed_thresholds.EXPERT_ALLOCATIONS
    routed_experts: str = "cuts"   # what routed experts take: ROUTED_EXPERT_KINDS (module docstring)
    target: Target | None = field(default=None, repr=False, compare=False)   # its input_byte_cost: the cost rule
    loss_guard: object = field(default=None, repr=False, compare=False)   # quality_guard.LossGuard
    # {weight name: layout} of a source file's blocks the dense build keeps (input_cost.py): compile() gives them
    file_layouts: dict = field(default_factory=dict, repr=False, compare=False)
    # the method for blocks `method` cannot take (calibrate.refused: gate/up biases, FATReLU under an input method);
    # None: such a block is an error. compile() sets it when the user named no method
    fallback: str | None = None

    def __post_init__(self):
        coerce_options(self)
        if isinstance(self.thresholds, dict):
            object.__setattr__(self, "thresholds", tuple((k, *((v,) if isinstance(v, (int, float)) else v))
                                                         for k, v in self.thresholds.items()))
        if self.method not in METHODS:
            raise ValueError(f"sparsify-threshold: unknown method {self.method!r}; valid methods: {', '.join(METHODS)}")
        if self.expert_allocation not in EXPERT_ALLOCATIONS:
            raise ValueError(f"sparsify-threshold: unknown expert_allocation {self.expert_allocation!r}; valid: "
                             f"{', '.join(EXPERT_ALLOCATIONS)}")
        if self.routed_experts not in ROUTED_EXPERT_KINDS:
            raise ValueError(f"sparsify-threshold: unknown routed_experts {self.routed_experts!r}; valid: "
                             f"{', '.join(ROUTED_EXPERT_KINDS)}")
        if self.storage is not None and self.storage not in ROTATION_STORAGE:
            raise ValueError(f"sparsify-threshold: unknown storage {self.storage!r}; valid: "
                             f"{', '.join(ROTATION_STORAGE)}")
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsify-threshold: sparsity must be between 0 and 1 (exclusive), got {self.sparsity}")


    def run(self, graph: Graph) -> Graph:
        graph = rewrite(graph, _plain_block, {})   # non-gated MLPs (GPT-2, Falcon, OPT) as blocks with a unit up
        kernel_family = self.target.kernel_family if self.target is not None else "cpu"
        normed: dict = {}
        graph = rewrite(graph, lambda node, source=graph: _normed_block(node, source, kernel_family, normed), normed)
        blocks = [n for n in graph.nodes if n.op == "gated_mlp" and not has_hidden_norm(n)]   # (the normed: dense)
        if not blocks:
            return graph
        chosen = self._given(blocks)
        routed = routed_experts(graph)
        kept_routed = lossless_routed_experts(graph, blocks, "threshold", exempt=[c is not None for c in chosen],
                                              family=kernel_family, routed=routed)
        methods = [(self.method, "")] * len(blocks)   # per block: (its method, why not self.method)
        storage = self.storage or _stored_as(graph, blocks[0])
        # an input method's block over a file's quantized blocks stays dense, uncalibrated (input_cost.py); one the
        # method refuses takes the fallback, a per-neuron method that reads gate / up as stored
        file_kept = [file_blocks_reason(b, storage, self.file_layouts) if method(self.method).mode == "input"
                     and id(b) not in routed and chosen[i] is None and not refused(b, self.method) else ""
                     for i, b in enumerate(blocks)]
        missing = [i for i, b in enumerate(blocks) if chosen[i] is None and not kept_routed[i] and not file_kept[i]]
        if missing and not self.calibration:
            where = ", ".join(blocks[i].loc or "?" for i in missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise ActsparseError(f"sparsify-threshold has no thresholds for {where}: pass calibration data "
                                 "(compile(..., mode='threshold', calibration=[...], sparsity=...)) or explicit "
                                 "thresholds")
        routing = {key: expert for key, expert in routed.items() if not expert.biased}   # the experts it thresholds
        # one pass over the calibration samples for every block that calibrates (a routed expert: its tokens only)
        collected = (dict(zip(missing, zip(*collect_inputs(
            graph, [blocks[i] for i in missing], calibration_samples(self.calibration, len(graph.inputs)),
            self.max_tokens, progress=self.progress, with_index=True, skip_positions=self.skip_positions,
            routing=[routing[id(blocks[i])].weight if id(blocks[i]) in routing else None for i in missing]))))
                     if missing else {})

        def rows_of(indices: list[int]) -> tuple[list, list]:
            return [collected[i][0] for i in indices], [collected[i][1] for i in indices]

        experts = [i for i in missing if id(blocks[i]) in routing]   # routed, with thresholds: routed_thresholds.py
        # or input sparsity (routed_input.py) where the method is an input method the routed kernel takes
        # (FATReLU experts, which input methods refuse, take the cuts: a layer's experts share their gate)
        routed_input = {i for i in experts if not refused(blocks[i], self.method)} if (
            self.routed_experts == "input" and takes_input_method(self.method)
            and routed_kernel_takes("input", kernel_family)) else set()
        if routed_input:
            inputs = sorted(routed_input)
            found = calibrate_routed_input(graph, [blocks[i] for i in inputs], rows_of(inputs)[0],
                                           [routing[id(blocks[i])].layer for i in inputs],
                                           [routing[id(blocks[i])].slots for i in inputs], self.method,
                                           self.sparsity, storage, self.progress)
            for i, c in zip(inputs, found):
                chosen[i] = c
            record("routed-expert-input", len(inputs))
            missing = [i for i in missing if i not in routed_input]
            experts = [i for i in experts if i not in routed_input]
        if experts:
            found = calibrate_routed_experts(graph, [blocks[i] for i in experts], rows_of(experts)[0],
                                             [collected[i][2] for i in experts],
                                             [routing[id(blocks[i])].layer for i in experts], self.sparsity,
                                             self.expert_allocation, self.progress)
            for i, c in zip(experts, found):
                chosen[i], methods[i] = c, (ROUTED_METHOD, routed_reason(self.method))
            record("routed-expert-thresholds", len(experts))
            missing = [i for i in missing if i not in experts]
        if missing:
            weighted = bool(self.sensitivity) and method(self.method).greedy
            if weighted and len(self.sensitivity) != len(blocks):   # the torch MLPs are not the graph's blocks
                record("fisher-allocation-unmatched")
                weighted = False
            if weighted:
                record("fisher-allocation")   # the budget pooled across blocks by the loss's sensitivity
            guard = self.loss_guard
            if guard is not None and len(missing) != len(blocks):   # it installs every block's plan, or none
                record("quality-guard-unmatched")
                guard = None
            refusals = {i: refused(blocks[i], self.method) for i in missing} if self.fallback else {}
            own = [i for i in missing if not refusals.get(i)]
            other = [i for i in missing if refusals.get(i)]
            if other and guard is not None:   # the guard installs every block's plan, or none
                record("quality-guard-unmatched")
                guard = None
            found = calibrate(graph, [blocks[i] for i in own], rows_of(own), self.method, self.sparsity, self.progress,
                              storage, [self.sensitivity[i] for i in own] if weighted else None, guard) if own else []
            if guard is not None and guard.outcome is not None:
                record("quality-guard" if guard.outcome[1] == guard.outcome[0] else "quality-guard-lowered")
            if other:
                record("method-fallback", len(other))
                found += calibrate(graph, [blocks[i] for i in other], rows_of(other), self.fallback, self.sparsity,
                                   self.progress, storage)
            for i, c in zip(own + other, found):
                chosen[i] = c
            for i in other:
                methods[i] = (self.fallback, f"{self.fallback} ({refusals[i]}: {self.method} takes none)")
        cost, fixed = ((self.target.input_byte_cost.get(storage, 1.0), self.target.input_fixed_bytes.get(storage, 0.0))
                       if self.target is not None else (1.0, 0.0))
        # rewrite visits graph.nodes in order (rebuilt nodes: new identity)
        in_order = iter(zip(chosen, methods, kept_routed, (i in routed_input for i in range(len(blocks))), file_kept))
        new_weights: dict = {}
        rotations: dict = {}   # the rotation `linear` per (Q, input): a routed layer's experts share one

        def visit(node: Node) -> Node | None:
            if node.op != "gated_mlp" or has_hidden_norm(node):
                return None
            c, (name, why), kept, routed_in, from_file = next(in_order)
            if kept:   # a routed expert: route-moe runs it exact (ReLU-family) or dense, on its tokens only
                return exact_block(node, graph, new_weights, kernel_family, count=False) if kept == "exact" else None
            pattern = pattern_name(node.attrs["gate_act"], node.attrs["up_act"]) + (
                "-fused" if node.attrs.get("fused") else "")
            stat, reason = _kept_dense(c, from_file, routed_in, lambda e: _dense_pays_for(
                node, graph, storage, self.file_layouts, e, cost, fixed))
            if reason:
                record(stat)
                if storage in QUANTIZE_KINDS and reads_input(node.attrs["up_act"]):
                    # as dense mode builds it (fuse_gated_mlp): three linears on the rows as stored, a GGUF's own
                    # blocks; the fused kernel would read a down re-laid and re-quantized, and more slowly
                    note({"kind": "kept-dense", "location": node.loc, "mode": "dense", "reason": reason,
                          "pattern": pattern})
                    return None
                return to_sparse_layout(node, {**dense_variant_attrs(node.attrs, pattern), "reason": reason}, graph,
                                        new_weights)
            record(pattern)
            return _threshold_block(node, c, {"method": name, **({"reason": why} if why else {}), **_summary(c)},
                                    graph, new_weights, ROTATION_STORAGE[storage], rotations, routed_in)

        graph = rewrite(graph, visit, new_weights)
        # a routed expert's block takes its term's R_e as its scale: the term's, rebuilt in the graph just built
        return rewrite(graph, with_routing_scale) if experts else graph

    def _given(self, blocks: list[Node]) -> list[NeuronThreshold | None]:
        given = {}
        for entry in self.thresholds:
            loc, t, *rest = entry
            if rest:
                raise ActsparseError(f"sparsify-threshold: thresholds take (location, t) pairs, got {entry!r}")
            given[loc] = float(t)
        if given and method(self.method).mode != "threshold":
            raise ActsparseError(f"sparsify-threshold: explicit thresholds apply to the per-neuron methods (cats, "
                                 f"product), not {self.method!r}: calibrate it instead")
        unknown = set(given) - {b.loc for b in blocks}
        if unknown:
            raise ActsparseError(f"sparsify-threshold: thresholds given for unknown blocks {sorted(unknown)}; "
                                 f"blocks: {[b.loc for b in blocks]}")
        criterion = method(self.method).criterion
        return [NeuronThreshold(given[b.loc], criterion, float("nan"), float("nan"), 0) if b.loc in given else None
                for b in blocks]


NORMED_EXACT_REASON = ("its hidden vector is RMS-normalised before the down projection (BitNet's ffn_sub_norm): no "
                       "threshold kernel applies that norm, so it runs exact (lossless, its zero neurons skipped)")


def _normed_block(node: Node, graph: Graph, kernel_family: str, new_weights: dict) -> Node | None:
    """A block whose hidden vector is RMS-normalised (BitNet's ffn_sub_norm): no threshold kernel applies the norm
    and the calibration does not model it, so a ReLU-family one runs exact (lossless, its zero neurons skipped,
    where the family's exact kernel applies the norm) and any other stays dense; the report says which and why."""
    if node.op != "gated_mlp" or not has_hidden_norm(node):
        return None
    pattern = pattern_name(node.attrs["gate_act"], node.attrs["up_act"])
    if is_exactly_sparse(node.attrs["gate_act"]):
        exact = exact_block(node, graph, new_weights, kernel_family, count=False)
        if exact is not None:
            record("exact-hidden-norm")
            note({"kind": "kept-exact", "location": node.loc, "mode": "exact", "reason": NORMED_EXACT_REASON,
                  "pattern": pattern})
            return exact
    record("kept-dense-hidden-norm")
    note({"kind": "kept-dense", "location": node.loc, "mode": "dense", "reason": HIDDEN_NORM_REASON,
          "pattern": pattern})
    return None


def _plain_block(node: Node) -> Node | None:
    found = plain_as_gated(node)
    if found is None:
        return None
    record("plain-mlp")
    block, b_down = found
    return block if b_down is None else Node("add", (block, b_down), {}, node.type, node.loc)


def _stored_as(graph: Graph, block: Node) -> str:
    """The storage kind of a block's weights as the graph holds them (no quantize= given)."""
    return "fp16" if graph.weights[block.inputs[1].attrs["name"]].dtype == np.float16 else "fp32"


def _kept_dense(c, from_file: str, routed_in: bool, by_cost) -> tuple[str, str]:
    """(statistic, reason) where a calibrated block stays dense, ("", "") where it does not: a file's quantized blocks
    (`from_file`, input_cost.py), too few calibration tokens (no thresholds `c`), or `by_cost(effective)`'s reason
    for an input-mode block (a routed expert stays in its layer's kind: route-moe stacks experts of one kind only)."""
    if from_file:
        return "kept-dense-file-blocks", from_file
    if routed_in:
        return "", ""
    if c is None:
        return "kept-dense-too-few-tokens", ("kept dense: this non-gated MLP's call site sees too few calibration "
                                             "tokens for the asked sparsity")
    return ("kept-dense-by-cost", by_cost(c.effective)) if isinstance(c, InputThresholds) else ("", "")


def _dense_pays_for(node: Node, graph: Graph, storage: str, file_layouts, effective: float, cost: float,
                    fixed: float) -> str:
    """input_cost.dense_pays for this block: dense at the bytes it reads (a file's kept blocks at theirs), the
    sparse copies at `storage`'s."""
    dense = block_bytes(node, graph, storage, file_layouts)
    return dense_pays(effective, cost, fixed / dense, block_bytes(node, graph, storage) / dense)


def _summary(c: NeuronThreshold | InputThresholds | ExpertThresholds) -> dict:
    """What the node carries of its calibration for the report (the method's own and the effective sparsity)."""
    if isinstance(c, (NeuronThreshold, ExpertThresholds)):
        nan = c.sparsity != c.sparsity   # explicit thresholds: nothing calibrated
        return {} if nan else {"calibrated_sparsity": c.sparsity, "effective_calibrated": c.effective}
    return {"calibrated_sparsity": c.h_sparsity, "input_sparsity": c.x_sparsity, "effective_calibrated": c.effective}


def _rotation_weight(name: str, q_t: np.ndarray, kind: str, new_weights: dict) -> Node:
    """Qᵀ (the rows `linear` streams) stored as `kind` says (rotation.ROTATION_STORAGE: what calibration priced);
    a later quantize pass leaves a weight that already has a layout as it is."""
    record(f"rotation-{kind}")
    if kind in FLOAT_KINDS:
        array = new_weights.setdefault(name, np.ascontiguousarray(q_t.astype(FLOAT_KINDS[kind])))
        return weight_node(name, array)
    qw = quantize(np.ascontiguousarray(q_t, np.float32), kind)
    new_weights[f"{name}.{qw.layout}"] = qw.blob
    return quantized_weight_node(f"{name}.{qw.layout}", qw)


def _experts_module(loc: str) -> str:
    """A routed expert's location without its index: its layer's experts' module."""
    return re.sub(r"\.\d+$", "", loc)


def _threshold_block(node: Node, c: NeuronThreshold | InputThresholds | ExpertThresholds, provenance: dict,
                     graph: Graph, new_weights: dict, kind: str, rotations: dict, routed: bool = False) -> Node:
    """The block in threshold mode as `c` says; a routed expert's (ExpertThresholds) without its scale yet (the
    routing weight of its term: `route_moe.with_routing_scale`). `rotations`: the rotation `linear` built per (Q,
    input) so far, which a routed layer's input experts (`routed`) share (route-moe stacks experts of one input)."""
    pattern = pattern_name(node.attrs["gate_act"], node.attrs["up_act"])
    if isinstance(c, ExpertThresholds):   # a FATReLU's own t is in its thresholds: relu kept above them
        gate_act = "relu" if node.attrs["gate_act"] == "fatrelu" else node.attrs["gate_act"]
        attrs = {"pattern": pattern, "gate_act": gate_act, "up_act": node.attrs["up_act"],
                 "mode": "neuron-threshold", "threshold": 0.0, **provenance}
        base = to_sparse_layout(node, attrs, graph, new_weights)
        name = f"{base.inputs[3].attrs['name'].removesuffix('.t')}.neuron_thr"
        thresholds = weight_node(name, new_weights.setdefault(name, c.thresholds))
        return Node("sparse_gated_mlp", (*base.inputs, thresholds), base.attrs, base.type, base.loc)
    if isinstance(c, NeuronThreshold):
        attrs = {"pattern": pattern, **threshold_attrs(node.attrs, c.threshold, c.criterion), **provenance}
        return to_sparse_layout(node, attrs, graph, new_weights)
    # input mode: the kernel layout (down transposed, fused split) with gate/up transposed once more
    attrs = {"pattern": pattern, "gate_act": node.attrs["gate_act"], "up_act": node.attrs["up_act"],
             "mode": "input", "threshold": float(np.median(c.h_thr)), **c.attrs, **provenance}
    base = to_sparse_layout(node, attrs, graph, new_weights)
    x, w_gate, w_up, w_down_t = base.inputs
    arrays = {**graph.weights, **new_weights}

    def new(name: str, array: np.ndarray) -> Node:
        array = new_weights.setdefault(name, np.ascontiguousarray(array))
        return weight_node(name, array)

    prefix = w_down_t.attrs["name"].removesuffix(".t")
    w_gate_t, w_up_t = arrays[w_gate.attrs["name"]].T, arrays[w_up.attrs["name"]].T
    suffix = ".t"
    if c.rotation is not None:   # rotated-*: the block reads x·T, its gate/up rows turned by T⁻ᵀ: (W·T⁻ᵀ)ᵀ = T⁻¹·Wᵀ
        t = c.rotation   # as calibration made it (pca: fp16); the turned weights use that T
        key = (id(t), id(x))   # one linear per Q and input (a routed layer's experts share theirs)
        if key not in rotations:
            # a routed layer's rotation is named after its experts' module (an expert's location ends in its index)
            name = (_experts_module(node.loc) if routed and node.loc else prefix) + ".rotation"
            rotations[key] = Node("linear", (x, _rotation_weight(name, t.T, kind, new_weights)), {}, x.type, node.loc)
        x = rotations[key]
        turn_t = c.turn.T.astype(np.float32)
        w_gate_t, w_up_t, suffix = turn_t @ w_gate_t, turn_t @ w_up_t, ".rot.t"
    inputs = (x, new(f"{w_gate.attrs['name']}{suffix}", w_gate_t), new(f"{w_up.attrs['name']}{suffix}", w_up_t),
              w_down_t, new(f"{prefix}.x_thr", c.x_thr.astype(np.float32)),
              new(f"{prefix}.h_thr", c.h_thr.astype(np.float32)))
    attrs = {**base.attrs, "rotation_share": round(c.rotation_share, 5)} if c.rotation is not None else base.attrs
    return Node("sparse_gated_mlp", inputs, attrs, TensorType(node.shape, node.dtype), node.loc)
