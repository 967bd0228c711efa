"""Error compensation of an input-sparse block, fitted on calibration and free at run time.

Dropping the small entries of x (or h) shrinks the block's matmuls' outputs and biases them: the dropped entries
are not zero-mean per output channel. Per output channel c a least-squares affine map of the sparse output onto
the dense one,

    y_c ≈ a_c · (W x_sparse)_c + b_c        (closed form per channel, on the calibration rows)

is folded into the weights: `a` scales W's row c (gate/up rows are neurons, down rows are hidden channels, as the
model holds them: [out, in]), `b` is a bias after the down projection (the gate/up pre-activations get `a` only:
the kernels add no bias there). Sides (`SIDES`): 'x' fits the gate and up rows against the dense pre-activations,
'h' the down rows (and bias) against the dense block output, 'both' first x, then h on the x-corrected block.
A plan whose x side is corrected gets its h thresholds re-set at the same h sparsity (the corrected h is larger).

`Compensation` is what a plan carries (InputThresholds.compensation); `compensated_weights` the block as the
kernels then read it. `fit_lowrank` is R-Sparse's alternative (not free: rank-r factors read per token): the gate/up
pre-activations' error of x's dropped part predicted by a rank-r map of that part.

Measured (BENCHMARKS.md, session 16): the fitted scales are 1.00 ± 0.03, the fits remove 1–3% of the block output
error, and every variant (x, h, h without bias, rank 32) raises perplexity on Gemma 3 270M and SmolLM2-135M at
sparsity 0.5, so no method or the compiled path uses them; the benchmarks measure them
(benchmarks/threshold_compensation.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..ir.activations import apply
from ..ir.input_sparse import keep_mask
from .block_weights import BlockWeights
from .input_thresholds import InputThresholds, channel_scores, dense_out, level_thresholds

SIDES = ("x", "h", "both")


@dataclass(frozen=True)
class Compensation:
    """Per output channel scales of the gate/up/down rows and the down projection's bias (None: not corrected)."""
    gate_scale: np.ndarray | None = None   # [d_ff]
    up_scale: np.ndarray | None = None     # [d_ff]
    down_scale: np.ndarray | None = None   # [d]
    down_bias: np.ndarray | None = None    # [d]


