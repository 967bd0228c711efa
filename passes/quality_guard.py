"""Threshold mode's quality guard: as sparse as asked, but not worse than +X% perplexity.

The greedy methods' error curves and the Fisher pooling are proxies of the loss; on some models they miss it
(Gemma 3 270M at 0.5: +10.74% perplexity where SmolLM2-135M is +4.72%; BENCHMARKS.md, sessions 14-17). What a
user of a training-free method wants is a bound: the guard installs the calibrated plans in the torch model, measures
the mean next-token loss on calibration windows the curves and thresholds were NOT fitted on (held out), and while
exp(Δ mean loss) − 1 exceeds `max_loss_increase` it lowers the model-wide sparsity (every block's budget pooled
again at the lower sparsity) in steps of GUARD_STEP, by bisection on that grid (the loss grows with the sparsity),
so a failing ask costs about log2(asked / GUARD_STEP) + 1 probes of a few forwards each.

torch_plans.torch_loss_guard measures through the torch model; where compile() has none (ONNX, an IR graph)
there is nothing to run the loss on: no guard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .input_thresholds import CalibrationError
from .sensitivity_allocation import STEP

# exp(Δ mean next-token loss) − 1 a guard allows unless told: issue 15's "+5% perplexity" (compile() guards only
# where asked: max_loss_increase=None by default)
MAX_LOSS_INCREASE = 0.05
# the sparsities the guard tries below the asked one: asked − k·GUARD_STEP (the Fisher pooling's own step)
GUARD_STEP = STEP


class QualityGuardError(CalibrationError):
    """Even the smallest sparsity the guard tries raises the held-out loss beyond the tolerance."""


@dataclass
class LossGuard:
    """`increase(plans)`: exp(Δ mean loss) − 1 of the model with `plans` installed on held-out windows; after a
    calibration `outcome` is (asked sparsity, sparsity kept, its measured increase, probes run)."""
    increase: Callable[[list], float]
    tolerance: float = MAX_LOSS_INCREASE
    step: float = GUARD_STEP
    outcome: tuple | None = field(default=None, init=False)

    def describe(self) -> str:
        asked, kept, increase, _ = self.outcome
        if kept == asked:
            return f"sparsity {asked:g}: {increase:+.1%} held-out loss (tolerance {self.tolerance:+.0%})"
        return (f"asked {asked:g}, kept {kept:g}: {self.tolerance:+.0%} loss tolerance ({increase:+.1%} held-out); "
                f"max_loss_increase=None keeps the asked sparsity")


def guarded_plans(plans_at: Callable[[float], list], asked: float, guard: LossGuard, progress: bool = True) -> list:
    """The plans at the largest sparsity in {asked, asked − step, asked − 2·step, ...} whose held-out loss increase
    is within the guard's tolerance (`plans_at(s)`: every block's plan at model-wide sparsity s)."""
    from tqdm.auto import tqdm

    grid = [asked] + [round(asked - k * guard.step, 6) for k in range(1, int(np.ceil(asked / guard.step)))
                      if asked - k * guard.step > 1e-9]
    bar = tqdm(desc="quality guard", unit="probe", disable=not progress or None)
    measured: dict[int, tuple[list, float]] = {}

    def probe(i: int) -> bool:
        plans = plans_at(grid[i])
        measured[i] = (plans, float(guard.increase(plans)))
        bar.update(1)
        bar.set_postfix_str(f"sparsity {grid[i]:g}: {measured[i][1]:+.1%}")
        return measured[i][1] <= guard.tolerance

    try:
        if probe(0):
            best = 0
        else:   # bisection: grid[failing] fails, grid[passing] passes (or is past the grid's end)
            failing, passing = 0, len(grid)
            while passing - failing > 1:
                mid = (failing + passing) // 2
                failing, passing = (failing, mid) if probe(mid) else (mid, passing)
            if passing == len(grid):
                raise QualityGuardError(
                    f"even sparsity {grid[-1]:g} raises the held-out loss by {measured[len(grid) - 1][1]:+.1%}, over "
                    f"the {guard.tolerance:+.0%} tolerance: raise max_loss_increase, or max_loss_increase=None to "
                    f"keep sparsity {asked:g} regardless")
            best = passing
    finally:
        bar.close()
    guard.outcome = (asked, grid[best], measured[best][1], len(measured))
    return measured[best][0]

