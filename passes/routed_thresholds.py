"""Threshold mode's routed MoE experts: each neuron's threshold, calibrated on the tokens routed to its expert, one
cut on the layer's output scale shared by its experts.

A routed expert (one route-moe will run on its tokens only, `route_moe.routed_experts`) takes threshold mode only as
the routed kernel does (ir/moe.py's `ROUTED_MODES`): a token keeps neuron i of expert e where |act_gate(g_i)|·|r_e| >
t_i, r_e its routing weight to e (the CATS criterion with a threshold per neuron on the layer's output scale,
`sparse_gated_mlp{mode=neuron-threshold}` until route-moe stacks it), whatever method the other blocks take, since
the routed kernel skips neurons, not input channels. The t_i come from CATS's score weighted per neuron
(ROUTED_METHOD, "weighted CATS"): |act_gate(g_i)|·c_i·|r_e| > τ with c_i = ‖W_down[:, i]‖ · mean |act_up(u_i)| — how
far neuron i moves the expert's output per unit of its gate value, on the calibration tokens the router sends to
expert e (the rows whose routing weight is not 0, `collect_inputs(routing=)`, in the threshold pass's one pass over
the samples; not every token, whose values the expert never sees in use) — so t_i = τ / c_i. Why weighted: plain
CATS drops a neuron by its gate value alone, though a neuron with a large up factor or down column moves the output
more at the same gate value. Measured as torch replacements on SmolLM2-135M at 0.5 in every MLP, 4 held-out windows
(benchmarks/neuron_weights.py, BENCHMARKS.md session 38): +30.82% perplexity plain, +19.83% weighted (the RMS of u
in place of its mean: +19.70%, the same; the down column alone: +47.44%, worse). A neuron of c_i = 0 (its down
column zero, or its up factor zero on every calibration row) is never kept: it adds nothing.

The routing weight is in the score: an expert's output reaches the layer scaled by r_e, so neuron i's contribution
to the layer's output is r_e·h_i·W_down[:, i], estimated before its up row is read as |act_gate(g_i)|·c_i·|r_e|.
Dropping a token's smallest such contributions, whatever expert they are in, is what least disturbs the layer's
output per neuron read (the Lagrangian of "least squared output error at a given number of reads": one cut τ on
that scale); the kernels compare |act_gate(g_i)|·|r_e| with t_i = τ / c_i (ir/moe.py). A token the router sends to
an expert with a small weight so keeps fewer of its neurons.

How the cut is chosen (`expert_allocation`):
- "shared" (the default): one τ per MoE layer, the `sparsity` quantile of the scores |act_gate(g_i)|·c_i·|r_e| of
  all its experts' calibration rows, each expert's weighted by the tokens routed to it (its rows are at most
  `max_tokens`, and at most SHARED_ROWS of them are pooled): the layer reads what uniform would, Σ_e n_e (1 − s_e)
  neurons, s_e each expert's share dropped — now whatever its scores ask.
- "uniform": τ_e per expert, the `sparsity` quantile of its own rows' scores: s_e = s for every expert.
Measured on SmolLM2-135M's layers split into 8 experts of 192 neurons (sorted by activity), a random router, top-2
of softmax weights, the relative error of the layer's output on held-out rows at 50% of the routed experts' neurons
dropped (benchmarks/moe_cut.py, BENCHMARKS.md session 39): uniform 0.065–0.099, one τ without the routing weight
0.029–0.087, shared (with it) 0.019–0.058 with a flat router and 0.006–0.014 with a peaked one (session 38's
knapsack over per-expert levels, which this replaced, measured the same way before its removal: 0.040–0.088).
An expert the calibration routes too few tokens to for its quantile (`input_thresholds.enough_rows` at s) keeps
t = 0 (its own FATReLU threshold where it has one): every neuron the gate does not zero, lossless; the report's row
says why; it is outside its layer's pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..ir import Graph, Node
from ..ir.activations import apply
from .base import note, record
from .block_weights import BlockWeights
from .calibrate import RoutedRows, block_weights
from .input_thresholds import CalibrationError, enough_rows
from .sparsity_methods import effective_sparsity

ROUTED_METHOD = "weighted-cats"   # what the report names a routed expert's method (module docstring)
EXPERT_ALLOCATIONS = ("shared", "uniform")
SHARED_ROWS = 512   # rows per expert pooled into its layer's quantile (evenly spaced over its rows)
NEVER_KEPT = np.finfo(np.float32).max   # the threshold of a neuron of c_i = 0: no gate value passes it
TOO_FEW_REASON = ("a routed expert the calibration routed {tokens} tokens to, too few for sparsity {sparsity:g}: "
                  "threshold 0 (lossless); give more calibration text")


@dataclass(frozen=True)
class ExpertThresholds:
    """What calibration chose for a routed expert (`sparse_gated_mlp{mode=neuron-threshold}`)."""
    thresholds: np.ndarray   # [n] float32: a token keeps neuron i where |act_gate(g_i)|·|r| > thresholds[i]
    sparsity: float          # the share of the calibration rows' neuron values dropped (NaN: nothing calibrated)
    effective: float         # the share of the expert's weight bytes not read at that sparsity
    tokens: int              # calibration tokens routed to it


class ExpertScores(NamedTuple):
    """One expert's weighted scores on its calibration rows (module docstring)."""
    weights: np.ndarray   # [n] c_i
    scores: np.ndarray    # [rows, n] |act_gate(g_i)|·c_i·|r|


