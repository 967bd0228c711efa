"""sparsify-predictor: a per-block activation predictor picks the neurons; only their gate, up and down rows are read.

Matches every ReLU-family `gated_mlp` (ReGLU, dReLU, FATReLU; also each MoE expert) and produces, with the weight
layout of `sparsify-exact` and the predictor's scores as a 5th input (semantics in `ir/predictor.py`):

    gated_mlp(x, @Wg, @Wu, @Wd)
      lowrank -> sparse_gated_mlp(x, @Wg, @Wu, @Wd.t, linear(relu(linear(x, @Wg.predictor.A)), @Wg.predictor.B,
                                                             @Wg.predictor.b)){mode='predictor', cutoff=t}
      svd     -> sparse_gated_mlp(x, ..., linear(linear(x, @Wg.predictor.A), @Wg.predictor.B)){...}
      sign    -> sparse_gated_mlp(x, ..., sign_score(x, @Wg.predictor.bits){d}){...}
      quant   -> sparse_gated_mlp(x, ..., linear(x, @Wg.predictor.w.q4_0)){...}   (quant8: q8_0)
    dReLU blocks: sign, and svd where that predicts fewer neurons than a gate-only factor of the same bytes,
    predict gate AND up (`predictors.py`), scores = minimum(s_gate, s_up + shift):
      svd     -> h = linear(x, @A); minimum(linear(h, @B), linear(h, @B_up, @shift))
      sign    -> minimum(sign_score(x, @bits), add(sign_score(x, @bits_up), @shift))
      quant   -> minimum(linear(x, @w.q4_0), linear(x, @w_up.q4_0, @shift))

Why it is right: in a ReLU-family block a neuron predicted active whose gate is <= 0 still adds exactly 0, so the
only loss is a missed active neuron; the cutoff t is placed per block at the target `recall` on held-out
calibration rows (`predictors.py`). Codegen turns `scores > t` into an index list for the indexed kernels, so the
predictor runs inside the compiled graph.

The calibration data runs once through the reference interpreter (`activation_stats.py`, a progress bar); ranks
come from `budget` (predictor bytes as a fraction of the MLP bytes, shared by the layers by density).

Options: `predictor` ("lowrank" | "svd" | "sign" | "quant" | "quant8" | "bound"), `recall` (target per block,
default 0.99), `sparsity` (floor on the predicted sparsity per block: a block that needs more neurons for the
recall is an error naming it; 0 = no floor), `budget`, `steps` (lowrank training steps), `max_tokens` (calibration
rows kept per block), `progress`.
`predictor="bound"` needs no calibration data and loses nothing: its cutoff is the gate's own (0, or FATReLU's
threshold) and its scores bound the gate from above, so every neuron it skips is exactly 0.

Errors: no calibration data (calibrated kinds), too few tokens, unreachable recall, a block that is not
ReLU-family (relufy it, or use mode='threshold').

MoE experts that route-moe will route (`route_moe.lossless_routed_experts`) run exact instead, with the reason in the
report: predictor experts would run all-experts (no routed kernel takes a predictor), E/k times the reads of the
routed exact experts, which skip their inactive neurons' up and down rows losslessly (sparsify-exact's rewrite and
guards: `sparsify_exact.exact_block`; experts with biases, which no routed exact kernel takes, run dense).

Statistics: one count per pattern rewritten (`reglu`, `drelu`, ...); `exact-routed-experts` per expert run exact.
"""


from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ModeError
from ..ir import Graph, Node, TensorType, rewrite, weight_node
from ..ir.graph import quantized_weight_node
from ..ir.mlp import is_exactly_sparse, pattern_name
from ..ir.quant import QuantizedWeight
from .activation_stats import BlockActivations, block_weights, collect_activations
from .base import Pass, coerce_options, note, record
from .calibrate import calibration_samples
from .certified_gate import LAYOUT
from .predictor_train import STEPS
from .predictors import KINDS, Fitted, PredictorError, allocate_ranks, certified_block, fit_block
from .route_moe import lossless_routed_experts
from .sparse_layout import to_sparse_layout
from .sparsify_exact import exact_block


