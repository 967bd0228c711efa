"""Budget allocation across blocks by the loss's sensitivity to each block's output (diagonal Fisher).

The greedy methods spend the same budget in every block, split between x and h at the least *relative* output
error (greedy_allocation.least_error): relative errors of different blocks are not comparable, so they cannot be
pooled (session 4: a pooled allocation of relative errors cost +46% perplexity on SmolLM2-135M). Weighting each
block's squared output error per token and channel by g², g = ∂loss/∂(block output) on the calibration text (the
diagonal of the empirical Fisher), puts every block's error in the same unit, an estimate of the loss increase:

    error_b(s) = Σ_tokens Σ_channels g² · (y_sparse − y_dense)²

Then the blocks' budgets may differ: a multiple-choice knapsack over budgets s ± SPAN in steps of STEP, solved
exactly by HiGHS through `scipy.optimize.milp` (as passes/hot_cold_solver.py does), keeps the mean at s
(equal-size blocks: the model skips s of its MLP bytes) at the least summed error.
The curves are greedy_allocation.error_curves with weights g². g needs a
backward pass of the model on the calibration text, which the numpy reference interpreter does not do: the
sensitivities come from the torch model (passes/loss_sensitivity.py; compile_decoder's default for threshold mode,
benchmarks/threshold_frontier's too); without a torch model (ONNX, a graph) every block keeps the same budget.

Tried and removed (BENCHMARKS.md, session 15): rescaling each block's curve by its loss increase measured with its
plan alone on a few calibration windows (`measured_budgets`): +7.49% on SmolLM2-135M and +14.59% on Gemma 3 270M
at 0.5 against the Fisher pooling's +4.72% / +10.74%; a block's cost alone on a few windows does not predict its
cost on other text. What measures the whole plan's loss is quality_guard.py (opt-in, `max_loss_increase=`; it
bounds the loss on text like its held-out windows only).
"""

from __future__ import annotations

import numpy as np

# a block's budget stays within s ± SPAN, in steps of STEP. The Fisher-weighted errors are additive only near the
# dense model: at ±0.2 Gemma 3 270M's last blocks went to 0.7 and the 18 sparsified blocks' errors compounded
# (+8.74% perplexity at 0.5, against +5.80% for the same budget everywhere); at ±0.05: +4.40% (BENCHMARKS.md,
# session 11)
SPAN = 0.05
STEP = 0.025


def pooled_budgets(options: list, budget: float, span: float = SPAN, step: float = STEP) -> list[float]:
    """Per block the budget (s + k·step, |k·step| ≤ span) minimising the summed error, the budgets' mean exactly
    `budget`. `options[b]`: a function budget -> least error of block b there (inf: out of reach)."""
    if not options:
        return []
    k = int(round(span / step))
    offsets = np.arange(-k, k + 1)
    errors = np.array([[error_at(budget + j * step) if budget + j * step > 0 else np.inf for j in offsets]
                       for error_at in options], np.float64)
    chosen = choose_one_each(errors, np.broadcast_to(offsets, errors.shape), 0, 0)   # offsets summing to 0
    if chosen is None:   # no choice keeps the mean: every block at the budget
        return [budget] * len(options)
    return [budget + int(offsets[j]) * step for j in chosen]


def choose_one_each(costs: np.ndarray, amounts: np.ndarray, low: float, high: float) -> np.ndarray | None:
    """Per row of `costs` ([items, options]; inf: not an option) the option minimising the summed cost such that
    low <= Σ amounts[item, option chosen] <= high: a multiple-choice knapsack, solved exactly by HiGHS
    (`scipy.optimize.milp`); None where no choice fits."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    reachable = np.isfinite(costs).ravel()
    n_items, n_options = costs.shape
    # one binary per (item, option): each item picks one option
    one_each = np.kron(np.eye(n_items), np.ones(n_options))
    result = milp(np.where(reachable, costs.ravel(), 0.0), integrality=np.ones(costs.size),
                  bounds=Bounds(0, reachable.astype(float)),
                  constraints=[LinearConstraint(one_each, 1, 1),
                               LinearConstraint(np.asarray(amounts, np.float64).ravel()[None, :], low, high)])
    if result.x is None:
        return None
    return np.round(result.x).reshape(n_items, n_options).argmax(1)
