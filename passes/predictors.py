"""Activation predictors for one gated MLP: fitting, the decision cutoff for a target recall, sizes.

Three kinds, one table (`KINDS`), each fitted from the block's calibration rows and activation labels
(`activation_stats.BlockActivations`) and scoring a neuron active when its score exceeds the cutoff:

    lowrank  s = relu(x·Aᵀ)·Bᵀ + b   trained with BCE on the labels (DejaVu / PowerInfer); `predictor_train.py`
    svd      s = (x·Aᵀ)·Bᵀ           truncated SVD of W_gate C^½ (A = S_r V_rᵀ C^-½, B = U_r; C = E[x xᵀ] on the
                                     calibration rows, as ASVD / SVD-LLM: the error is small where x lives):
                                     predicts the gate pre-activation, training-free
    sign     s = sign agreements − disagreements of x and each W_gate row (SparseInfer), training-free;
                                     the cutoff is its margin
    bound    s = x·deq(W8)ᵀ + c·‖x‖₂  an int8 gate copy and a per-neuron error bound (`certified_gate.py`): recall
                                     1 by construction, no calibration; the cutoff is the gate's own (0)
    quant    s = x·deq(W4)ᵀ           a quantized shadow of W_gate (q4_0: 4.5 bits a weight, 4.7% of an fp32 MLP):
                                     predicts the gate pre-activation itself, training-free; the cutoff is
                                     calibrated (the lossy sibling of bound). quant8: the same in q8_0 (8.5 bits)

dReLU blocks (relu on the up projection too) fire only where gate AND up are positive: there svd, sign and quant
predict both (svd: one low-rank factor of [W_gate; W_up], sign: two sign tests, quant: two shadows) and score a neuron
min(s_gate, s_up + t_g − t_u), which exceeds t_g exactly when s_gate > t_g and s_up > t_u. The pair (t_g, t_u) is
the one with the fewest predicted neurons at the target recall (`cutoffs_for_recall_and`). Gate-only predicts at
least every neuron whose gate is positive (about twice the active ones in a relufied SwiGLU model).

Recall is what a ReLU-family model loses by (a neuron predicted active whose gate is <= 0 still adds exactly 0),
so the cutoff is chosen per layer as the largest with recall >= the target on held-out calibration rows (lowrank
trains on the other rows; the quant kinds aim a little above the target, `Kind.margin`). Ranks come from a byte
budget shared by the layers in proportion to their density (1 − sparsity): denser layers are harder to predict and
get more rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ActsparseError
from ..ir.predictor import PREDICTORS, pack_sign_bits, sign_scores
from ..ir.quant import dequantize, quantize
from .certified_gate import certified_scores, certify_gate

MIN_TRAIN_TOKENS = 256    # lowrank: fewer rows than this do not train a predictor worth its bytes
MIN_CUTOFF_TOKENS = 32    # any kind: rows to place the cutoff on
RANK_MULTIPLE = 8
QUANT_MARGIN = 0.2        # quant kinds: at recall 0.95 the cutoff is placed at 0.96 (`Kind.margin`)


class PredictorError(ActsparseError):
    """A predictor cannot be built for a block: no or too little calibration data, or the recall is unreachable."""


@dataclass(frozen=True)
class Fitted:
    kind: str
    arrays: dict = field(repr=False)     # lowrank: A [r, d], B [n, r], b [n]; svd: A, B; sign: bits [n, words];
    #                                      quant: w (a quantized blob); AND (dReLU): svd B_up [n, r], sign bits_up,
    #                                      quant w_up; all shift [n] = t_g − t_u
    rank: int | None                     # None for sign (it keeps one bit per weight)
    cutoff: float
    recall: float                        # on the rows the cutoff was chosen on
    predicted_sparsity: float            # share of neurons predicted inactive on those rows
    d: int

    def parts(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """(s_gate,) or, for an AND predictor, (s_gate, s_up) before the shift."""
        return KINDS[self.kind].parts(self, np.asarray(x, np.float32))

    def scores(self, x: np.ndarray) -> np.ndarray:
        parts = self.parts(x)
        return parts[0] if len(parts) == 1 else np.minimum(parts[0], parts[1] + self.arrays["shift"])

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))


def _lowrank_parts(p: Fitted, x):
    return (np.maximum(x @ p.arrays["A"].T.astype(np.float32), 0) @ p.arrays["B"].T.astype(np.float32)
            + p.arrays["b"],)


def _svd_parts(p: Fitted, x):
    hidden = x @ p.arrays["A"].T.astype(np.float32)
    return tuple(hidden @ p.arrays[b].T.astype(np.float32) for b in ("B", "B_up") if b in p.arrays)


def _sign_parts(p: Fitted, x):
    return tuple(sign_scores(x, p.arrays[b], p.d) for b in ("bits", "bits_up") if b in p.arrays)


def _fit_lowrank(w_gate, w_up, rows, active, rank, options):
    from .predictor_train import train_lowrank

    return train_lowrank(rows, active, rank, **options)


def _whitening(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C^½, C^-½) of C = E[x xᵀ] over the rows, shrunk toward its diagonal by d / tokens (fewer rows than d
    leave most directions unseen: whitening them would amplify noise) and its small eigenvalues floored."""
    x = np.asarray(rows, np.float64)
    covariance = x.T @ x / max(len(x), 1)
    shrink = min(1.0, x.shape[1] / max(len(x), 1))
    covariance = (1 - shrink) * covariance + shrink * np.diag(np.diag(covariance))
    values, vectors = np.linalg.eigh(covariance)
    values = np.maximum(values, 1e-6 * max(values.max(), 1e-30))
    return (vectors * np.sqrt(values)) @ vectors.T, (vectors / np.sqrt(values)) @ vectors.T