@dataclass(frozen=True)
class SparsifyPredictor(Pass):
    name = "sparsify-predictor"
    data_options = ("calibration",)
    predictor: str = "lowrank"
    recall: float = 0.99
    sparsity: float = 0.0
    budget: float = 0.1
    steps: int = STEPS
    max_tokens: int = 8192
    progress: bool = True
    calibration: tuple = field(default=(), repr=False, compare=False)
    kernel_family: str = "cpu"   # the target's: whether its exact kernel takes a routed expert's hidden norm

    def __post_init__(self):
        coerce_options(self)
        if self.predictor not in KINDS:
            raise ValueError(f"sparsify-predictor: unknown predictor {self.predictor!r}; valid: {', '.join(KINDS)}")
        if not 0.0 < self.recall <= 1.0 or not 0.0 <= self.sparsity < 1.0 or not 0.0 < self.budget <= 1.0:
            raise ValueError(f"sparsify-predictor: recall must be in (0, 1], sparsity in [0, 1), budget in (0, 1]; "
                             f"got recall={self.recall}, sparsity={self.sparsity}, budget={self.budget}")


    def run(self, graph: Graph) -> Graph:
        blocks = [n for n in graph.nodes if n.op == "gated_mlp"]
        if not blocks:
            return graph
        certified = not KINDS[self.predictor].calibrated
        for b in blocks:
            if certified and not is_exactly_sparse(b.attrs["gate_act"]):
                raise ModeError(
                    f"predictor={self.predictor!r} proves a neuron inactive from an upper bound on its gate, so it "
                    f"needs a ReLU-family gate (exactly 0 when the gate is <= 0), but {b.loc or 'a gated MLP'} is "
                    f"{pattern_name(b.attrs['gate_act'], b.attrs['up_act'])} (act={b.attrs['gate_act']}). Ways out: "
                    "actsparse.relufy(model, kind='drelu') then a short recovery fine-tune, or mode='threshold' "
                    "(lossy) with calibration data.")
            if not is_exactly_sparse(b.attrs["gate_act"]):
                raise ModeError(
                    f"mode='predictor' needs a ReLU-family MLP, but {b.loc or 'a gated MLP'} is "
                    f"{pattern_name(b.attrs['gate_act'], b.attrs['up_act'])} (act={b.attrs['gate_act']}), whose "
                    "inactive neurons are not exactly zero. Ways out: actsparse.relufy(model, kind='drelu') then a "
                    "short recovery fine-tune (actsparse.recipes), or mode='threshold' with calibration data.")
        # exact and routed instead (module docstring)
        experts = lossless_routed_experts(graph, blocks, "predictor")
        if certified:
            return self._certify(graph, experts)
        own = [b for b, expert in zip(blocks, experts) if not expert]
        if own and not self.calibration:
            raise PredictorError(f"mode='predictor' needs calibration data to fit the predictors of "
                                 f"{own[0].loc or 'the gated MLPs'}: pass calibration=[(input_ids,), ...], input "
                                 "tuples like example_inputs (a few thousand tokens)")
        acts = collect_activations(graph, own, calibration_samples(self.calibration, len(graph.inputs)),
                                   self.max_tokens, self.progress) if own else []
        fitted = self._fit(graph, own, acts) if own else []
        in_order = iter(zip(fitted, acts))

        def build(node: Node, new_weights: dict) -> Node:
            p, a = next(in_order)
            pattern = pattern_name(node.attrs["gate_act"], node.attrs["up_act"])
            record(pattern)
            d, n_ff = a.rows.shape[1], a.active.shape[1]
            mlp_bytes = 3 * d * n_ff * np.dtype(graph.weights[node.inputs[1].attrs["name"]].dtype).itemsize
            # the report's per-neuron data (too big for node attributes)
            note({"kind": "activation-statistics", "location": node.loc, "neuron_cdf": a.neuron_cdf(),
                  "frequency": [round(float(f), 4) for f in a.frequency], "tokens": len(a.rows),
                  "calibrated_predicted_sparsity": p.predicted_sparsity})
            provenance = {"rank": p.rank, "predictor_bytes_pct": round(100.0 * p.nbytes / mlp_bytes, 3),
                          "calibrated_recall": round(p.recall, 5), "calibrated_sparsity": round(a.sparsity, 5)}
            return _predictor_block(node, p, pattern, provenance, graph, new_weights)

        return self._rewrite(graph, experts, build)

    def _certify(self, graph: Graph, experts: list[str | None]) -> Graph:
        """Calibration-free kinds: one certified predictor per block from its own weights (routed experts: exact)."""

        def build(node: Node, new_weights: dict) -> Node:
            pattern = pattern_name(node.attrs["gate_act"], node.attrs["up_act"])
            record(pattern)
            w_gate = block_weights(node, graph.weights)[0]
            cutoff = node.attrs.get("threshold", 0.0) if node.attrs["gate_act"] == "fatrelu" else 0.0
            p = certified_block(self.predictor, w_gate, cutoff)
            mlp_bytes = 3 * w_gate.size * np.dtype(graph.weights[node.inputs[1].attrs["name"]].dtype).itemsize
            provenance = {"predictor_bytes_pct": round(100.0 * p.nbytes / mlp_bytes, 3), "calibrated_recall": 1.0}
            return _predictor_block(node, p, pattern, provenance, graph, new_weights)

        return self._rewrite(graph, experts, build)

    def _rewrite(self, graph: Graph, experts: list[str | None], build) -> Graph:
        """Every gated MLP in order: a routed expert (`lossless_routed_experts`) exact, or left dense (biased experts);
        each other one `build(node, new_weights)`."""
        new_weights: dict = {}
        is_expert = iter(experts)

        def visit(node: Node) -> Node | None:
            if node.op != "gated_mlp":
                return None
            runs_as = next(is_expert)
            if runs_as:
                return exact_block(node, graph, new_weights, self.kernel_family, count=False) \
                    if runs_as == "exact" else None
            return build(node, new_weights)

        return rewrite(graph, visit, new_weights)

    def _fit(self, graph: Graph, blocks: list[Node], acts: list[BlockActivations]) -> list[Fitted]:
        from tqdm.auto import tqdm

        dims = [(a.rows.shape[1], a.active.shape[1]) for a in acts]
        ups = [_and_up(block, graph, self.predictor) for block in blocks]
        outputs = [n * (1 if up is None else 2) for (_, n), up in zip(dims, ups)]
        ranks = [allocate_ranks([1 - a.sparsity for a in acts], d, [n for _, n in dims], self.budget, outputs)[i]
                 for i, (d, _) in enumerate(dims)]
        gate_ranks = [allocate_ranks([1 - a.sparsity for a in acts], d, [n for _, n in dims], self.budget)[i]
                      if up is not None and KINDS[self.predictor].ranked else None
                      for i, ((d, _), up) in enumerate(zip(dims, ups))]
        fitted = []
        bar = tqdm(list(zip(blocks, acts, ranks, ups, gate_ranks, strict=True)), unit="block",
                   desc=f"fit {self.predictor} predictors", disable=not self.progress or None)
        for block, a, rank, w_up, gate_rank in bar:
            w_gate = block_weights(block, graph.weights)[0]
            fitted.append(fit_block(self.predictor, a.location, w_gate, a.rows, a.active, rank, self.recall,
                                    self.sparsity, options={"steps": self.steps, "progress": self.progress}
                                    if self.predictor == "lowrank" else None, w_up=w_up, gate_only_rank=gate_rank))
        return fitted


