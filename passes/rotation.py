"""The rotated-* methods' block rotation (LaRoSa's layer-wise rotation): each block's input turned into its
principal axes on the calibration rows (x' = x·Q, W' = W·Q), so magnitude sparsity on x' drops less of x's energy;
Q costs d² weights per token, priced in the storage ROTATION_STORAGE gives it. Calibration
(sparsity_methods.calibrate_input_blocks) decides per block whether the rotation pays."""

from __future__ import annotations

import numpy as np

from ..ir.quant import bytes_per_weight
from .block_weights import BlockWeights

ROTATION_DTYPE = np.float16   # Q as calibration makes it (the turned weights W·Q use this rounded Q)
# how Q is stored (and read per token) for each storage of the block weights ("fp32": not quantized): q8_0
# everywhere. Q turns x before every matrix of the block, so its error lands on all three: below 8 bits it costs
# more quality than the bytes it saves (benchmarks: threshold_frontier --quantize int4); fp16 costs twice the
# bytes of int8 and the budget pays them: at sparsity 0.5 SmolLM2-135M (fp32) went from +7.3% perplexity with an
# fp16 Q (6.25% of the block's bytes) to +4.7% with an int8 Q (3.3%), Gemma 3 270M from +8.3% to +5.7%
# (BENCHMARKS.md, session 9).
ROTATION_STORAGE = {"fp32": "int8", "fp16": "int8", "int8": "int8", "int4": "int8"}


def pca_rotation(rows: np.ndarray, dims: int) -> np.ndarray:
    """Q [dims, dims], orthogonal up to its fp16 rounding: the principal axes of the first `dims` columns of the
    calibration rows, largest variance first (eigenvectors of XᵀX in float64), as stored (ROTATION_DTYPE)."""
    x = rows[:, :dims].astype(np.float64)
    _, vectors = np.linalg.eigh(x.T @ x)
    return np.ascontiguousarray(vectors[:, ::-1]).astype(ROTATION_DTYPE)


def rotated(bw: BlockWeights, rows: np.ndarray, q: np.ndarray) -> tuple[BlockWeights, np.ndarray]:
    """The block and its rows in the rotated basis: x' = x·Q, W' = W·Q on the first Q.shape[0] input columns (a
    folded bias column after them stays as it is)."""
    k, q = len(q), q.astype(np.float32)

    def turn(a):
        return np.concatenate([a[:, :k] @ q, a[:, k:]], 1).astype(np.float32)

    return BlockWeights(turn(bw.w_gate), turn(bw.w_up), bw.w_down, bw.gate_act, bw.up_act), turn(rows)


def rotation_share(dims: int, bw: BlockWeights, storage: str = "fp32") -> float:
    """Bytes of a dims x dims rotation over the block's weight bytes, both as stored for weights in `storage`."""
    weights = bw.w_gate.size + bw.w_up.size + bw.w_down.size
    return dims * dims * bytes_per_weight(ROTATION_STORAGE[storage]) / (weights * bytes_per_weight(storage))


def rotate_blocks(blocks: list[BlockWeights], rows: list[np.ndarray], input_dims: list[int] | None = None,
                  storage: str = "fp32"):
    """(turned blocks, turned rows, Q per block, Q's share of each block's bytes) for the rotated-* methods;
    `storage`: how the block weights will be stored (fp32 or a `quantize=` value), which prices Q's share."""
    dims = input_dims or [r.shape[1] for r in rows]
    rotations = [pca_rotation(r, k) for r, k in zip(rows, dims)]
    turned = [rotated(b, r, q) for b, r, q in zip(blocks, rows, rotations)]
    shares = [rotation_share(len(q), b, storage) for q, b in zip(rotations, blocks)]
    blocks, rows = [t[0] for t in turned], [t[1] for t in turned]
    return blocks, rows, rotations, shares