def _fit_svd(w_gate, w_up, rows, active, rank, options):
    import torch

    stacked = np.asarray(w_gate, np.float32) if w_up is None else np.concatenate([w_gate, w_up]).astype(np.float32)
    root, inverse_root = _whitening(rows)
    w = torch.from_numpy(np.ascontiguousarray(stacked @ root, np.float32))
    if min(w.shape) <= 1024:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        u, s, v = u[:, :rank], s[:rank], vh[:rank].T
    else:  # randomized (Halko et al.): the top-r subspace of a 4096 x 14336 matrix in seconds
        u, s, v = torch.svd_lowrank(w, q=min(rank + 16, min(w.shape)), niter=3)
        u, s, v = u[:, :rank], s[:rank], v[:, :rank]
    a = ((s[:, None] * v.T).numpy().astype(np.float64) @ inverse_root).astype(np.float32)
    b = u.contiguous().numpy()
    n = w_gate.shape[0]
    return {"A": a, "B": np.ascontiguousarray(b[:n])} | ({} if w_up is None else {"B_up": np.ascontiguousarray(b[n:])})


def _fit_sign(w_gate, w_up, rows, active, rank, options):
    bits = {"bits": pack_sign_bits(np.asarray(w_gate, np.float32))}
    return bits if w_up is None else bits | {"bits_up": pack_sign_bits(np.asarray(w_up, np.float32))}


def _fit_bound(w_gate, w_up, rows, active, rank, options):
    return certify_gate(w_gate)


def _bound_parts(p: Fitted, x):
    return (certified_scores(p.arrays, x),)


# the shadow's quantization rule per layout: q4_0 by the scale search of `quantize="int4"` (a quarter less error
# than ggml's max-abs rule), q8_0 by ggml's
SHADOW_RULES = {"q4_0": "int4", "q8_0": "q8_0"}
SHADOW_CHUNK = 2048   # rows quantized at a time: Mistral's 14336 x 4096 gate in one go needs ~1.5 GB of temporaries


def _shadow(w: np.ndarray, layout: str) -> np.ndarray:
    w = np.asarray(w, np.float32)
    return np.concatenate([quantize(w[i:i + SHADOW_CHUNK], SHADOW_RULES[layout]).blob
                           for i in range(0, max(len(w), 1), SHADOW_CHUNK)])


def _quant_fit(layout: str):
    def fit(w_gate, w_up, rows, active, rank, options):
        shadow = {"w": _shadow(w_gate, layout)}
        return shadow if w_up is None else shadow | {"w_up": _shadow(w_up, layout)}
    return fit


def _quant_parts(p: Fitted, x):
    layout = KINDS[p.kind].layout
    return tuple(x @ dequantize(p.arrays[w], layout, p.d).T for w in ("w", "w_up") if w in p.arrays)