def routed_reason(asked: str) -> str:
    """Why a routed expert takes ROUTED_METHOD where `asked` was named."""
    return (f"{ROUTED_METHOD}: a routed expert, whose kernel skips neurons by a threshold per neuron, not "
            f"{asked}'s criterion")


def calibrate_routed_experts(graph: Graph, blocks: list[Node], rows: list[np.ndarray], routed: list[RoutedRows],
                             layers: list[int], sparsity: float, allocation: str = "shared",
                             progress: bool = False) -> list[ExpertThresholds]:
    """Each routed expert's ExpertThresholds (module docstring) from its rows (`collect_inputs` with the expert's
    routing weight, `route_moe.routed_experts`: the tokens routed to it only), their RoutedRows and each expert's
    MoE layer number (whose experts share one cut)."""
    from tqdm.auto import tqdm

    weights = [block_weights(b, graph.weights, "cats") for b in blocks]
    enough = [enough_rows(r, sparsity) for r in rows]   # the others keep t = 0, outside their layer's cut
    plans: dict[int, ExpertThresholds] = {}
    bar = tqdm(total=sum(enough), desc="calibrate experts", unit="expert", disable=not progress or None)
    for layer in sorted({layers[i] for i in range(len(blocks)) if enough[i]}):   # one layer's scores held at a time
        own = [i for i in range(len(blocks)) if layers[i] == layer and enough[i]]
        scored = {i: expert_scores(weights[i], np.asarray(rows[i], np.float32), routed[i].weights) for i in own}
        bar.update(len(own))
        if allocation == "shared":
            cut = shared_cut([scored[i].scores for i in own], [routed[i].tokens for i in own], sparsity)
            cuts = dict.fromkeys(own, cut)
            record("shared-cut-layers")
        else:
            cuts = {i: float(np.quantile(scored[i].scores, sparsity)) for i in own}
        plans.update((i, _plan(blocks[i], weights[i], len(rows[i]), scored[i], cuts[i], sparsity)) for i in own)
    bar.close()
    return [plans[i] if i in plans else _plan(block, bw, len(r), None, None, sparsity)
            for i, (block, bw, r) in enumerate(zip(blocks, weights, rows))]


def _plan(block: Node, bw: BlockWeights, tokens: int, scored: ExpertScores | None, cut: float | None,
          sparsity: float) -> ExpertThresholds:
    """One expert's thresholds at its cut (t_i = cut / c_i), its own FATReLU t as their floor."""
    own = block.attrs.get("threshold", 0.0) if block.attrs["gate_act"] == "fatrelu" else 0.0
    n = len(bw.w_gate)
    if scored is None:
        record("routed-expert-too-few-tokens")
        note({"kind": "kept-threshold", "location": block.loc, "mode": "threshold",
              "reason": TOO_FEW_REASON.format(tokens=tokens, sparsity=sparsity)})
        return ExpertThresholds(np.full(n, own, np.float32), float("nan"), float("nan"), tokens)
    with np.errstate(divide="ignore"):
        per_neuron = np.where(scored.weights > 0, cut / scored.weights, NEVER_KEPT)
    dropped = float(np.mean(scored.scores <= cut))
    return ExpertThresholds(np.maximum(per_neuron, own).astype(np.float32), dropped,
                            effective_sparsity("threshold", "gate", dropped, bw.byte_shares(), bw.reads_up), tokens)


def shared_cut(scores: list[np.ndarray], tokens: list[int], sparsity: float) -> float:
    """τ: the `sparsity` quantile of the experts' scores pooled, each expert's rows weighing tokens / rows (so each
    counts as the tokens routed to it), at most SHARED_ROWS rows of each."""
    values, weights = [], []
    for s, n in zip(scores, tokens):
        s = s[np.linspace(0, len(s) - 1, min(len(s), SHARED_ROWS)).astype(int)] if len(s) > SHARED_ROWS else s
        values.append(s.ravel())
        weights.append(np.full(s.size, max(n, 1) / len(s)))
    values, weights = np.concatenate(values), np.concatenate(weights)
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    k = int(np.searchsorted(cumulative, sparsity * cumulative[-1]))
    return float(values[order[min(k, len(order) - 1)]])


def neuron_weights(bw: BlockWeights, u: np.ndarray) -> np.ndarray:
    """c_i = ‖W_down[:, i]‖ · mean |u_i| over the rows (`u`: act_up of the up projection, [rows, n])."""
    return (np.linalg.norm(bw.w_down, axis=0) * np.abs(u).mean(0)).astype(np.float64)


def expert_scores(bw: BlockWeights, rows: np.ndarray, routing: np.ndarray) -> ExpertScores:
    """One expert's c_i and scores |act_gate(g_i)|·c_i·|r| over its rows (`routing`: each row's r)."""
    a = apply(bw.gate_act, rows @ bw.w_gate.T)
    c = neuron_weights(bw, apply(bw.up_act, rows @ bw.w_up.T))
    score = np.abs(a) * c * np.abs(np.asarray(routing, np.float64))[:, None]
    if not np.isfinite(score).all():
        raise CalibrationError("activations overflow (NaN/inf) in a routed expert's calibration; the model's weights "
                               "or inputs are out of float32 range: check the model, or calibrate on in-range text")
    return ExpertScores(c, score)
