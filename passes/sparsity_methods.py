"""Training-free sparsity methods as data and their calibration of a model's blocks (one block's thresholds:
input_thresholds.py; TEAL's greedy budget allocation: greedy_allocation.py).

Each method is one `Method` entry: which op mode it produces (threshold: per-neuron, input: per input channel of
every projection; see their entries in ir/sparse_variants.py), what it scores, and how the sparsity is spread:

    cats         threshold  |act(g)| <= t skips up/down rows (CATS)             bytes skipped: 2/3·s
    product      threshold  |act(g)·u| <= t skips down rows (top-k% of h)       bytes skipped: 1/3·s
    teal         input      |x_i| and |h_j| per matrix, uniform s               bytes skipped: s
    wina         input      |x_i|·‖W[:, i]‖₂ and |h_j|·‖W_down[:, j]‖₂ (WINA)  bytes skipped: s
    teal-cats    input      TEAL on x, CATS (|act(g)|) on the down input
    topk         input      WINA scores, a fixed count per token (stable latency)
    *-greedy     input      TEAL's block-wise allocation: per block the x / h sparsity pair that skips s of its
                            bytes at the least output error (error curves measured per block; topk-greedy: the
                            pair's counts, the curves measured with counts)
    rotated-*    input      the block input first turned (x' = x·T, W' = W·T⁻ᵀ: LaRoSa's layer-wise rotation):
                            into its principal axes on half the calibration rows, its thresholds calibrated on the
                            other half (rotation.crossfit_halves) (rotated-wina-greedy), which gathers
                            x's energy in few channels so magnitude sparsity drops less of it, or (rotated-metric-
                            wina-greedy) into axes that are uncorrelated AND whose weight columns are orthonormal
                            (rotation.BASES); T costs d² weights per token (stored as ROTATION_STORAGE says for the
                            weights' storage), which the budget pays: the x / h sparsities skip s plus T's share

    glu-*        input      WINA's column norms in the block output's metric: each neuron's gate and up rows
                            weighed by what an error in their pre-activations does to the output through the
                            activation (block_weights.py), not all alike; rotated-glu-wina-greedy in the principal
                            axes, rotated-metric-glu-wina-greedy in the metric basis of that metric (the best
                            measured on Gemma 3 270M at 0.5, not on SmolLM2-135M: not the default)

`sparsity` is the method's own target (fraction of the scored entries zeroed); `effective` is the fraction of
MLP weight bytes a token does not read, which is what turns into speed. Thresholds are quantiles on the
calibration rows of each block's input (dense model, so errors do not compound while calibrating, as in TEAL).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from ..ir.activations import apply
from ..ir.input_sparse import input_sparse_parts
from .block_weights import OUTPUT_METRICS, BlockWeights
from .greedy_allocation import (  # noqa: F401 (LEVEL_STEP, error_curves: this module's API before the split)
    LEVEL_STEP,
    MAX_LEVEL,
    error_curves,
    greedy_allocation,
    least_error,
    least_summed_error,
    measure_curves,
)
from .input_thresholds import (
    CalibrationError,
    InputThresholds,
    Method,
    check_rows,
    enough_rows,
    input_thresholds,
)
from .quality_guard import LossGuard, guarded_plans
from .rotation import crossfit_halves, rotate_blocks
from .sensitivity_allocation import pooled_budgets

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
    Method("glu-wina-greedy", "input", "product", weighted=True, greedy=True, output_metric="diagonal",
           doc="wina-greedy with each input channel's norm in the block output's metric: each neuron's gate and up "
           "rows weighed by what their pre-activations' errors do to the output through the activation"),
    Method("rotated-glu-wina-greedy", "input", "product", weighted=True, greedy=True, rotate=True,
           output_metric="diagonal", doc="glu-wina-greedy on the block input rotated into its principal axes"),
    Method("rotated-metric-glu-wina-greedy", "input", "product", weighted=True, greedy=True, rotate=True,
           basis="metric", output_metric="full",
           doc="rotated-metric-wina-greedy in the block output's metric (its quadratic form, cross terms included)"),
    Method("teal-cats", "input", "gate", doc="TEAL on x, CATS on the down projection's input"),
    Method("topk", "input", "product", weighted=True, fixed_count=True,
           doc="fixed count per token on x and h (WINA scores): stable latency"),
    Method("topk-greedy", "input", "product", weighted=True, greedy=True, fixed_count=True,
           doc="topk with the counts per block and matrix from the greedy allocation"),
    Method("rotated-topk-greedy", "input", "product", weighted=True, greedy=True, fixed_count=True, rotate=True,
           doc="topk-greedy on the block input rotated into its principal axes, rotation paid"),
)}
# the best measured on the frontier at *delivered* (held-out) sparsity (BENCHMARKS.md, session 13: SmolLM2-135M and
# Gemma 3 270M at 30-50%, cross-fitted); it rotates only the blocks where that lowers the error measured off the
# basis's fitting rows, so it is wina-greedy wherever rotating does not pay (e.g. int4)
DEFAULT_METHOD = "rotated-wina-greedy"
# where the default's input sparsity cannot go (gate/up biases: gpt-oss and RecurrentGemma's MLPs; FATReLU), a user
# who named no method gets this per-neuron one for those blocks (the report says which and why), not an error
FALLBACK_METHOD = "cats"
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


def in_method_metric(blocks: list[BlockWeights], rows: list[np.ndarray], m: Method) -> list[BlockWeights]:
    """The blocks as method `m` measures them: in the block output's metric where its entry asks for it, taken on
    the rows a basis is fitted on (crossfit_halves), so the thresholds are still calibrated on rows it did not see."""
    if not m.output_metric:
        return list(blocks)
    cross = OUTPUT_METRICS[m.output_metric]
    return [b.with_output_metric(crossfit_halves(r)[0], cross) for b, r in zip(blocks, rows)]


def allocation_curves(blocks: list[BlockWeights], rows: list[np.ndarray], m: Method, error_tokens: int = 256,
                      progress: bool = True, input_dims: list[int] | None = None,
                      sensitivity: list[np.ndarray] | None = None) -> list[tuple]:
    """Per block, the error curves the greedy allocation reads (levels 0, LEVEL_STEP, ..., MAX_LEVEL); for a
    rotated-* method the pair (curves of the rotated blocks, curves of the blocks as they are), as its
    calibration reads them; `sensitivity`: see calibrate_input_blocks."""
    blocks = in_method_metric(blocks, rows, m)
    plain = measure_curves(blocks, rows, m, error_tokens, progress, sensitivity)
    if not m.rotate:
        return plain
    (turned, turned_rows, *_), turned_sensitivity = crossfit_rotation(blocks, rows, input_dims, "fp32", m.basis,
                                                                       sensitivity)
    return measure_curves(turned, turned_rows, m, error_tokens, progress, turned_sensitivity), plain


def calibrate_input_blocks(blocks: list[BlockWeights], rows: list[np.ndarray], name: str, sparsity: float,
                           progress: bool = True, where: list[str] | None = None, curves=None,
                           input_dims: list[int] | None = None, storage: str = "fp32",
                           sensitivity: list[np.ndarray] | None = None,
                           loss_guard: LossGuard | None = None) -> list[InputThresholds]:
    """Input-mode thresholds for every block: uniform sparsity, or the greedy allocation for `*-greedy`;
    `rotated-*` turns a block into its method's basis (rotation.BASES; `input_dims`: the block's own input columns,
    before a folded bias column) and asks it to skip `sparsity` plus its rotation's share — where that fits
    (≤ MAX_LEVEL) and, for greedy methods, where its calibrated error at that budget is below the unrotated
    block's at `sparsity`; other blocks stay as they are (no rotation, no share). `sensitivity` (greedy methods;
    per block [tokens, d_out] weights of the squared output error, aligned with the rows, e.g. g² of the loss):
    errors in the loss's unit, so the budget is pooled across blocks (sensitivity_allocation.py); `curves` are
    then those of `allocation_curves(..., sensitivity=)`. `loss_guard` (quality_guard.py): the plans' loss increase
    on held-out text checked, and the model-wide sparsity lowered until it is within the guard's tolerance
    (`loss_guard.outcome` then says what was kept)."""
    m = method(name)
    if m.mode != "input":
        raise ValueError(f"method {name!r} is not an input-sparsity method")
    if sensitivity is not None and not m.greedy:
        raise ValueError(f"sensitivity pools a greedy allocation; method {name!r} is not greedy")
    for i, r in enumerate(rows):
        check_rows(r, sparsity, where[i] if where else f"block {i}")
    blocks, rows = in_method_metric(blocks, rows, m), list(rows)
    if m.greedy:
        if m.rotate:
            turned_curves, curves = curves or (None, None)
        curves = list(curves or measure_curves(blocks, rows, m, progress=progress, sensitivity=sensitivity))
    if m.rotate:
        dims = input_dims or [r.shape[1] for r in rows]
        (turned, turned_rows, qs, q_shares, q_turns), turned_sensitivity = crossfit_rotation(
            blocks, rows, input_dims, storage, m.basis, sensitivity)
        # enough rows to fit the basis on (ROTATION_TOKENS_PER_CHANNEL) and to calibrate on the other half
        may_rotate = [len(r) - len(t) >= ROTATION_TOKENS_PER_CHANNEL * k and enough_rows(t, sparsity)
                      for r, t, k in zip(rows, turned_rows, dims)]
        if m.greedy:
            turned_curves = turned_curves or measure_curves(turned, turned_rows, m, progress=progress,
                                                     sensitivity=turned_sensitivity)
    if sensitivity is not None:
        def least(i: int, budget: float) -> float:
            errors = [least_summed_error(blocks[i], curves[i], budget)]
            if m.rotate and budget + q_shares[i] <= MAX_LEVEL and may_rotate[i]:
                errors.append(least_summed_error(turned[i], turned_curves[i], budget + q_shares[i]))
            return min(errors)
        options = [functools.partial(least, i) for i in range(len(blocks))]

    def targets_at(s: float) -> list[float]:
        """Each block's budget at model-wide sparsity s: pooled by the loss's sensitivity, or s everywhere."""
        return [s] * len(blocks) if sensitivity is None else pooled_budgets(options, s)

    def plans_at(targets: list[float]) -> list[InputThresholds]:
        """Every block's plan at its budget (a rotated-* block turned where that pays)."""
        chosen_blocks, chosen_rows, chosen_curves = list(blocks), list(rows), list(curves or [None] * len(blocks))
        rotations, shares, turns = [None] * len(blocks), [0.0] * len(blocks), [None] * len(blocks)
        for i, share in enumerate(q_shares if m.rotate else ()):
            if targets[i] + share > MAX_LEVEL or not may_rotate[i]:
                continue
            if m.greedy:
                mine, theirs = (least_error(turned[i], turned_curves[i], targets[i] + share),
                                least_error(blocks[i], curves[i], targets[i]))
                if mine is None or (theirs is not None and theirs[1] <= mine[1]):
                    continue
                chosen_curves[i] = turned_curves[i]
            chosen_blocks[i], chosen_rows[i] = turned[i], turned_rows[i]
            rotations[i], shares[i], turns[i] = qs[i], share, q_turns[i]
        budgets = [target + share for target, share in zip(targets, shares)]
        if m.greedy:
            levels = [greedy_allocation([b], [r], m, budget, curves=[c])[0]
                      for b, r, c, budget in zip(chosen_blocks, chosen_rows, chosen_curves, budgets)]
        else:
            levels = [(budget, budget) for budget in budgets]
        plans = [input_thresholds(b, r, m, *lv) for b, r, lv in zip(chosen_blocks, chosen_rows, levels)]
        return [replace(p, rotation=q, turn=turn, rotation_share=share, effective=p.effective - share)
                for p, q, share, turn in zip(plans, rotations, shares, turns)]

    if loss_guard is not None:
        return guarded_plans(lambda s: plans_at(targets_at(s)), sparsity, loss_guard, progress)
    return plans_at(targets_at(sparsity))


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


