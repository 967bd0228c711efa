"""Training-free sparsity methods as data, their per-block calibration, and TEAL's greedy budget allocation.

Each method is one `Method` entry: which op mode it produces (threshold: per-neuron, input: per input channel of
every projection; see their entries in ir/sparse_variants.py), what it scores, and how the sparsity is spread:

    cats         threshold  |act(g)| <= t skips up/down rows (CATS)             bytes skipped: 2/3·s
    product      threshold  |act(g)·u| <= t skips down rows (top-k% of h)       bytes skipped: 1/3·s
    teal         input      |x_i| and |h_j| per matrix, uniform s               bytes skipped: s
    wina         input      |x_i|·‖W[:, i]‖₂ and |h_j|·‖W_down[:, j]‖₂ (WINA)  bytes skipped: s
    teal-cats    input      TEAL on x, CATS (|act(g)|) on the down input
    topk         input      WINA scores, a fixed count per token (stable latency)
    *-greedy     input      TEAL's block-wise allocation: per block the x / h sparsity pair that skips s of its
                            bytes at the least output error (error curves measured per block)
    rotated-*    input      the block input first turned (x' = x·T, W' = W·T⁻ᵀ: LaRoSa's layer-wise rotation):
                            into its principal axes on half the calibration rows, its thresholds calibrated on the
                            other half (rotation.crossfit_halves) (rotated-wina-greedy), which gathers
                            x's energy in few channels so magnitude sparsity drops less of it, or (rotated-metric-
                            wina-greedy) into axes that are uncorrelated AND whose weight columns are orthonormal
                            (rotation.BASES); T costs d² weights per token (stored as ROTATION_STORAGE says for the
                            weights' storage), which the budget pays: the x / h sparsities skip s plus T's share

`sparsity` is the method's own target (fraction of the scored entries zeroed); `effective` is the fraction of
MLP weight bytes a token does not read, which is what turns into speed. Thresholds are quantiles on the
calibration rows of each block's input (dense model, so errors do not compound while calibrating, as in TEAL).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import ActsparseError
from ..ir.activations import apply
from ..ir.input_sparse import input_sparse_parts, keep_mask
from .block_weights import BlockWeights
from .rotation import crossfit_halves, rotate_blocks
from .sensitivity_allocation import pooled_budgets


class CalibrationError(ActsparseError):
    """Calibration data is missing, malformed, too short, or produces non-finite activations."""


@dataclass(frozen=True)
class Method:
    name: str
    mode: str                    # 'threshold' | 'input'
    criterion: str               # threshold: 'gate' | 'product'; input: the down input's score 'product' | 'gate'
    weighted: bool = False       # WINA: scores times the weight column norms
    greedy: bool = False         # TEAL's greedy allocation against the model-wide budget
    fixed_count: bool = False    # top-k per token instead of thresholds
    rotate: bool = False         # turn the block input first (LaRoSa), in `basis` (rotation.BASES)
    basis: str = "pca"
    doc: str = ""


METHODS = {m.name: m for m in (
    Method("cats", "threshold", "gate", doc="CATS: |act(gate)| threshold, skips up/down rows"),
    Method("product", "threshold", "product", doc="|act(gate)·up| threshold, skips down rows"),
    Method("teal", "input", "product", doc="TEAL: |x| and |h| thresholds per matrix, skips weight columns"),
    Method("teal-greedy", "input", "product", greedy=True, doc="TEAL with its greedy per-matrix allocation"),
    Method("wina", "input", "product", weighted=True, doc="WINA: |x_i|·‖W[:, i]‖ scores"),
    Method("wina-greedy", "input", "product", weighted=True, greedy=True, doc="WINA scores, greedy allocation"),
    Method("rotated-wina-greedy", "input", "product", weighted=True, greedy=True, rotate=True,
           doc="wina-greedy on the block input rotated into its principal axes (LaRoSa-style), rotation paid"),
    Method("rotated-metric-wina-greedy", "input", "product", weighted=True, greedy=True, rotate=True, basis="metric",
           doc="rotated-wina-greedy with T in the weights' metric (uncorrelated inputs, orthonormal columns)"),
    Method("teal-cats", "input", "gate", doc="TEAL on x, CATS on the down projection's input"),
    Method("topk", "input", "product", weighted=True, fixed_count=True,
           doc="fixed count per token on x and h (WINA scores): stable latency"),
)}
# the best measured on the frontier (BENCHMARKS.md: SmolLM2-135M and Gemma 3 270M at 30-50%); it rotates only the
# blocks where that lowers the calibrated error, so it is wina-greedy wherever rotating does not pay (e.g. int4)
DEFAULT_METHOD = "rotated-wina-greedy"
LEVEL_STEP = 0.05            # greedy allocation step
MAX_LEVEL = 0.95             # no matrix is sparsified beyond this
MINORITY_TOKENS = 16         # calibration tokens needed on the smaller side of a quantile
# a rotated-* method turns a block only with at least this many calibration tokens per input channel: its basis
# comes from the rows' covariance, and with fewer rows than channels (16 windows of 16 tokens for SmolLM2's 576)
# the axes outside the rows' span hold no calibration energy, so their thresholds zero them all — 50% effective
# sparsity calibrated, 9% measured on held-out text (BENCHMARKS.md, session 12). Since the thresholds are
# calibrated on the other half of the rows (rotation.crossfit_halves) such axes no longer skew the sparsity, but a
# basis from so few rows is still noise: the count is of the rows the basis is fitted on
ROTATION_TOKENS_PER_CHANNEL = 2


def method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown sparsity method {name!r}; valid methods: {', '.join(METHODS)}") from None


@dataclass(frozen=True)
class InputThresholds:
    """What calibration chose for an input-mode block, and what it measured on the calibration rows."""
    x_thr: np.ndarray
    h_thr: np.ndarray
    x_keep: int
    h_keep: int
    criterion: str
    x_sparsity: float
    h_sparsity: float
    effective: float
    tokens: int
    rotation: np.ndarray | None = field(default=None, repr=False)   # T [d, d]: the block's input is x·T
    turn: np.ndarray | None = field(default=None, repr=False)       # T⁻ᵀ: the gate/up weights are W·turn
    rotation_share: float = 0.0    # Q's bytes over the block's weight bytes (already taken off `effective`)

    @property
    def attrs(self) -> dict:
        return {"criterion": self.criterion, "x_keep": self.x_keep, "h_keep": self.h_keep}


def check_rows(rows: np.ndarray, sparsity: float, where: str) -> None:
    """One clear error when the calibration rows cannot support the asked sparsity."""
    if not 0.0 < sparsity < 1.0:
        raise CalibrationError(f"sparsity must be between 0 and 1 (exclusive), got {sparsity}")
    side = min(sparsity, 1.0 - sparsity)
    needed = int(np.ceil(MINORITY_TOKENS / side))
    if len(rows) < needed:
        raise CalibrationError(f"calibration gave {len(rows)} tokens at {where}; sparsity {sparsity:g} needs at "
                               f"least {needed}: give more or longer calibration text")


def enough_rows(rows: np.ndarray, sparsity: float) -> bool:
    try:
        check_rows(rows, sparsity, "")
    except CalibrationError:
        return False
    return True


def crossfit_rotation(blocks: list[BlockWeights], rows: list[np.ndarray], input_dims: list[int] | None,
                      storage: str, basis: str, sensitivity: list[np.ndarray] | None = None):
    """(rotate_blocks' tuple, the turned rows' sensitivity): each block's T fitted on the first half of its rows
    and the turned rows the other half (rotation.crossfit_halves), so the curves, the rotate-or-not choice and the
    thresholds of a turned block never see the rows its basis was fitted on."""
    halves = [crossfit_halves(r) for r in rows]
    turned = rotate_blocks(blocks, [h[1] for h in halves], input_dims, storage, basis,
                           fit_rows=[h[0] for h in halves])
    if sensitivity is None:
        return turned, None
    return turned, [g[len(f):len(f) + len(h)] for g, (f, h) in zip(sensitivity, halves)]


def _scores(values: np.ndarray, norm: np.ndarray, weighted: bool) -> np.ndarray:
    return np.abs(values) * norm if weighted else np.abs(values)


def _thresholds(scores: np.ndarray, norm: np.ndarray, weighted: bool, level: float, fixed: bool):
    """(per-channel thresholds, keep count) that zero the `level` fraction of the scores."""
    width = scores.shape[-1]
    scale = (1.0 / norm) if weighted else np.ones(width, np.float32)
    if level <= 0:
        return np.zeros(width, np.float32), 0
    if fixed:
        return scale.astype(np.float32), max(1, int(round((1.0 - level) * width)))
    t = float(np.quantile(scores, level))
    return (t * scale).astype(np.float32), 0


def input_thresholds(bw: BlockWeights, rows: np.ndarray, m: Method, sx: float, sh: float) -> InputThresholds:
    """Input-mode thresholds of one block at x sparsity `sx` and down-input sparsity `sh`."""
    x_thr, x_keep = _thresholds(_scores(rows, bw.x_norm, m.weighted), bw.x_norm, m.weighted, sx, m.fixed_count)
    probe = {**bw.attrs, "criterion": m.criterion, "x_keep": x_keep, "h_keep": 0}
    keep_x, _, h = input_sparse_parts(rows, bw.w_gate.T, bw.w_up.T, x_thr, np.zeros(bw.w_down.shape[1], np.float32),
                                      probe)
    xs = np.where(keep_x, rows, 0)
    score = apply(bw.gate_act, xs @ bw.w_gate.T) if m.criterion == "gate" else h
    if not np.isfinite(score).all():
        raise CalibrationError("activations overflow (NaN/inf) in calibration; the model's weights or inputs are "
                               "out of float32 range: check the model, or calibrate on in-range text")
    h_thr, h_keep = _thresholds(_scores(score, bw.h_norm, m.weighted), bw.h_norm, m.weighted, sh, m.fixed_count)
    attrs = {**bw.attrs, "criterion": m.criterion, "x_keep": x_keep, "h_keep": h_keep}
    keep_x, keep_h, _ = input_sparse_parts(rows, bw.w_gate.T, bw.w_up.T, x_thr, h_thr, attrs)
    px, ph = float(1 - keep_x.mean()), float(1 - keep_h.mean())
    share_x, share_h = bw.byte_shares()
    return InputThresholds(x_thr, h_thr, x_keep, h_keep, m.criterion, px, ph, share_x * px + share_h * ph, len(rows))


def _dense_out(bw: BlockWeights, rows: np.ndarray) -> np.ndarray:
    h = apply(bw.gate_act, rows @ bw.w_gate.T) * apply(bw.up_act, rows @ bw.w_up.T)
    return h @ bw.w_down.T


def _error(bw: BlockWeights, rows: np.ndarray, dense: np.ndarray, th: InputThresholds) -> float:
    attrs = {**bw.attrs, **th.attrs}
    _, _, h = input_sparse_parts(rows, bw.w_gate.T, bw.w_up.T, th.x_thr, th.h_thr, attrs)
    return float(np.square(h @ bw.w_down.T - dense).sum() / max(np.square(dense).sum(), 1e-30))


def error_curves(bw: BlockWeights, rows: np.ndarray, m: Method, levels: np.ndarray,
                 weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Relative output error of one block with only x (first) or only h (second) sparsified at each level;
    with `weights` ([tokens, d_out], aligned with rows) the weighted squared error Σ weights·(y − y_dense)².

    The same errors as `_error(input_thresholds(...))` level by level, computed with one gate/up product per x
    level and one for the whole h curve (h alone does not change x): the curves dominate calibration time."""
    dense = _dense_out(bw, rows)
    scale = max(np.square(dense).sum(), 1e-30)

    def error(h: np.ndarray) -> float:
        if weights is not None:
            return float((weights * np.square(h @ bw.w_down.T - dense)).sum())
        return float(np.square(h @ bw.w_down.T - dense).sum() / scale)

    def parts(xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = apply(bw.gate_act, xs @ bw.w_gate.T)
        return a, a * apply(bw.up_act, xs @ bw.w_up.T)

    x_scores = _scores(rows, bw.x_norm, m.weighted)
    x_curve = []
    for lv in levels:
        thr, keep = _thresholds(x_scores, bw.x_norm, m.weighted, lv, m.fixed_count)
        h = parts(np.where(keep_mask(rows, thr, keep), rows, 0).astype(np.float32))[1]
        x_curve.append(error(np.where(h != 0, h, 0)))
    a, h = parts(np.where(rows != 0, rows, 0).astype(np.float32))
    score = a if m.criterion == "gate" else h
    if not np.isfinite(score).all():
        raise CalibrationError("activations overflow (NaN/inf) in calibration; the model's weights or inputs are "
                               "out of float32 range: check the model, or calibrate on in-range text")
    h_scores = _scores(score, bw.h_norm, m.weighted)
    h_curve = []
    for lv in levels:
        thr, keep = _thresholds(h_scores, bw.h_norm, m.weighted, lv, m.fixed_count)
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
    see `allocation_curves`) skips the measuring.
    """
    if budget > MAX_LEVEL:
        raise CalibrationError(f"sparsity {budget:g} is out of reach: no matrix is sparsified beyond {MAX_LEVEL:g}; "
                               f"ask for at most {MAX_LEVEL:g}")
    curves = curves or _curves(blocks, rows, m, error_tokens, progress)
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


def allocation_curves(blocks: list[BlockWeights], rows: list[np.ndarray], m: Method, error_tokens: int = 256,
                      progress: bool = True, input_dims: list[int] | None = None,
                      sensitivity: list[np.ndarray] | None = None) -> list[tuple]:
    """Per block, the error curves the greedy allocation reads (levels 0, LEVEL_STEP, ..., MAX_LEVEL); for a
    rotated-* method the pair (curves of the rotated blocks, curves of the blocks as they are), as its
    calibration reads them; `sensitivity`: see calibrate_input_blocks."""
    plain = _curves(blocks, rows, m, error_tokens, progress, sensitivity)
    if not m.rotate:
        return plain
    (turned, turned_rows, *_), turned_sensitivity = crossfit_rotation(blocks, rows, input_dims, "fp32", m.basis,
                                                                       sensitivity)
    return _curves(turned, turned_rows, m, error_tokens, progress, turned_sensitivity), plain


def _curves(blocks: list[BlockWeights], rows: list[np.ndarray], m: Method, error_tokens: int = 256,
            progress: bool = True, sensitivity: list[np.ndarray] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    from tqdm.auto import tqdm

    levels = np.arange(0.0, MAX_LEVEL + 1e-9, LEVEL_STEP)
    if sensitivity is not None:
        return [error_curves(b, r[:error_tokens], m, levels, g[:error_tokens])
                for b, r, g in tqdm(list(zip(blocks, rows, sensitivity)), desc="allocate", unit="block",
                                    disable=not progress or None)]
    return [error_curves(b, r[:error_tokens], m, levels)
            for b, r in tqdm(list(zip(blocks, rows)), desc="allocate", unit="block", disable=not progress or None)]


def calibrate_input_blocks(blocks: list[BlockWeights], rows: list[np.ndarray], name: str, sparsity: float,
                           progress: bool = True, where: list[str] | None = None, curves=None,
                           input_dims: list[int] | None = None, storage: str = "fp32",
                           sensitivity: list[np.ndarray] | None = None) -> list[InputThresholds]:
    """Input-mode thresholds for every block: uniform sparsity, or the greedy allocation for `*-greedy`;
    `rotated-*` turns a block into its method's basis (rotation.BASES; `input_dims`: the block's own input columns,
    before a folded bias column) and asks it to skip `sparsity` plus its rotation's share — where that fits
    (≤ MAX_LEVEL) and, for greedy methods, where its calibrated error at that budget is below the unrotated
    block's at `sparsity`; other blocks stay as they are (no rotation, no share). `sensitivity` (greedy methods;
    per block [tokens, d_out] weights of the squared output error, aligned with the rows, e.g. g² of the loss):
    errors in the loss's unit, so the budget is pooled across blocks (sensitivity_allocation.py); `curves` are
    then those of `allocation_curves(..., sensitivity=)`."""
    m = method(name)
    if m.mode != "input":
        raise ValueError(f"method {name!r} is not an input-sparsity method")
    if sensitivity is not None and not m.greedy:
        raise ValueError(f"sensitivity pools a greedy allocation; method {name!r} is not greedy")
    for i, r in enumerate(rows):
        check_rows(r, sparsity, where[i] if where else f"block {i}")
    blocks, rows = list(blocks), list(rows)
    rotations, shares, turns = [None] * len(blocks), [0.0] * len(blocks), [None] * len(blocks)
    targets = [sparsity] * len(blocks)
    if m.greedy:
        if m.rotate:
            turned_curves, curves = curves or (None, None)
        curves = list(curves or _curves(blocks, rows, m, progress=progress, sensitivity=sensitivity))
    if m.rotate:
        dims = input_dims or [r.shape[1] for r in rows]
        (turned, turned_rows, qs, q_shares, q_turns), turned_sensitivity = crossfit_rotation(
            blocks, rows, input_dims, storage, m.basis, sensitivity)
        # enough rows to fit the basis on (ROTATION_TOKENS_PER_CHANNEL) and to calibrate on the other half
        may_rotate = [len(r) - len(t) >= ROTATION_TOKENS_PER_CHANNEL * k and enough_rows(t, sparsity)
                      for r, t, k in zip(rows, turned_rows, dims)]
        if m.greedy:
            turned_curves = turned_curves or _curves(turned, turned_rows, m, progress=progress,
                                                     sensitivity=turned_sensitivity)
    if sensitivity is not None:
        def least(i: int, budget: float) -> float:
            errors = [_least(blocks[i], curves[i], budget)]
            if m.rotate and budget + q_shares[i] <= MAX_LEVEL and may_rotate[i]:
                errors.append(_least(turned[i], turned_curves[i], budget + q_shares[i]))
            return min(errors)
        targets = pooled_budgets([functools.partial(least, i) for i in range(len(blocks))], sparsity)
    if m.rotate:
        for i, share in enumerate(q_shares):
            if targets[i] + share > MAX_LEVEL or not may_rotate[i]:
                continue
            if m.greedy:
                mine, theirs = (least_error(turned[i], turned_curves[i], targets[i] + share),
                                least_error(blocks[i], curves[i], targets[i]))
                if mine is None or (theirs is not None and theirs[1] <= mine[1]):
                    continue
                curves[i] = turned_curves[i]
            blocks[i], rows[i], rotations[i], shares[i], turns[i] = turned[i], turned_rows[i], qs[i], share, q_turns[i]
    budgets = [target + share for target, share in zip(targets, shares)]
    if m.greedy:
        levels = [greedy_allocation([b], [r], m, budget, curves=[c])[0]
                  for b, r, c, budget in zip(blocks, rows, curves, budgets)]
    else:
        levels = [(budget, budget) for budget in budgets]
    plans = [input_thresholds(b, r, m, *lv) for b, r, lv in zip(blocks, rows, levels)]
    return [replace(p, rotation=q, turn=turn, rotation_share=share, effective=p.effective - share)
            for p, q, share, turn in zip(plans, rotations, shares, turns)]


def measured_effective(block: BlockWeights, plan: InputThresholds, rows: np.ndarray) -> float:
    """The effective sparsity an input-mode plan gives on `rows` (e.g. held-out text), net of its rotation's bytes,
    as the report measures it (ir/input_sparse.input_measure)."""
    x, w_gate, w_up = rows, block.w_gate, block.w_up
    if plan.rotation is not None:
        x, w_gate, w_up = rows @ plan.rotation, w_gate @ plan.turn, w_up @ plan.turn
    attrs = {**block.attrs, **plan.attrs}
    keep_x, keep_h, _ = input_sparse_parts(x.astype(np.float32), w_gate.T, w_up.T, plan.x_thr, plan.h_thr, attrs)
    share_x, share_h = block.byte_shares()
    return share_x * float(1 - keep_x.mean()) + share_h * float(1 - keep_h.mean()) - plan.rotation_share


def _least(block: BlockWeights, curve, budget: float) -> float:
    best = least_error(block, curve, budget) if budget <= MAX_LEVEL else None
    return np.inf if best is None else best[1]


def effective_sparsity(mode: str, criterion: str, sparsity: float, shares: tuple[float, float]) -> float:
    """Fraction of weight bytes not read per token for a threshold-mode block at neuron sparsity `sparsity`."""
    share_x, share_h = shares
    if mode != "threshold":
        raise ValueError(mode)
    # 'gate' reads every gate row and the kept up/down rows; 'product' needs every gate and up row
    skipped = share_x / 2 + share_h if criterion == "gate" else share_h
    return sparsity * skipped


@dataclass(frozen=True)
class NeuronThreshold:
    """What calibration chose for a threshold-mode block (one threshold on |act(g)| or |h|)."""
    threshold: float
    criterion: str
    sparsity: float
    effective: float
    tokens: int

    @property
    def attrs(self) -> dict:
        return {"mode": "threshold", "threshold": self.threshold, "criterion": self.criterion}


def neuron_threshold(bw: BlockWeights, rows: np.ndarray, m: Method, sparsity: float) -> NeuronThreshold:
    """Threshold-mode calibration of one block: the `sparsity` quantile of |act(g)| (gate) or |h| (product)."""
    a = apply(bw.gate_act, rows @ bw.w_gate.T)
    score = np.abs(a if m.criterion == "gate" else a * apply(bw.up_act, rows @ bw.w_up.T))
    if not np.isfinite(score).all():
        raise CalibrationError("activations overflow (NaN/inf) in calibration; the model's weights or inputs are "
                               "out of float32 range: check the model, or calibrate on in-range text")
    t = float(np.quantile(score, sparsity))
    measured = float(np.mean(score <= t))
    return NeuronThreshold(t, m.criterion, measured,
                           effective_sparsity("threshold", m.criterion, measured, bw.byte_shares()), len(rows))


def calibrate_blocks(blocks: list[BlockWeights], rows: list[np.ndarray], name: str, sparsity: float,
                     progress: bool = True, where: list[str] | None = None, curves=None,
                     input_dims: list[int] | None = None, storage: str = "fp32",
                     sensitivity: list[np.ndarray] | None = None):
    """Every block's calibration for method `name` at `sparsity` (NeuronThreshold or InputThresholds each);
    `curves`: the greedy allocation's error curves of an earlier call with the same blocks and rows;
    `input_dims`: each block's input width before a folded bias column (what a rotation turns); `storage`: how
    the weights will be stored ("fp32", "fp16", "int8", "int4": what the rotation's bytes are weighed against);
    `sensitivity`: see calibrate_input_blocks."""
    m = method(name)
    if m.mode == "input":
        return calibrate_input_blocks(blocks, rows, name, sparsity, progress, where, curves, input_dims, storage,
                                      sensitivity)
    for i, r in enumerate(rows):
        check_rows(r, sparsity, where[i] if where else f"block {i}")
    return [neuron_threshold(b, r, m, sparsity) for b, r in zip(blocks, rows)]
