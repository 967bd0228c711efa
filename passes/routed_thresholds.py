"""Threshold mode's routed MoE experts: each neuron's two thresholds (on its gate, on h), calibrated on the tokens
routed to its expert, one pair of cuts on the layer's output scale shared by its experts.

A routed expert (one route-moe will run on its tokens only, `route_moe.routed_experts`) takes threshold mode only as
the routed kernel does (ir/moe.py's `ROUTED_MODES`): a token keeps neuron i of expert e where |act_gate(g_i)|·|r_e| >
t_i and then |h_i|·|r_e| > t'_i (below), r_e its routing weight to e (the CATS criterion with a threshold per neuron on
the layer's output scale, and a cut on h, `sparse_gated_mlp{mode=neuron-threshold}` until route-moe stacks it), whatever
method the other blocks take, unless asked for input sparsity (`routed_experts="input"`: routed_input.py). The t_i
come from CATS's score
weighted per neuron (ROUTED_METHOD, "weighted CATS"): |act_gate(g_i)|·c_i·|r_e| > τ with c_i = ‖W_down[:, i]‖ · mean
|act_up(u_i)| — how far neuron i moves the expert's output per unit of its gate value, on the calibration tokens the
router sends to expert e (the rows whose routing weight is not 0, `collect_inputs(routing=)`, in the threshold pass's
one pass over the samples; not every token, whose values the expert never sees in use) — so t_i = τ / c_i. Why weighted:
plain CATS drops a neuron by its gate value alone, though a neuron with a large up factor or down column moves the
output more at the same gate value. Measured as torch replacements on SmolLM2-135M at 0.5 in every MLP, 4 held-out
windows (benchmarks/neuron_weights.py, BENCHMARKS.md session 38): +30.82% perplexity plain, +19.83% weighted (the RMS of
u in place of its mean: +19.70%, the same; the down column alone: +47.44%, worse). A neuron of c_i = 0 (its down column
zero, or its up factor zero on every calibration row) is never kept: it adds nothing.

The routing weight is in the score: an expert's output reaches the layer scaled by r_e, so neuron i's contribution
to the layer's output is r_e·h_i·W_down[:, i], estimated before its up row is read as |act_gate(g_i)|·c_i·|r_e|.
Dropping a token's smallest such contributions, whatever expert they are in, is what least disturbs the layer's
output per neuron read (the Lagrangian of "least squared output error at a given number of reads": one cut τ on
that scale); the kernels compare |act_gate(g_i)|·|r_e| with t_i = τ / c_i (ir/moe.py). A token the router sends to
an expert with a small weight so keeps fewer of its neurons.

A second cut once u is read (the kernel has h by then): a token drops neuron i's h where |h_i|·|r_e| <= t'_i, t'_i =
τ_h / ‖W_down[:, i]‖ — the neuron's exact contribution to the layer's output, r_e·|h_i|·‖W_down[:, i]‖, where the gate
cut had only an estimate; its down row is then not read. The gate cut drops `sparsity - shift` of the scores, the cut
on h `sparsity + shift` of the h values (those the gate cut dropped counted in it), so as many up and down rows are
read as by CATS at `sparsity` alone; the shift (SHIFTS) is the one whose dropped contributions' squared sum is least
on the calibration rows (the layer's squared output error if the down columns were orthogonal, WINA's assumption).
Measured as torch replacements on SmolLM2-135M's MLPs at 0.5 (one expert per MLP, r = 1; 4 held-out windows, the
calibration of neuron_weights.py): the gate cut alone +19.83% perplexity, shift 0.1 +9.26%, 0.2 +37.1%, the
least-error shift per layer +9.91% (0.1 in 28 of 30 layers); Gemma 3 270M +19.23% alone, shift 0.1 +12.01%.

How the cuts are chosen (`expert_allocation`):
- "shared" (the default): one pair per MoE layer, quantiles of the scores (and contributions) of all its experts'
  calibration rows, each expert's weighted by the tokens routed to it (at most SHARED_ROWS of its rows are pooled):
  the layer reads what uniform would, Σ_e n_e (1 − s_e) neurons, s_e each expert's share dropped — now whatever its
  scores ask.
- "uniform": a pair per expert, the quantiles of its own rows' scores: s_e = s for every expert.
Measured (the gate cut alone) on SmolLM2-135M's layers split into 8 experts of 192 neurons (sorted by activity), a
random router, top-2 of softmax weights, the relative error of the layer's output on held-out rows at 50% of the
routed experts' neurons dropped (benchmarks/moe_cut.py, BENCHMARKS.md session 39): uniform 0.065–0.099, one τ without
the routing weight 0.029–0.087, shared (with it) 0.019–0.058 with a flat router and 0.006–0.014 with a peaked one
(session 38's knapsack over per-expert levels, which this replaced, measured the same way before its removal:
0.040–0.088).
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

ROUTED_METHOD = "weighted-cats"   # what the report names a routed expert's method (module docstring)
EXPERT_ALLOCATIONS = ("shared", "uniform")
SHARED_ROWS = 512   # rows per expert pooled into its layer's quantile (evenly spaced over its rows)
SHIFTS = (0.0, 0.05, 0.1, 0.15, 0.2)   # the splits tried: the gate cut at sparsity - shift, the cut on h at + shift
POOL_ENTRIES = 1 << 24   # (row, neuron) values a layer's cuts are chosen on at most: 128 experts of 768 at 170 rows
NEVER_KEPT = np.finfo(np.float32).max   # the threshold of a neuron of c_i = 0: no gate value passes it
TOO_FEW_REASON = ("a routed expert the calibration routed {tokens} tokens to, too few for sparsity {sparsity:g}: "
                  "threshold 0 (lossless); give more calibration text")


@dataclass(frozen=True)
class ExpertThresholds:
    """What calibration chose for a routed expert (`sparse_gated_mlp{mode=neuron-threshold}`)."""
    thresholds: np.ndarray   # [2, n] float32: a token keeps neuron i where |act_gate(g_i)|·|r| > thresholds[0, i] and
    #                          then |h_i|·|r| > thresholds[1, i]
    sparsity: float          # the share of the calibration rows' h values dropped (NaN: nothing calibrated)
    effective: float         # the share of the expert's weight bytes not read at those cuts
    tokens: int              # calibration tokens routed to it


class ExpertScores(NamedTuple):
    """One expert's weighted scores on (at most SHARED_ROWS of) its calibration rows (module docstring)."""
    weights: np.ndarray         # [n] c_i
    down_norms: np.ndarray      # [n] ‖W_down[:, i]‖
    scores: np.ndarray          # [rows, n] |act_gate(g_i)|·c_i·|r|: the gate cut's
    contributions: np.ndarray   # [rows, n] |h_i|·‖W_down[:, i]‖·|r|: the cut on h's
    weight: float               # what one of its rows counts for in its layer's pool: tokens routed to it / rows