def affine_fit(sparse: np.ndarray, dense: np.ndarray, bias: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per column (a, b) minimizing ‖a·sparse + b − dense‖² over the rows (b = 0 without `bias`); a column the
    sparse side leaves at zero keeps a = 1."""
    z, y = sparse.astype(np.float64), dense.astype(np.float64)
    if bias:
        z_mean, y_mean = z.mean(0), y.mean(0)
        z, y = z - z_mean, y - y_mean
    zz, zy = np.square(z).sum(0), (z * y).sum(0)
    a = np.where(zz > 1e-30, zy / np.maximum(zz, 1e-30), 1.0)
    b = y_mean - a * z_mean if bias else np.zeros_like(a)
    return a.astype(np.float32), b.astype(np.float32)


def compensated_weights(block: BlockWeights, comp: Compensation | None) -> BlockWeights:
    """The block with its rows scaled as `comp` says (the bias is not a weight: the forward adds it)."""
    if comp is None:
        return block

    def scaled(w, s):
        return w if s is None else (s[:, None] * w).astype(w.dtype)
    return BlockWeights(scaled(block.w_gate, comp.gate_scale), scaled(block.w_up, comp.up_scale),
                        scaled(block.w_down, comp.down_scale), block.gate_act, block.up_act)


def _turned(block: BlockWeights, plan: InputThresholds, rows: np.ndarray):
    """(x as the plan's kernel reads it, its gate and up weights in that basis)."""
    if plan.rotation is None:
        return rows, block.w_gate, block.w_up
    turn = plan.rotation if plan.turn is None else plan.turn
    return rows @ plan.rotation.astype(np.float32), block.w_gate @ turn.astype(np.float32), \
        block.w_up @ turn.astype(np.float32)


def fit_compensation(block: BlockWeights, plan: InputThresholds, rows: np.ndarray, side: str = "both",
                     weighted: bool = True, bias: bool = True,
                     targets: np.ndarray | None = None, reset_h: bool = True) -> InputThresholds:
    """`plan` with a Compensation fitted on `rows` (calibration rows of the block's input, original basis).
    `weighted`: the plan's h scores are WINA's (re-set h thresholds the same way); `targets`: the dense block
    output the h side is fitted against (default: the dense block on `rows`; e.g. the dense *model's* block output
    when `rows` come from an already sparsified model); `reset_h`: re-set the h thresholds after an x correction
    (False: keep the plan's)."""
    if side not in SIDES:
        raise ValueError(f"compensation side must be one of {', '.join(SIDES)}, got {side!r}")
    x, w_gate, w_up = _turned(block, plan, rows)
    xs = np.where(keep_mask(x, plan.x_thr, plan.x_keep), x, 0).astype(np.float32)
    g, u = xs @ w_gate.T, xs @ w_up.T
    gate_scale = up_scale = None
    h_thr = plan.h_thr
    if side in ("x", "both"):
        gate_scale, _ = affine_fit(g, rows @ block.w_gate.T, bias=False)
        up_scale, _ = affine_fit(u, rows @ block.w_up.T, bias=False)
        g, u = g * gate_scale, u * up_scale
    a = apply(block.gate_act, g)
    h = a * apply(block.up_act, u)
    score = a if plan.criterion == "gate" else h
    if reset_h and gate_scale is not None and plan.h_sparsity > 0 and plan.h_keep == 0:
        # the same h sparsity on the corrected h
        h_thr, _ = level_thresholds(channel_scores(score, block.h_norm, weighted), block.h_norm, weighted,
                                    plan.h_sparsity, False)
    hs = np.where(keep_mask(score, h_thr, plan.h_keep), h, 0).astype(np.float32)
    down_scale = down_bias = None
    if side in ("h", "both"):
        dense = dense_out(block, rows) if targets is None else targets
        down_scale, down_bias = affine_fit(hs @ block.w_down.T, dense, bias)
        down_bias = down_bias if bias else None
    return replace(plan, h_thr=h_thr, compensation=Compensation(gate_scale, up_scale, down_scale, down_bias))


def output_error(block: BlockWeights, plan: InputThresholds, rows: np.ndarray) -> float:
    """Relative squared error of the plan's block output (its compensation applied) against the dense block."""
    comp = plan.compensation
    x, w_gate, w_up = _turned(compensated_weights(block, comp), plan, rows)
    xs = np.where(keep_mask(x, plan.x_thr, plan.x_keep), x, 0).astype(np.float32)
    a = apply(block.gate_act, xs @ w_gate.T)
    h = a * apply(block.up_act, xs @ w_up.T)
    score = a if plan.criterion == "gate" else h
    hs = np.where(keep_mask(score, plan.h_thr, plan.h_keep), h, 0).astype(np.float32)
    out = hs @ compensated_weights(block, comp).w_down.T
    if comp is not None and comp.down_bias is not None:
        out = out + comp.down_bias
    dense = dense_out(block, rows)
    return float(np.square(out - dense).sum() / max(np.square(dense).sum(), 1e-30))


def lowrank_share(block: BlockWeights, rank: int) -> float:
    """The bytes of a rank-`rank` correction of x's dropped part (R [d, r], L [r, 2·d_ff]) over the block's."""
    d_ff, d = block.w_gate.shape
    return rank * (d + 2 * d_ff) / (block.w_gate.size + block.w_up.size + block.w_down.size)


def fit_lowrank(block: BlockWeights, plan: InputThresholds, rows: np.ndarray, rank: int):
    """(R [d, r], L [r, 2·d_ff]) such that (x − x_sparse)·R·L best predicts the gate/up pre-activations' error
    [g − g_sparse, u − u_sparse] on `rows` (R-Sparse's low-rank part of the dropped inputs, fitted in their
    metric: the top-r right singular vectors of M = X_d·W'ᵀ, X_d the dropped part in the plan's basis)."""
    x, w_gate, w_up = _turned(block, plan, rows)
    dropped = np.where(keep_mask(x, plan.x_thr, plan.x_keep), 0, x).astype(np.float64)
    w = np.concatenate([w_gate, w_up]).astype(np.float64)           # [2·d_ff, d]
    cov = dropped.T @ dropped
    values, vectors = np.linalg.eigh(cov)
    root = (vectors * np.sqrt(np.maximum(values, 0))) @ vectors.T    # C^½
    lam, u = np.linalg.eigh(root @ w.T @ w @ root)
    top = np.argsort(lam)[::-1][:rank]
    v = (w @ root @ u[:, top]) / np.sqrt(np.maximum(lam[top], 1e-30))   # top right singular vectors of M
    return (w.T @ v).astype(np.float32), v.T.astype(np.float32)