@dataclass(frozen=True)
class Kind:
    fit: object          # (w_gate, w_up or None, rows, active, rank, options) -> arrays; w_up given: predict AND
    parts: object        # (Fitted, x) -> ([tokens, n_ff],) or (gate, up) scores of an AND predictor
    trains: bool         # holds rows out for the cutoff, needs MIN_TRAIN_TOKENS
    ranked: bool
    predicts_and: bool   # predicts gate and up of a dReLU block (the trained kind learns the AND from the labels)
    calibrated: bool = True  # False: certified (never misses an active neuron), needs no calibration data
    layout: str | None = None  # quant kinds: the layout of the gate's shadow copy (ir/quant.py)
    # how sparsify-predictor writes the scores into the graph (its SCORE_GRAPHS): "factors" (ops on the fitted
    # arrays), "shadow" (the quantized gate copy's linear), "certified" (int8 copy + error bound, certified_gate.py)
    scores: str = "factors"
    # share of the miss budget (1 − recall) kept in reserve: the cutoff is placed at recall + margin·(1 − recall) on
    # the calibration rows, since new text misses a little more (SmolLM2: 95% there was 94.3–95.5% held out)
    margin: float = 0.0


KINDS = {
    "lowrank": Kind(_fit_lowrank, _lowrank_parts, trains=True, ranked=True, predicts_and=False),
    "svd": Kind(_fit_svd, _svd_parts, trains=False, ranked=True, predicts_and=True),
    "sign": Kind(_fit_sign, _sign_parts, trains=False, ranked=False, predicts_and=True),
    "bound": Kind(_fit_bound, _bound_parts, trains=False, ranked=False, predicts_and=False, calibrated=False,
                  scores="certified"),
    "quant": Kind(_quant_fit("q4_0"), _quant_parts, trains=False, ranked=False, predicts_and=True, layout="q4_0",
                  margin=QUANT_MARGIN, scores="shadow"),
    "quant8": Kind(_quant_fit("q8_0"), _quant_parts, trains=False, ranked=False, predicts_and=True, layout="q8_0",
                   margin=QUANT_MARGIN, scores="shadow"),
}
assert tuple(KINDS) == PREDICTORS


def allocate_ranks(densities: list[float], d: int, n_ff: list[int] | int, budget: float,
                   outputs: list[int] | None = None) -> list[int]:
    """Per-layer ranks sharing `budget` (a fraction of the blocks' MLP bytes) in proportion to density; a rank
    costs d + outputs + 1 weights (outputs: n_ff, or 2 n_ff for an AND predictor's stacked factor)."""
    n_ffs = [n_ff] * len(densities) if isinstance(n_ff, int) else list(n_ff)
    outputs = n_ffs if outputs is None else list(outputs)
    total = budget * sum(3 * d * n for n in n_ffs)                      # in weights, all layers together
    weights = np.maximum(np.asarray(densities, np.float64), 1e-3)
    share = weights / weights.sum()
    ranks = []
    for s, n, out in zip(share, n_ffs, outputs):
        r = int(total * s / (d + out + 1)) // RANK_MULTIPLE * RANK_MULTIPLE
        ranks.append(int(min(max(r, RANK_MULTIPLE), min(d, n))))
    return ranks


def cutoff_for_recall(scores: np.ndarray, active: np.ndarray, recall: float) -> float:
    """The largest cutoff t with recall(scores > t) >= `recall` on these rows (active: bool labels)."""
    positive = np.sort(scores[active].astype(np.float64))
    if positive.size == 0:
        return float(scores.max())          # nothing fires here: predict nothing
    allowed_misses = int(np.floor((1.0 - recall) * positive.size + 1e-9))
    return float(np.nextafter(np.float32(positive[allowed_misses]), np.float32(-np.inf)))