class Cuts(NamedTuple):
    """A layer's (or, uniform, an expert's) two cuts on the output scale and the split that chose them."""
    gate: float    # τ_g: the gate cut, at the `sparsity - shift` quantile of the scores
    h: float       # τ_h: the cut on h, at the `sparsity + shift` quantile of the contributions the gate cut kept
    shift: float


def routed_reason(asked: str) -> str:
    """Why a routed expert takes ROUTED_METHOD where `asked` was named."""
    return (f"{ROUTED_METHOD}: a routed expert, whose kernel skips neurons by a threshold per neuron, not "
            f"{asked}'s criterion")


def calibrate_routed_experts(graph: Graph, blocks: list[Node], rows: list[np.ndarray], routed: list[RoutedRows],
                             layers: list[int], sparsity: float, allocation: str = "shared",
                             progress: bool = False) -> list[ExpertThresholds]:
    """Each routed expert's ExpertThresholds (module docstring) from its rows (`collect_inputs` with the expert's
    routing weight, `route_moe.routed_experts`: the tokens routed to it only), their RoutedRows and each expert's
    MoE layer number (whose experts share one pair of cuts)."""
    from tqdm.auto import tqdm

    weights = [block_weights(b, graph.weights, "cats") for b in blocks]
    enough = [enough_rows(r, sparsity) for r in rows]   # the others keep t = 0, outside their layer's cut
    plans: dict[int, ExpertThresholds] = {}
    bar = tqdm(total=sum(enough), desc="calibrate experts", unit="expert", disable=not progress or None)
    for layer in sorted({layers[i] for i in range(len(blocks)) if enough[i]}):   # one layer's scores held at a time
        own = [i for i in range(len(blocks)) if layers[i] == layer and enough[i]]
        scored = {i: expert_scores(weights[i], np.asarray(rows[i], np.float32), routed[i].weights, routed[i].tokens)
                  for i in own}
        bar.update(len(own))
        if allocation == "shared":
            cuts = dict.fromkeys(own, least_error_cuts([scored[i] for i in own], sparsity))
            record("shared-cut-layers")
        else:
            cuts = {i: least_error_cuts([scored[i]], sparsity) for i in own}
        plans.update((i, _plan(blocks[i], weights[i], len(rows[i]), scored[i], cuts[i], sparsity)) for i in own)
    bar.close()
    return [plans[i] if i in plans else _plan(block, bw, len(r), None, None, sparsity)
            for i, (block, bw, r) in enumerate(zip(blocks, weights, rows))]


