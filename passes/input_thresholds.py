"""One input-sparse block's thresholds: a method's scores, the quantile thresholds at given x / h sparsities, what
they measure on the rows, and the checks the calibration rows must pass (sparsity_methods.py calibrates whole models
with them, greedy_allocation.py measures their error curves).

`Method` (what a method scores and how it spreads the sparsity) is the data the method table
(sparsity_methods.METHODS) is made of.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ActsparseError
from ..ir.activations import apply
from ..ir.input_sparse import input_sparse_parts
from .block_weights import BlockWeights

MINORITY_TOKENS = 16         # calibration tokens needed on the smaller side of a quantile


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
    output_metric: str = ""      # "diagonal" | "full": norms and metric basis in the block output's (block_weights.py)
    doc: str = ""


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


def channel_scores(values: np.ndarray, norm: np.ndarray, weighted: bool) -> np.ndarray:
    return np.abs(values) * norm if weighted else np.abs(values)


def level_thresholds(scores: np.ndarray, norm: np.ndarray, weighted: bool, level: float, fixed: bool):
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
    x_thr, x_keep = level_thresholds(channel_scores(rows, bw.x_norm, m.weighted), bw.x_norm, m.weighted, sx,
                                     m.fixed_count)
    probe = {**bw.attrs, "criterion": m.criterion, "x_keep": x_keep, "h_keep": 0}
    keep_x, _, h = input_sparse_parts(rows, bw.w_gate.T, bw.w_up.T, x_thr, np.zeros(bw.w_down.shape[1], np.float32),
                                      probe)
    xs = np.where(keep_x, rows, 0)
    score = apply(bw.gate_act, xs @ bw.w_gate.T) if m.criterion == "gate" else h
    if not np.isfinite(score).all():
        raise CalibrationError("activations overflow (NaN/inf) in calibration; the model's weights or inputs are "
                               "out of float32 range: check the model, or calibrate on in-range text")
    h_thr, h_keep = level_thresholds(channel_scores(score, bw.h_norm, m.weighted), bw.h_norm, m.weighted, sh,
                                     m.fixed_count)
    attrs = {**bw.attrs, "criterion": m.criterion, "x_keep": x_keep, "h_keep": h_keep}
    keep_x, keep_h, _ = input_sparse_parts(rows, bw.w_gate.T, bw.w_up.T, x_thr, h_thr, attrs)
    px, ph = float(1 - keep_x.mean()), float(1 - keep_h.mean())
    share_x, share_h = bw.byte_shares()
    return InputThresholds(x_thr, h_thr, x_keep, h_keep, m.criterion, px, ph, share_x * px + share_h * ph, len(rows))


def dense_out(bw: BlockWeights, rows: np.ndarray) -> np.ndarray:
    h = apply(bw.gate_act, rows @ bw.w_gate.T) * apply(bw.up_act, rows @ bw.w_up.T)
    return h @ bw.w_down.T


def relative_error(bw: BlockWeights, rows: np.ndarray, dense: np.ndarray, th: InputThresholds) -> float:
    attrs = {**bw.attrs, **th.attrs}
    _, _, h = input_sparse_parts(rows, bw.w_gate.T, bw.w_up.T, th.x_thr, th.h_thr, attrs)
    return float(np.square(h @ bw.w_down.T - dense).sum() / max(np.square(dense).sum(), 1e-30))