def cutoffs_for_recall_and(gate: np.ndarray, up: np.ndarray, active: np.ndarray, recall: float,
                           grid: int = 32) -> tuple[float, float]:
    """(t_g, t_u) with recall((gate > t_g) & (up > t_u)) >= `recall` and the fewest predicted neurons on these rows:
    t_g lets 0 .. (1 − recall) of the active ones go (`grid` steps), t_u is then the largest reaching the recall."""
    positive_gate, positive_up = gate[active], up[active]
    if positive_gate.size == 0:
        return float(gate.max()), float(up.max())
    needed = int(np.ceil(recall * positive_gate.size - 1e-9))
    by_gate = np.sort(positive_gate)
    best = None
    for q in np.linspace(0.0, 1.0 - recall, grid):
        t_g = np.nextafter(np.float32(by_gate[int(np.floor(q * by_gate.size + 1e-9))]), np.float32(-np.inf))
        kept = np.sort(positive_up[positive_gate > t_g])
        if kept.size < needed or needed == 0:
            continue
        t_u = np.nextafter(np.float32(kept[kept.size - needed]), np.float32(-np.inf))
        count = int(np.count_nonzero((gate > t_g) & (up > t_u)))
        if best is None or count < best[0]:
            best = (count, float(t_g), float(t_u))
    return (float(gate.min()) - 1.0, float(up.min()) - 1.0) if best is None else best[1:]


def certified_block(kind: str, w_gate: np.ndarray, cutoff: float) -> Fitted:
    """A predictor that needs no calibration (`Kind.calibrated` False): its scores exceed `cutoff` (the gate's own:
    0, FATReLU's threshold) for every neuron whose gate may exceed it, so its recall is 1."""
    arrays = KINDS[kind].fit(w_gate, None, None, None, None, None)
    return Fitted(kind, arrays, None, float(cutoff), 1.0, 0.0, w_gate.shape[1])


def fit_block(kind: str, location: str, w_gate: np.ndarray, rows: np.ndarray, active: np.ndarray, rank: int,
              recall: float, min_sparsity: float = 0.0, seed: int = 0, options: dict | None = None,
              w_up: np.ndarray | None = None, gate_only_rank: int | None = None) -> Fitted:
    """Fit one block's predictor and place its cutoff at `recall` (see the module docstring). `w_up` (dReLU blocks):
    the training-free kinds predict gate AND up; with `gate_only_rank` (the gate-only rank of the same bytes) the
    gate-only predictor is fitted too and the one predicting fewer neurons at the recall is kept."""
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
    w_up = w_up if spec.predicts_and else None
    options = {"seed": seed, "desc": location, **(options or {})}
    fitted = _fit_and_cut(kind, w_gate, w_up, rows, active, rank, recall, train, held, options)
    if w_up is not None and gate_only_rank:   # at a small byte budget the gate-only factor can win: keep the better
        alone = _fit_and_cut(kind, w_gate, None, rows, active, gate_only_rank, recall, train, held, options)
        fitted = alone if alone.predicted_sparsity > fitted.predicted_sparsity else fitted
    rank, predicted_sparsity = fitted.rank, fitted.predicted_sparsity
    if predicted_sparsity < min_sparsity:
        raise PredictorError(
            f"{location}: the {kind} predictor{'' if rank is None or not spec.ranked else f' (rank {rank})'} reaches "
            f"recall {recall:.1%} only by predicting {1 - predicted_sparsity:.1%} of the neurons active, more than "
            f"the {1 - min_sparsity:.1%} allowed (sparsity={min_sparsity}); lower the recall, allow less sparsity, "
            "give the predictor more bytes (predictor_budget) or pick another predictor")
    return fitted


def _fit_and_cut(kind, w_gate, w_up, rows, active, rank, recall, train, held, options) -> Fitted:
    spec = KINDS[kind]
    recall = recall + spec.margin * (1.0 - recall)
    arrays = spec.fit(w_gate, w_up, rows[train], active[train], rank, options)
    fitted = Fitted(kind, arrays, rank if spec.ranked else None, 0.0, 0.0, 0.0, w_gate.shape[1])
    parts, labels = fitted.parts(rows[held]), active[held]
    if len(parts) == 1:
        scores, cutoff = parts[0], cutoff_for_recall(parts[0], labels, recall)
    else:
        cutoff, t_up = cutoffs_for_recall_and(*parts, labels, recall)
        arrays = arrays | {"shift": np.full(parts[0].shape[-1], cutoff - t_up, np.float32)}
        scores = np.minimum(parts[0], parts[1] + arrays["shift"])
    predicted = scores > cutoff
    got = float((predicted & labels).sum() / max(labels.sum(), 1))
    return Fitted(kind, arrays, fitted.rank, cutoff, got, 1.0 - float(predicted.mean()), w_gate.shape[1])
