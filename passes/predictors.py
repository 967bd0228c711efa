"""Activation predictors for one gated MLP: fitting, the decision cutoff for a target recall, sizes.

Three kinds, one table (`KINDS`), each fitted from the block's calibration rows and activation labels
(`activation_stats.BlockActivations`) and scoring a neuron active when its score exceeds the cutoff:

    lowrank  s = relu(x·Aᵀ)·Bᵀ + b   trained with BCE on the labels (DejaVu / PowerInfer); `predictor_train.py`
    svd      s = (x·Aᵀ)·Bᵀ           truncated SVD of W_gate (A = S_r V_rᵀ, B = U_r): predicts the gate
                                     pre-activation, training-free
    sign     s = sign agreements − disagreements of x and each W_gate row (SparseInfer), training-free;
                                     the cutoff is its margin

Recall is what a ReLU-family model loses by (a neuron predicted active whose gate is <= 0 still adds exactly 0),
so the cutoff is chosen per layer as the largest with recall >= the target on held-out calibration rows (lowrank
trains on the other rows). Ranks come from a byte budget shared by the layers in proportion to their density
(1 − sparsity): denser layers are harder to predict and get more rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ActsparseError
from ..ir.predictor import PREDICTORS, pack_sign_bits, sign_scores

MIN_TRAIN_TOKENS = 256    # lowrank: fewer rows than this do not train a predictor worth its bytes
MIN_CUTOFF_TOKENS = 32    # any kind: rows to place the cutoff on
RANK_MULTIPLE = 8


class PredictorError(ActsparseError):
    """A predictor cannot be built for a block: no or too little calibration data, or the recall is unreachable."""


@dataclass(frozen=True)
class Fitted:
    kind: str
    arrays: dict = field(repr=False)     # lowrank: A [r, d], B [n, r], b [n]; svd: A, B; sign: bits [n, words]
    rank: int | None                     # None for sign (it keeps one bit per weight)
    cutoff: float
    recall: float                        # on the rows the cutoff was chosen on
    predicted_sparsity: float            # share of neurons predicted inactive on those rows
    d: int

    def scores(self, x: np.ndarray) -> np.ndarray:
        return KINDS[self.kind].scores(self, np.asarray(x, np.float32))

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))


def _lowrank_scores(p: Fitted, x):
    return np.maximum(x @ p.arrays["A"].T.astype(np.float32), 0) @ p.arrays["B"].T.astype(np.float32) + p.arrays["b"]


def _svd_scores(p: Fitted, x):
    return (x @ p.arrays["A"].T.astype(np.float32)) @ p.arrays["B"].T.astype(np.float32)


def _sign_scores(p: Fitted, x):
    return sign_scores(x, p.arrays["bits"], p.d)


def _fit_lowrank(w_gate, rows, active, rank, options):
    from .predictor_train import train_lowrank

    return train_lowrank(rows, active, rank, **options)


def _fit_svd(w_gate, rows, active, rank, options):
    import torch

    w = torch.from_numpy(np.ascontiguousarray(w_gate, np.float32))
    if min(w.shape) <= 1024:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        u, s, v = u[:, :rank], s[:rank], vh[:rank].T
    else:  # randomized (Halko et al.): the top-r subspace of a 4096 x 14336 matrix in seconds
        u, s, v = torch.svd_lowrank(w, q=min(rank + 16, min(w.shape)), niter=3)
        u, s, v = u[:, :rank], s[:rank], v[:, :rank]
    return {"A": (s[:, None] * v.T).contiguous().numpy(), "B": u.contiguous().numpy()}


def _fit_sign(w_gate, rows, active, rank, options):
    return {"bits": pack_sign_bits(np.asarray(w_gate, np.float32))}


@dataclass(frozen=True)
class Kind:
    fit: object          # (w_gate, rows, active, rank, options) -> arrays
    scores: object       # (Fitted, x) -> [tokens, n_ff]
    trains: bool         # holds rows out for the cutoff, needs MIN_TRAIN_TOKENS
    ranked: bool


KINDS = {
    "lowrank": Kind(_fit_lowrank, _lowrank_scores, trains=True, ranked=True),
    "svd": Kind(_fit_svd, _svd_scores, trains=False, ranked=True),
    "sign": Kind(_fit_sign, _sign_scores, trains=False, ranked=False),
}
assert tuple(KINDS) == PREDICTORS


def allocate_ranks(densities: list[float], d: int, n_ff: list[int] | int, budget: float) -> list[int]:
    """Per-layer ranks sharing `budget` (a fraction of the blocks' MLP bytes) in proportion to density."""
    n_ffs = [n_ff] * len(densities) if isinstance(n_ff, int) else list(n_ff)
    total = budget * sum(3 * d * n for n in n_ffs)                      # in weights, all layers together
    weights = np.maximum(np.asarray(densities, np.float64), 1e-3)
    share = weights / weights.sum()
    ranks = []
    for s, n in zip(share, n_ffs):
        r = int(total * s / (d + n + 1)) // RANK_MULTIPLE * RANK_MULTIPLE
        ranks.append(int(min(max(r, RANK_MULTIPLE), min(d, n))))
    return ranks


def cutoff_for_recall(scores: np.ndarray, active: np.ndarray, recall: float) -> float:
    """The largest cutoff t with recall(scores > t) >= `recall` on these rows (active: bool labels)."""
    positive = np.sort(scores[active].astype(np.float64))
    if positive.size == 0:
        return float(scores.max())          # nothing fires here: predict nothing
    allowed_misses = int(np.floor((1.0 - recall) * positive.size + 1e-9))
    return float(np.nextafter(np.float32(positive[allowed_misses]), np.float32(-np.inf)))


def fit_block(kind: str, location: str, w_gate: np.ndarray, rows: np.ndarray, active: np.ndarray, rank: int,
              recall: float, min_sparsity: float = 0.0, seed: int = 0, options: dict | None = None) -> Fitted:
    """Fit one block's predictor and place its cutoff at `recall` (see the module docstring)."""
    if kind not in KINDS:
        raise PredictorError(f"unknown predictor {kind!r}; valid predictors: {', '.join(KINDS)}")
    spec = KINDS[kind]
    needed = MIN_TRAIN_TOKENS if spec.trains else MIN_CUTOFF_TOKENS
    if len(rows) < needed:
        raise PredictorError(f"{location}: {len(rows)} calibration tokens are too few for a {kind} predictor (needs "
                             f">= {needed}); pass more calibration data (a few thousand tokens)")
    order = np.random.default_rng(seed).permutation(len(rows))
    held = order[: max(len(rows) // 5, MIN_CUTOFF_TOKENS)] if spec.trains else order
    train = order[len(held):] if spec.trains else order
    arrays = spec.fit(w_gate, rows[train], active[train], rank, {"seed": seed, "desc": location, **(options or {})})
    fitted = Fitted(kind, arrays, rank if spec.ranked else None, 0.0, 0.0, 0.0, w_gate.shape[1])
    scores, labels = fitted.scores(rows[held]), active[held]
    cutoff = cutoff_for_recall(scores, labels, recall)
    predicted = scores > cutoff
    got = float((predicted & labels).sum() / max(labels.sum(), 1))
    predicted_sparsity = 1.0 - float(predicted.mean())
    if predicted_sparsity < min_sparsity:
        raise PredictorError(
            f"{location}: the {kind} predictor{'' if rank is None or not spec.ranked else f' (rank {rank})'} reaches "
            f"recall {recall:.1%} only by predicting {1 - predicted_sparsity:.1%} of the neurons active, more than "
            f"the {1 - min_sparsity:.1%} allowed (sparsity={min_sparsity}); lower the recall, allow less sparsity, "
            "give the predictor more bytes (predictor_budget) or pick another predictor")
    return Fitted(kind, arrays, fitted.rank, cutoff, got, predicted_sparsity, w_gate.shape[1])