def _and_up(block: Node, graph: Graph, kind: str):
    """W_up when the predictor should predict gate AND up: a dReLU block (relu on up) and a kind that does so."""
    if block.attrs["up_act"] != "relu" or not KINDS[kind].predicts_and:
        return None
    return block_weights(block, graph.weights)[1]


def _predictor_block(node: Node, p: Fitted, pattern: str, provenance: dict, graph: Graph, new_weights: dict) -> Node:
    x = node.inputs[0]
    w_gate = node.inputs[1]
    base = f"{w_gate.attrs['name']}.{'gate.' if node.attrs.get('fused') else ''}predictor"
    scores = SCORE_GRAPHS[KINDS[p.kind].scores](x, p, base, node, graph, new_weights)
    attrs = {"gate_act": node.attrs["gate_act"], "up_act": node.attrs["up_act"], "mode": "predictor",
             "pattern": pattern, "predictor": p.kind, "cutoff": float(p.cutoff),
             **{k: v for k, v in provenance.items() if v is not None}}
    if node.attrs["gate_act"] == "fatrelu":
        attrs["threshold"] = node.attrs["threshold"]
    if node.attrs.get("hidden_rms_eps") is not None:   # the norm over the computed neurons (their kernels apply it)
        attrs["hidden_rms_eps"] = node.attrs["hidden_rms_eps"]
    out = to_sparse_layout(node, attrs, graph, new_weights)
    inner = out if out.op == "sparse_gated_mlp" else out.inputs[0]   # biased blocks: slice(sparse_gated_mlp(...))
    with_scores = inner.replace(inputs=(*inner.inputs, scores))
    return with_scores if inner is out else out.replace(inputs=(with_scores,))


def _score_nodes(x: Node, p: Fitted, base: str, dtype, new_weights: dict, loc: str) -> Node:
    """The predictor's scores [..., n_ff] as ordinary ops on x (see the module docstring)."""
    lead = x.shape[:-1]

    def weight(name: str, array: np.ndarray) -> Node:
        array = new_weights.setdefault(f"{base}.{name}", np.ascontiguousarray(array))
        return weight_node(f"{base}.{name}", array)

    def linear(value: Node, w: Node, *bias: Node) -> Node:
        return Node("linear", (value, w, *bias), {}, TensorType((*lead, w.shape[0]), x.dtype), loc)

    def sign_score(name: str) -> Node:
        bits = weight(name, p.arrays[name])
        return Node("sign_score", (x, bits), {"d": p.d}, TensorType((*lead, bits.shape[0]), "f32"), loc)

    def both(gate: Node, up: Node) -> Node:   # the AND: min(s_gate, s_up + shift) > cutoff
        return Node("minimum", (gate, up), {}, gate.type, loc)

    shift = weight("shift", p.arrays["shift"].astype(np.float32)) if "shift" in p.arrays else None
    if p.kind == "sign":
        if shift is None:
            return sign_score("bits")
        up = sign_score("bits_up")
        return both(sign_score("bits"), Node("add", (up, shift), {}, up.type, loc))
    a, b = weight("A", p.arrays["A"].astype(dtype)), weight("B", p.arrays["B"].astype(dtype))
    if p.kind == "svd":
        hidden = linear(x, a)
        if shift is None:
            return linear(hidden, b)
        return both(linear(hidden, b), linear(hidden, weight("B_up", p.arrays["B_up"].astype(dtype)), shift))
    hidden = linear(x, a)
    return linear(Node("relu", (hidden,), {}, hidden.type, loc), b, weight("b", p.arrays["b"].astype(np.float32)))


