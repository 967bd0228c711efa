"""SCAP's mode-centring (Chua et al. 2024): the per-channel centre an input-mode block's inputs are thresholded
around (ir/input_sparse.py: |x_i − c_i| > t_i, a dropped entry reads as c_i, W·c a bias folded offline).

An activation whose distribution peaks away from zero (a skewed GELU / SiLU product, a normalized hidden state
with a per-channel offset) has more entries near its peak than near zero, so centring there drops more of them
for the same error. `CENTRES` are the estimates a `Method.centre_estimate` names: the peak of a smoothed
histogram per channel (SCAP's KDE mode, per channel rather than SCAP's one scalar per matrix) or the median
(SCAP's cheap alternative)."""

from __future__ import annotations

import numpy as np

from ..ir.activations import apply
from .block_weights import BlockWeights

# the histogram's range: these quantiles of each channel (the tails would stretch the bins over outliers)
MODE_RANGE = (0.005, 0.995)
MODE_SMOOTHING = 1.5          # the Gaussian smoothing of the histogram counts, in bins (a KDE on the bins)


def channel_modes(values: np.ndarray) -> np.ndarray:
    """Per column of `values` [tokens, channels], the peak of its histogram (√tokens bins over MODE_RANGE),
    smoothed by a Gaussian of MODE_SMOOTHING bins."""
    values = np.asarray(values, np.float64)
    tokens, width = values.shape
    bins = max(8, int(np.sqrt(tokens)))
    lo, hi = np.quantile(values, MODE_RANGE, axis=0)
    span = np.maximum(hi - lo, 1e-12)
    index = np.clip(((values - lo) / span * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount((index + np.arange(width) * bins).ravel(), minlength=width * bins).reshape(width, bins)
    offsets = np.arange(-4, 5)
    kernel = np.exp(-0.5 * (offsets / MODE_SMOOTHING) ** 2)
    padded = np.pad(counts.astype(np.float64), ((0, 0), (4, 4)))
    smooth = sum(k * padded[:, 4 + o:4 + o + bins] for o, k in zip(offsets, kernel))
    return (lo + (smooth.argmax(1) + 0.5) / bins * span).astype(np.float32)


CENTRES = {
    "mode": channel_modes,
    "median": lambda values: np.median(values, axis=0).astype(np.float32),
}


def block_centres(bw: BlockWeights, rows: np.ndarray, centre: str, estimate: str):
    """(x centre or None, h centre or None) of one block on its calibration rows (dense model): `centre` says
    which inputs are centred ("", "x", "h", "xh"), `estimate` how (a key of CENTRES). h's centre is that of the
    dense block's h (the x side's sparsity moves it little next to its spread)."""
    if estimate not in CENTRES:
        raise ValueError(f"unknown centre estimate {estimate!r}; valid: {', '.join(CENTRES)}")
    cx = CENTRES[estimate](rows) if "x" in centre else None
    ch = None
    if "h" in centre:
        h = apply(bw.gate_act, rows @ bw.w_gate.T) * apply(bw.up_act, rows @ bw.w_up.T)
        ch = CENTRES[estimate](h)
    return cx, ch
