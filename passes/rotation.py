"""The rotated-* methods' block rotation (LaRoSa's layer-wise rotation): each block's input turned by T
(x' = x·T) and its gate/up weights by T⁻ᵀ (W' = W·T⁻ᵀ, so W'·x'ᵀ = W·xᵀ). Two bases (`BASES`):

    pca     T = Q, the input's principal axes on the calibration rows (orthogonal: T⁻ᵀ = Q)
    metric  T = M^½·V (M = WᵀW, W = [W_gate; W_up]; V the eigenvectors of M^½·XᵀX·M^½): the turned components are
            uncorrelated on the calibration rows AND their weight columns orthonormal, so dropping one costs exactly
            its own share of the gate/up pre-activations' error (WINA's column-orthogonality, met exactly)

T costs d² weights per token, priced in the storage ROTATION_STORAGE gives it. Calibration
(sparsity_methods.calibrate_input_blocks) decides per block whether the rotation pays. At sparsity 0.5 (exactly
50% effective, T q8_0 paid) the metric basis took SmolLM2-135M from +4.70% to +2.08% perplexity but Gemma 3 270M
from +5.72% to +8.06% (BENCHMARKS.md, session 10): pca stays the default's basis."""

from __future__ import annotations

import numpy as np

from ..ir.quant import bytes_per_weight
from .block_weights import BlockWeights

# how Q is stored (and read per token) for each storage of the block weights ("fp32": not quantized): q8_0
# everywhere. Q turns x before every matrix of the block, so its error lands on all three: below 8 bits it costs
# more quality than the bytes it saves (benchmarks: threshold_frontier --quantize int4); fp16 costs twice the
# bytes of int8 and the budget pays them: at sparsity 0.5 SmolLM2-135M (fp32) went from +7.3% perplexity with an
# fp16 Q (6.25% of the block's bytes) to +4.7% with an int8 Q (3.3%), Gemma 3 270M from +8.3% to +5.7%
# (BENCHMARKS.md, session 9).
ROTATION_STORAGE = {"fp32": "int8", "fp16": "int8", "int8": "int8", "int4": "int8"}
ROTATION_DTYPE = np.float16   # the pca Q as calibration makes it (the turned weights W·Q use this rounded Q)


def pca_rotation(rows: np.ndarray, dims: int) -> np.ndarray:
    """Q [dims, dims], orthogonal up to its fp16 rounding: the principal axes of the first `dims` columns of the
    calibration rows, largest variance first (eigenvectors of XᵀX in float64), as stored (ROTATION_DTYPE)."""
    x = rows[:, :dims].astype(np.float64)
    _, vectors = np.linalg.eigh(x.T @ x)
    return np.ascontiguousarray(vectors[:, ::-1]).astype(ROTATION_DTYPE)


def metric_rotation(rows: np.ndarray, bw: BlockWeights, dims: int) -> np.ndarray:
    """T [dims, dims] (float32) for the first `dims` input columns: T = M^½·V with M = WᵀW
    (W = [W_gate; W_up]; the block's output metric where it has one, `BlockWeights.input_metric`) and V the
    eigenvectors of M^½·XᵀX·M^½, largest first (float64). Then the turned weights W' = W·T⁻ᵀ have orthonormal
    columns in that metric (T⁻¹·M·T⁻ᵀ = I) and the turned rows X·T have the diagonal Gram matrix VᵀM^½XᵀXM^½V."""
    x = rows[:, :dims].astype(np.float64)
    lam, u = np.linalg.eigh(bw.input_metric(dims))
    root = (u * np.sqrt(np.maximum(lam, lam.max() * 1e-12))) @ u.T   # M^½; a null direction kept invertible
    _, v = np.linalg.eigh(root @ (x.T @ x) @ root)
    return np.ascontiguousarray(root @ v[:, ::-1]).astype(np.float32)


def weight_turn(t: np.ndarray) -> np.ndarray:
    """T⁻ᵀ (float32): the gate/up weights' turn (W' = W·T⁻ᵀ) of a metric T."""
    return np.linalg.inv(t.astype(np.float64)).T.astype(np.float32)


def rotated(bw: BlockWeights, rows: np.ndarray, t: np.ndarray, turn: np.ndarray) -> tuple[BlockWeights, np.ndarray]:
    """The block and its rows in the turned basis: x' = x·T, W' = W·turn (turn = T⁻ᵀ) on the first T.shape[0]
    input columns (a folded bias column after them stays as it is)."""
    k = len(t)

    def apply(a, m):
        return np.concatenate([a[:, :k] @ m.astype(np.float32), a[:, k:]], 1).astype(np.float32)

    turned = BlockWeights(apply(bw.w_gate, turn), apply(bw.w_up, turn), bw.w_down, bw.gate_act, bw.up_act,
                          bw.neuron_metric)   # per neuron: the same in any input basis
    return turned, apply(rows, t)


BASES = {"pca": lambda rows, bw, dims: pca_rotation(rows, dims), "metric": metric_rotation}


def rotation_share(dims: int, bw: BlockWeights, storage: str = "fp32") -> float:
    """Bytes of a dims x dims rotation over the block's weight bytes, both as stored for weights in `storage`."""
    weights = bw.w_gate.size + bw.w_up.size + bw.w_down.size
    return dims * dims * bytes_per_weight(ROTATION_STORAGE[storage]) / (weights * bytes_per_weight(storage))


def rotate_blocks(blocks: list[BlockWeights], rows: list[np.ndarray], input_dims: list[int] | None = None,
                  storage: str = "fp32", basis: str = "pca", fit_rows: list[np.ndarray] | None = None):
    """(turned blocks, turned rows, T per block, T's share of each block's bytes, the weights' turn T⁻ᵀ per block)
    for the rotated-* methods; `storage`: how the block weights will be stored (fp32 or a `quantize=` value), which
    prices T's share; `basis`: a key of BASES; `fit_rows`: the rows T is fitted on (default: `rows` themselves;
    calibration passes the other half, see `crossfit_halves`)."""
    dims = input_dims or [r.shape[1] for r in rows]
    fit_rows = rows if fit_rows is None else fit_rows
    rotations = [BASES[basis](f, b, k) for f, b, k in zip(fit_rows, blocks, dims)]
    turns = [q if basis == "pca" else weight_turn(q) for q in rotations]   # pca: orthogonal, Q⁻ᵀ = Q
    turned = [rotated(b, r, q, s) for b, r, q, s in zip(blocks, rows, rotations, turns)]
    shares = [rotation_share(len(q), b, storage) for q, b in zip(rotations, blocks)]
    blocks, rows = [t[0] for t in turned], [t[1] for t in turned]
    return blocks, rows, rotations, shares, turns


# the share of a block's calibration rows (the first ones, in text order) its rotation is fitted on; the rest
# calibrate the thresholds and error curves of the turned block. A basis fitted on the rows it is calibrated on
# underestimates their smallest components (a sample covariance's tail), so a quantile set to skip 50% there
# skipped 38-42% of held-out bytes on Gemma 3 270M and SmolLM2-135M (BENCHMARKS.md, session 12)
FIT_SHARE = 0.5


def crossfit_halves(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows a basis is fitted on, rows its thresholds are calibrated on): the first FIT_SHARE of the rows and the
    rest. Calibration rows are in text order (calibrate.collect_inputs keeps them so, threshold_frontier collects
    them window by window), so the halves are two stretches of text, split by window but for the one window the
    cut falls in: no neighbouring tokens on both sides, as a split by row would have."""
    cut = int(len(rows) * FIT_SHARE)
    return rows[:cut], rows[cut:]