def _plan(block: Node, bw: BlockWeights, tokens: int, scored: ExpertScores | None, cuts: Cuts | None,
          sparsity: float) -> ExpertThresholds:
    """One expert's thresholds at its cuts (t_i = τ_g / c_i and τ_h / ‖W_down[:, i]‖), its own FATReLU t the gate
    cut's floor."""
    own = block.attrs.get("threshold", 0.0) if block.attrs["gate_act"] == "fatrelu" else 0.0
    n = len(bw.w_gate)
    if scored is None:
        record("routed-expert-too-few-tokens")
        note({"kind": "kept-threshold", "location": block.loc, "mode": "threshold",
              "reason": TOO_FEW_REASON.format(tokens=tokens, sparsity=sparsity)})
        return ExpertThresholds(np.stack([np.full(n, own, np.float32), np.zeros(n, np.float32)]), float("nan"),
                                float("nan"), tokens)
    with np.errstate(divide="ignore", invalid="ignore"):
        gate = np.where(scored.weights > 0, cuts.gate / scored.weights, NEVER_KEPT)
        h = np.where(scored.down_norms > 0, cuts.h / scored.down_norms, NEVER_KEPT)
    gate_dropped, dropped = _dropped(scored, cuts)
    share_x, share_h = bw.byte_shares()
    effective = float(gate_dropped.mean()) * (share_x / 2 if bw.reads_up else 0.0) + float(dropped.mean()) * share_h
    return ExpertThresholds(np.stack([np.maximum(gate, own), h]).astype(np.float32), float(dropped.mean()), effective,
                            tokens)


def _dropped(scored: ExpertScores, cuts: Cuts) -> tuple[np.ndarray, np.ndarray]:
    """(dropped by the gate cut, dropped by either) over the expert's scored rows [rows, n]."""
    gate = scored.scores <= cuts.gate
    return gate, gate | (scored.contributions <= cuts.h)


def least_error_cuts(experts: list[ExpertScores], sparsity: float) -> Cuts:
    """The pair of cuts that drops, of the experts' rows pooled (each row weighing its expert's `weight`), the
    `sparsity - shift` share at the gate and the `sparsity + shift` share of h (so the up and down rows not read
    are as many as CATS's at `sparsity`), for the shift in SHIFTS whose dropped contributions' squared sum is least:
    the layer's squared output error where the down columns are orthogonal (WINA's assumption). The pool is sorted
    once by score and once by contribution, each shift then costs passes over it (a MoE layer pools up to
    POOL_ENTRIES values)."""
    scores, contributions, weight = _pool(experts)
    by_score, by_contribution = np.argsort(scores), np.argsort(contributions)
    cumulative = np.cumsum(weight[by_score])
    total = cumulative[-1]
    squared = weight * np.square(contributions, dtype=np.float64)
    best = None
    for shift in SHIFTS:
        if shift and not (0.0 <= sparsity - shift and sparsity + shift <= 1.0):
            continue
        gate = float(scores[by_score[_level(cumulative, (sparsity - shift) * total)]])
        kept = scores > gate
        h = 0.0
        if shift:   # the h quantile with the gate's drops counted as 0: past them, a rank among the kept
            dropped_weight, target = float(weight[~kept].sum()), (sparsity + shift) * total
            if dropped_weight < target:
                kept_weight = np.where(kept[by_contribution], weight[by_contribution], 0.0)
                h = float(contributions[by_contribution[_level(dropped_weight + np.cumsum(kept_weight), target)]])
        error = float(squared.sum() - squared[kept & (contributions > h)].sum())
        if best is None or error < best[0]:
            best = (error, Cuts(gate, h, shift))
    return best[1]


