"""TEAL's block-wise greedy allocation: each block's output error with only x or only h sparsified at each level
(its error curves, optionally weighted by the loss's sensitivity), and the x / h pair that skips a block's budget
at the least summed error. sparsity_methods.calibrate_input_blocks reads them for the `*-greedy` methods."""

from __future__ import annotations

import numpy as np

from ..ir.activations import apply
from ..ir.input_sparse import keep_mask
from .block_weights import BlockWeights
from .input_thresholds import CalibrationError, Method, channel_scores, dense_out, level_thresholds

LEVEL_STEP = 0.05            # greedy allocation step
MAX_LEVEL = 0.95             # no matrix is sparsified beyond this


def error_curves(bw: BlockWeights, rows: np.ndarray, m: Method, levels: np.ndarray,
                 weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Relative output error of one block with only x (first) or only h (second) sparsified at each level;
    with `weights` ([tokens, d_out], aligned with rows) the weighted squared error Σ weights·(y − y_dense)².

    The same errors as input_thresholds.py's `relative_error(input_thresholds(...))` level by level, computed
    with one gate/up product per x level and one for the whole h curve (h alone does not change x): the curves
    dominate calibration time."""
    dense = dense_out(bw, rows)
    scale = max(np.square(dense).sum(), 1e-30)

    def error(h: np.ndarray) -> float:
        if weights is not None:
            return float((weights * np.square(h @ bw.w_down.T - dense)).sum())
        return float(np.square(h @ bw.w_down.T - dense).sum() / scale)

    def parts(xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = apply(bw.gate_act, xs @ bw.w_gate.T)
        return a, a * apply(bw.up_act, xs @ bw.w_up.T)

    x_scores = channel_scores(rows, bw.x_norm, m.weighted)
    x_curve = []
    for lv in levels:
        thr, keep = level_thresholds(x_scores, bw.x_norm, m.weighted, lv, m.fixed_count)
        h = parts(np.where(keep_mask(rows, thr, keep), rows, 0).astype(np.float32))[1]
        x_curve.append(error(np.where(h != 0, h, 0)))
    a, h = parts(np.where(rows != 0, rows, 0).astype(np.float32))
    score = a if m.criterion == "gate" else h
    if not np.isfinite(score).all():
        raise CalibrationError("activations overflow (NaN/inf) in calibration; the model's weights or inputs are "
                               "out of float32 range: check the model, or calibrate on in-range text")
    h_scores = channel_scores(score, bw.h_norm, m.weighted)
    h_curve = []
    for lv in levels:
        thr, keep = level_thresholds(h_scores, bw.h_norm, m.weighted, lv, m.fixed_count)
        h_curve.append(error(np.where(keep_mask(score, thr, keep), h, 0).astype(np.float32)))
    return np.asarray(x_curve), np.asarray(h_curve)


def greedy_allocation(blocks: list[BlockWeights], rows: list[np.ndarray], m: Method, budget: float,
                      error_tokens: int = 256, progress: bool = True, curves=None) -> list[tuple[float, float]]:
    """TEAL's block-wise allocation: per block the (x sparsity, h sparsity) that skips `budget` of its bytes at
    the least output error.

    Each block's relative output error is measured on `error_tokens` calibration rows (dense inputs) for x alone
    and h alone at every level (steps of LEVEL_STEP), taken as additive, and the pair with the least summed error
    among those reaching the block's budget is chosen (the grid is small: exhaustive, so no greedy order). Why per
    block, as TEAL does, and not one model-wide pool: relative errors of different blocks are not comparable (a
    block whose output is small next to the residual stream tolerates more); a pooled allocation on SmolLM2-135M
    at 40% cost +46% perplexity against +17% for uniform TEAL (BENCHMARKS.md). `curves` (from a previous call,
    see sparsity_methods.allocation_curves) skips the measuring.
    """
    if budget > MAX_LEVEL:
        raise CalibrationError(f"sparsity {budget:g} is out of reach: no matrix is sparsified beyond {MAX_LEVEL:g}; "
                               f"ask for at most {MAX_LEVEL:g}")
    curves = curves or measure_curves(blocks, rows, m, error_tokens, progress)
    plan = []
    for block, curve in zip(blocks, curves):
        best = least_error(block, curve, budget)
        if best is None:
            raise CalibrationError(f"sparsity {budget:g} is out of reach for {m.name}")
        plan.append(best[0])
    return plan


def least_error(block: BlockWeights, curve: tuple[np.ndarray, np.ndarray], budget: float):
    """((x level, h level), summed error) of the pair skipping `budget` of the block's bytes at the least error
    on its curves; None when no pair reaches it. One level of the pair is on the curves' grid, the other the
    exact rest of the budget (its error interpolated on its curve), so the block skips the budget, not the next
    grid point beyond it (which cost Gemma 3 1.5 points of sparsity it did not need at 50%)."""
    cx, ch = curve
    levels = np.arange(len(cx)) * LEVEL_STEP
    share_x, share_h = block.byte_shares()
    best = None
    for grid, other, share_grid, share_other, x_first in ((cx, ch, share_x, share_h, True),
                                                          (ch, cx, share_h, share_x, False)):
        rest = np.maximum((budget - share_grid * levels) / share_other, 0.0)
        rest = np.ceil(rest * 1e4 - 1e-6) / 1e4   # 4 decimals, never below the budget
        fits = rest <= levels[-1] + 1e-9
        error = np.where(fits, grid + np.interp(rest, levels, other), np.inf)
        skipped = share_grid * levels + share_other * rest
        for i in np.nonzero(fits)[0]:
            pair = (round(float(levels[i]), 4), float(rest[i]))
            key = (float(error[i]), float(skipped[i]))
            if best is None or key < best[0]:
                best = (key, pair if x_first else pair[::-1])
    return None if best is None else (best[1], best[0][0])


def measure_curves(blocks: list[BlockWeights], rows: list[np.ndarray], m: Method, error_tokens: int = 256,
            progress: bool = True, sensitivity: list[np.ndarray] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    from tqdm.auto import tqdm

    levels = np.arange(0.0, MAX_LEVEL + 1e-9, LEVEL_STEP)
    if sensitivity is not None:
        return [error_curves(b, r[:error_tokens], m, levels, g[:error_tokens])
                for b, r, g in tqdm(list(zip(blocks, rows, sensitivity)), desc="allocate", unit="block",
                                    disable=not progress or None)]
    return [error_curves(b, r[:error_tokens], m, levels)
            for b, r in tqdm(list(zip(blocks, rows)), desc="allocate", unit="block", disable=not progress or None)]



def least_summed_error(block: BlockWeights, curve, budget: float) -> float:
    best = least_error(block, curve, budget) if budget <= MAX_LEVEL else None
    return np.inf if best is None else best[1]