def _shadow_linear(x: Node, p: Fitted, base: str, name: str, new_weights: dict, loc: str, *bias: Node) -> Node:
    """x·deq(@name)ᵀ (+ bias) by the target's fastest quantized dot: where it has an int8 dot (VNNI) x is rounded to
    8 bits per group of 32 (`ir.quant.round_x8`), 2.4x the float path's speed on q4_0 (BENCHMARKS.md); the cutoff
    was placed on float dots, and that rounding moves a score by far less than the scores' spread (unlike bound's,
    a calibrated cutoff needs no proof)."""
    layout = KINDS[p.kind].layout
    n = p.arrays[name].shape[0]
    shadow = QuantizedWeight(new_weights.setdefault(f"{base}.{name}", p.arrays[name]), layout, (n, p.d))
    return Node("linear", (x, quantized_weight_node(f"{base}.{name}", shadow), *bias), {},
                TensorType((*x.shape[:-1], n), "f32"), loc)


def _shadow_scores(x: Node, p: Fitted, base: str, new_weights: dict, loc: str) -> Node:
    """A quant kind's scores: the gate's shadow, and for an AND predictor the up's shifted (module docstring)."""
    if x.dtype != "f32":
        x = Node("cast", (x,), {"dtype": "f32"}, TensorType(x.shape, "f32"), loc)
    gate = _shadow_linear(x, p, base, "w", new_weights, loc)
    if "shift" not in p.arrays:
        return gate
    shift = weight_node(f"{base}.shift", new_weights.setdefault(f"{base}.shift", p.arrays["shift"]))
    return Node("minimum", (gate, _shadow_linear(x, p, base, "w_up", new_weights, loc, shift)), {}, gate.type, loc)


def bound_scores(x: Node, p: Fitted, base: str, b_gate, new_weights: dict, loc: str) -> Node:
    """x·deq(@w8)ᵀ (+ @b) + ‖x‖₂·@coef in float32 (see the module docstring and `certified_gate.py`)."""
    if x.dtype != "f32":
        x = Node("cast", (x,), {"dtype": "f32"}, TensorType(x.shape, "f32"), loc)
    lead, n = x.shape[:-1], p.arrays["coef"].shape[0]
    w8 = QuantizedWeight(new_weights.setdefault(f"{base}.w8", p.arrays["w8"]), LAYOUT, (n, p.d))
    coef = new_weights.setdefault(f"{base}.coef", p.arrays["coef"])
    inputs = [x, quantized_weight_node(f"{base}.w8", w8)]
    if b_gate is not None:
        inputs.append(weight_node(f"{base}.b", new_weights.setdefault(f"{base}.b", np.asarray(b_gate, np.float32))))
    out = TensorType((*lead, n), "f32")
    approx = Node("linear", tuple(inputs), {"float_x": True}, out, loc)   # x not rounded: the bound assumes it
    norm_type = TensorType((*lead, 1), "f32")
    squares = Node("mul", (x, x), {}, x.type, loc)
    total = Node("sum", (squares,), {"axes": (-1,), "keepdim": True}, norm_type, loc)
    norm = Node("sqrt", (total,), {}, norm_type, loc)
    slack = Node("mul", (norm, weight_node(f"{base}.coef", coef)), {}, out, loc)
    return Node("add", (approx, slack), {}, out, loc)


# the scores' subgraph per `Kind.scores` (passes/predictors.py): (x, fitted, weight-name base, block, graph,
# new weights) -> scores node
SCORE_GRAPHS = {
    "factors": lambda x, p, base, node, graph, new: _score_nodes(
        x, p, base, graph.weights[node.inputs[1].attrs["name"]].dtype, new, node.loc),
    "shadow": lambda x, p, base, node, graph, new: _shadow_scores(x, p, base, new, node.loc),
    "certified": lambda x, p, base, node, graph, new: bound_scores(
        x, p, base, block_weights(node, graph.weights)[2], new, node.loc),
}
assert {k.scores for k in KINDS.values()} <= set(SCORE_GRAPHS)