def _pool(experts: list[ExpertScores]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, contributions, weight per entry) of the experts' rows flattened, at most POOL_ENTRIES entries: rows
    evenly spaced per expert, each standing for the rows left out too."""
    rows = max(1, POOL_ENTRIES // sum(e.scores.shape[1] for e in experts))
    picks = [np.linspace(0, len(e.scores) - 1, min(len(e.scores), rows)).astype(int) for e in experts]
    return (np.concatenate([e.scores[p].ravel() for e, p in zip(experts, picks)]),
            np.concatenate([e.contributions[p].ravel() for e, p in zip(experts, picks)]),
            np.concatenate([np.full(len(p) * e.scores.shape[1], e.weight * len(e.scores) / len(p))
                            for e, p in zip(experts, picks)]))


def _level(cumulative: np.ndarray, target: float) -> int:
    """The first position where the cumulative weight reaches `target` (the last one at most)."""
    return min(int(np.searchsorted(cumulative, target)), len(cumulative) - 1)


def pooled_quantile(values: list[np.ndarray], weights: list[float], q: float) -> float:
    """The q quantile of the arrays pooled, each entry of values[k] weighing weights[k]."""
    flat = np.concatenate([v.ravel() for v in values])
    weight = np.concatenate([np.full(v.size, w) for v, w in zip(values, weights)])
    order = np.argsort(flat, kind="stable")
    cumulative = np.cumsum(weight[order])
    return float(flat[order[_level(cumulative, q * cumulative[-1])]])


def neuron_weights(bw: BlockWeights, u: np.ndarray) -> np.ndarray:
    """c_i = ‖W_down[:, i]‖ · mean |u_i| over the rows (`u`: act_up of the up projection, [rows, n])."""
    return (np.linalg.norm(bw.w_down, axis=0) * np.abs(u).mean(0)).astype(np.float64)


def expert_scores(bw: BlockWeights, rows: np.ndarray, routing: np.ndarray, tokens: int | None = None) -> ExpertScores:
    """One expert's ExpertScores from its rows and their routing weights (`tokens`: how many tokens the rows stand
    for, default one each): c_i from all the rows, the scores on at most SHARED_ROWS of them (evenly spaced)."""
    a = apply(bw.gate_act, rows @ bw.w_gate.T)
    u = apply(bw.up_act, rows @ bw.w_up.T)
    c, norms = neuron_weights(bw, u), np.linalg.norm(bw.w_down, axis=0).astype(np.float64)
    pick = np.linspace(0, len(rows) - 1, min(len(rows), SHARED_ROWS)).astype(int)
    r = np.abs(np.asarray(routing, np.float64))[pick, None]
    a, u = a[pick].astype(np.float64), u[pick].astype(np.float64)
    scores, contributions = (np.abs(a) * c * r).astype(np.float32), (np.abs(a * u) * norms * r).astype(np.float32)
    if not (np.isfinite(scores).all() and np.isfinite(contributions).all()):
        raise CalibrationError("activations overflow (NaN/inf) in a routed expert's calibration; the model's weights "
                               "or inputs are out of float32 range: check the model, or calibrate on in-range text")
    return ExpertScores(c, norms, scores, contributions, max(len(rows) if tokens is None else tokens, 1) / len(pick))