def effective_sparsity(mode: str, criterion: str, sparsity: float, shares: tuple[float, float],
                       reads_up: bool = True) -> float:
    """Fraction of weight bytes not read per token for a threshold-mode block at neuron sparsity `sparsity`
    (`reads_up` False: a non-gated MLP's `unit` up, whose x share is the gate's alone)."""
    share_x, share_h = shares
    if mode != "threshold":
        raise ValueError(mode)
    # 'gate' reads every gate row and the kept up/down rows; 'product' needs every gate and up row
    skipped = (share_x / 2 if reads_up else 0.0) + share_h if criterion == "gate" else share_h
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
                           effective_sparsity("threshold", m.criterion, measured, bw.byte_shares(),
                                              bw.reads_up), len(rows))


def calibrate_blocks(blocks: list[BlockWeights], rows: list[np.ndarray], name: str, sparsity: float,
                     progress: bool = True, where: list[str] | None = None, curves=None,
                     input_dims: list[int] | None = None, storage: str = "fp32",
                     sensitivity: list[np.ndarray] | None = None, loss_guard: LossGuard | None = None):
    """Every block's calibration for method `name` at `sparsity` (NeuronThreshold or InputThresholds each);
    `curves`: the greedy allocation's error curves of an earlier call with the same blocks and rows;
    `input_dims`: each block's input width before a folded bias column (what a rotation turns); `storage`: how
    the weights will be stored ("fp32", "fp16", "int8", "int4": what the rotation's bytes are weighed against);
    `sensitivity`, `loss_guard`: see calibrate_input_blocks."""
    m = method(name)
    if m.mode == "input":
        return calibrate_input_blocks(blocks, rows, name, sparsity, progress, where, curves, input_dims, storage,
                                      sensitivity, loss_guard)
    for i, r in enumerate(rows):
        check_rows(r, sparsity, where[i] if where else f"block {i}")

    def plans_at(s: float) -> list[NeuronThreshold]:
        return [neuron_threshold(b, r, m, s) for b, r in zip(blocks, rows)]
    return plans_at(sparsity) if loss_guard is None else guarded_plans(plans_at, sparsity, loss_guard, progress)
