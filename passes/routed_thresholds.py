"""Threshold mode's routed MoE experts: each expert's CATS threshold, calibrated on the tokens routed to it, the
layer's budget shared among its experts.

A routed expert (one route-moe will run on its tokens only, `route_moe.routed_experts`) takes threshold mode only as
the routed kernel does (ir/moe.py's `ROUTED_MODES`): a token keeps neuron i of expert e where |act_gate(g_i)| > t_e
(the CATS criterion, `criterion="gate"`), whatever method the other blocks take, since the routed kernel skips
neurons, not input channels. Its t_e is the s_e quantile of |act_gate(g)| over the calibration tokens the router
sends to expert e: the rows whose routing weight r_e is not 0 (`collect_inputs(routing=)`, in the threshold pass's
one pass over the samples), not every token, whose gate values the expert never sees in use.

How s_e is chosen (`expert_allocation`):
- "uniform": s_e = s, the asked sparsity, for every expert.
- "pooled" (the default): the experts of one MoE layer share its budget, as TEAL's greedy allocation shares a
  block's between its matrices. A layer's reads are Σ_e n_e (1 − s_e) expert neurons (n_e: the calibration tokens
  routed to e), so the budget is Σ_e n_e s_e >= s Σ_e n_e; each expert's cost of s_e is its share of the layer's
  output error on its calibration rows, Σ_rows r_e² ‖W_down,e (h − h_kept)‖² (one unit for the whole layer: its
  output, which the experts add into weighted by r_e; unlike different blocks' relative errors,
  greedy_allocation.py's docstring), measured at s ± EXPERT_SPAN in steps of EXPERT_STEP; the least summed error
  meeting the budget is a multiple-choice knapsack (`sensitivity_allocation.choose_one_each`, HiGHS). An expert
  whose outputs matter more to the layer, or whose gate values are less peaked, keeps more of its neurons; the
  layer reads what uniform would. Measured on SmolLM2-135M's MLPs split into 8 experts of 192 neurons each, every
  token routed to all 8 (a Mixtral equal to the dense model), sparsity 0.5, 4 held-out windows (BENCHMARKS.md,
  session 38): experts of neurons in their order +33.94% -> +30.65% perplexity; experts of neurons grouped by how
  active they are +107.62% -> +35.42%; the same expert sparsity on the held-out text (49.8%).
An expert the calibration routes too few tokens to for its quantile (`input_thresholds.enough_rows` at s) keeps
t = 0 (its own FATReLU threshold where it has one): every neuron the gate does not zero, lossless; the report's row
says why; it is outside its layer's pool.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Node
from ..ir.activations import apply
from .base import note, record
from .block_weights import BlockWeights
from .calibrate import RoutedRows, block_weights
from .greedy_allocation import MAX_LEVEL
from .input_thresholds import enough_rows
from .sensitivity_allocation import choose_one_each
from .sparsity_methods import NeuronThreshold, method, neuron_threshold

ROUTED_METHOD = "cats"   # the routed kernel's criterion: the gate's activation against t_e
EXPERT_ALLOCATIONS = ("pooled", "uniform")
# a pooled expert's sparsity stays within s ± EXPERT_SPAN (not tuned: wider than the Fisher pooling's ± 0.05 across
# blocks, whose errors compound through the layers; a layer's experts add into one output, its total stays s) ...
EXPERT_SPAN = 0.2
EXPERT_STEP = 0.05   # ... in steps of EXPERT_STEP
ERROR_TOKENS = 256   # rows per expert its error curve is measured on (as greedy_allocation's)
TOO_FEW_REASON = ("a routed expert the calibration routed {tokens} tokens to, too few for sparsity {sparsity:g}: "
                  "threshold 0 (lossless); give more calibration text")


def routed_reason(asked: str) -> str:
    """Why a routed expert takes ROUTED_METHOD where `asked` was named ("" when it is that method)."""
    if asked == ROUTED_METHOD:
        return ""
    return f"{ROUTED_METHOD}: a routed expert, whose kernel takes a threshold per expert, not {asked}'s"


def calibrate_routed_experts(graph: Graph, blocks: list[Node], rows: list[np.ndarray], routed: list[RoutedRows],
                             layers: list[int], sparsity: float, allocation: str = "pooled",
                             progress: bool = False) -> list[NeuronThreshold]:
    """Each routed expert's NeuronThreshold (module docstring) from its rows (`collect_inputs` with the expert's
    routing weight, `route_moe.routed_experts`: the tokens routed to it only), their RoutedRows and each expert's
    MoE layer number (whose experts share a pooled budget)."""
    from tqdm.auto import tqdm

    cats = method(ROUTED_METHOD)
    weights = [block_weights(b, graph.weights, ROUTED_METHOD) for b in blocks]
    enough = [enough_rows(r, sparsity) for r in rows]   # the others keep t = 0, outside their layer's pool
    levels = [sparsity] * len(blocks)
    layers_pooled = {k for k in layers if sum(enough[i] for i, j in enumerate(layers) if j == k) > 1}
    if allocation == "pooled" and layers_pooled:
        options = level_options(sparsity)
        members = [i for i, k in enumerate(layers) if k in layers_pooled and enough[i]]
        errors = {i: expert_errors(weights[i], rows[i], routed[i].weights, options)
                  for i in tqdm(members, desc="allocate experts", unit="expert", disable=not progress or None)}
        for layer in sorted(layers_pooled):
            own = [i for i in members if layers[i] == layer]
            chosen = pooled_levels(np.array([errors[i] for i in own]), [routed[i].tokens for i in own], options,
                                   sparsity)
            for i, level in zip(own, chosen):
                levels[i] = level
            record("pooled-expert-layers")
    plans = []
    for block, bw, r, level, calibrates in zip(blocks, weights, rows, levels, enough):
        own = block.attrs.get("threshold", 0.0) if block.attrs["gate_act"] == "fatrelu" else 0.0
        if not calibrates:
            record("routed-expert-too-few-tokens")
            note({"kind": "kept-threshold", "location": block.loc, "mode": "threshold",
                  "reason": TOO_FEW_REASON.format(tokens=len(r), sparsity=sparsity)})
            plans.append(NeuronThreshold(own, cats.criterion, float("nan"), float("nan"), len(r)))
            continue
        plan = neuron_threshold(bw, np.asarray(r, np.float32), cats, level) if level > 0 else None
        plans.append(NeuronThreshold(own, cats.criterion, 0.0, 0.0, len(r)) if plan is None else
                     NeuronThreshold(max(plan.threshold, own), plan.criterion, plan.sparsity, plan.effective,
                                     plan.tokens))
    return plans


def level_options(sparsity: float) -> np.ndarray:
    """The sparsities a pooled expert may take: sparsity ± EXPERT_SPAN, steps of EXPERT_STEP, in [0, MAX_LEVEL]."""
    steps = round(EXPERT_SPAN / EXPERT_STEP)
    options = np.round(sparsity + np.arange(-steps, steps + 1) * EXPERT_STEP, 4)
    return options[(options >= 0) & (options <= MAX_LEVEL + 1e-9)]


def pooled_levels(errors: np.ndarray, tokens: list[int], options: np.ndarray, sparsity: float) -> list[float]:
    """One MoE layer's experts' sparsities (of `options`) at the least summed output error (`errors`: [experts,
    options], `expert_errors`) whose mean weighted by the tokens routed to each is at least `sparsity` (module
    docstring); every expert at `sparsity` where no choice fits."""
    n = np.asarray(tokens, np.float64)
    chosen = choose_one_each(errors, n[:, None] * options[None, :], sparsity * n.sum() - 1e-6, np.inf)
    if chosen is None:
        return [sparsity] * len(errors)
    return [float(options[j]) for j in chosen]


def expert_errors(bw: BlockWeights, rows: np.ndarray, routing: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Σ_rows r² ‖W_down (h − h_kept)‖² of one expert at each level: neurons whose |act_gate(g)| is at or below the
    level's quantile over all its rows dropped; measured on its first ERROR_TOKENS rows."""
    a = apply(bw.gate_act, rows @ bw.w_gate.T)
    score = np.abs(a)
    thresholds = np.quantile(score, levels)
    a, score, r = a[:ERROR_TOKENS], score[:ERROR_TOKENS], routing[:ERROR_TOKENS, None]
    h = a * apply(bw.up_act, rows[:ERROR_TOKENS] @ bw.w_up.T)
    return np.array([float(np.square(r * (np.where(score <= t, h, 0) @ bw.w_down.T)).sum()) if lv > 0 else 0.0
                     for t, lv in zip(thresholds, levels)])
