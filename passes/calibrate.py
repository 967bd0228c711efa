"""Calibration for threshold mode: per-block activation statistics from sample inputs, and the thresholds.

The graph (after `detect-gated-mlp`) runs on each calibration input in the numpy reference interpreter, keeping
the input x of every `gated_mlp`; up to `max_tokens` rows of x per block are kept (a uniform sample: each row
draws a random key and the smallest keys stay). From those rows every method is a quantile at the target
sparsity s, per block, so each layer hits the target:

    cats   t = quantile(|act(g)|, s)                       -> criterion 'gate'
    topk   t = quantile(|act(g)·act_u(u)|, s)              -> criterion 'product' (TurboSparse's top-k% kept)
    teal   t_x = quantile(|x|, s), then with x masked to |x| > t_x:
           t = quantile(|act(g)·act_u(u)|, s)              -> criterion 'product' + an input mask

Calibration runs the dense model, so errors do not compound across layers while calibrating (as in CATS and
TEAL). Empty calibration data, inputs that do not match the graph, and NaN/inf inputs or activations are errors
that say which sample or block.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import ActsparseError
from ..ir import Graph, Node, evaluate
from ..ir.activations import apply
from ..ir.mlp import unpack_gated_inputs
from ..ir.sparse_variants import intermediate

METHODS = ("cats", "teal", "topk")


class CalibrationError(ActsparseError):
    """Calibration data is missing, malformed, or produces non-finite activations."""


@dataclass(frozen=True)
class Calibrated:
    threshold: float            # on |act(g)| ('gate') or |h| ('product')
    criterion: str              # 'gate' | 'product'
    input_threshold: float      # TEAL: x entries with |x| <= input_threshold are zeroed (0: no input mask)
    sparsity: float             # exact-zero fraction of h on the calibration rows, with these thresholds
    tokens: int                 # calibration rows the thresholds were chosen on


def calibration_samples(calibration, n_inputs: int | None = None) -> list[tuple[np.ndarray, ...]]:
    """Iterable of input tuples (torch or numpy; a bare array is a 1-tuple) -> list of numpy tuples, checked."""
    if calibration is None:
        raise CalibrationError("mode='threshold' needs calibration data: pass calibration=[(input_ids,), ...], an "
                               "iterable of input tuples like example_inputs (a few hundred tokens or more)")
    if isinstance(calibration, np.ndarray) or type(calibration).__module__.startswith("torch"):
        raise CalibrationError("calibration must be an iterable of input tuples, e.g. [(ids0,), (ids1,)], not one "
                               "array")
    samples = []
    for i, sample in enumerate(calibration):
        sample = tuple(sample) if isinstance(sample, (tuple, list)) else (sample,)
        arrays = tuple(_to_numpy(a) for a in sample)
        if n_inputs is not None and len(arrays) != n_inputs:
            raise CalibrationError(f"calibration sample {i} has {len(arrays)} inputs, the model takes {n_inputs}")
        for a in arrays:
            if a.size == 0:
                raise CalibrationError(f"calibration sample {i} has an empty input of shape {a.shape}")
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                raise CalibrationError(f"calibration sample {i} contains NaN or inf; calibration data must be finite")
        samples.append(arrays)
    if not samples:
        raise CalibrationError("calibration data is empty: pass at least one input tuple (a few hundred tokens or "
                               "more give stable thresholds)")
    return samples


def _to_numpy(x) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def collect_inputs(graph: Graph, blocks: list[Node], samples, max_tokens: int = 4096, seed: int = 0,
                   progress: bool = True) -> list[np.ndarray]:
    """Rows of each block's input x ([tokens, d], at most max_tokens, uniformly sampled) over the samples."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    kept: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(blocks)   # (keys, rows) per block
    for i, arrays in enumerate(tqdm(samples, desc="calibrate", unit="sample", disable=not progress or None)):
        try:
            values = evaluate(graph, arrays, keep=[b.inputs[0] for b in blocks])[len(graph.outputs):]
        except ValueError as err:
            raise CalibrationError(f"calibration sample {i} does not fit the model: {err}") from None
        for b, (block, x) in enumerate(zip(blocks, values)):
            rows = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
            if not np.isfinite(rows).all():
                raise CalibrationError(f"calibration sample {i} gives NaN/inf activations at the input of "
                                       f"{block.loc or 'a gated MLP'}; check the model and the calibration data")
            keys = rng.random(len(rows))
            if kept[b] is not None:
                keys, rows = np.concatenate([kept[b][0], keys]), np.concatenate([kept[b][1], rows])
            if len(rows) > max_tokens:
                keep = np.argpartition(keys, max_tokens)[:max_tokens]
                keys, rows = keys[keep], rows[keep]
            kept[b] = (keys, rows)
    return [k[1] for k in kept]


def _quantile(values: np.ndarray, s: float) -> float:
    return float(np.quantile(values.ravel(), s))


def calibrate_block(block: Node, weights: dict[str, np.ndarray], rows: np.ndarray, method: str,
                    sparsity: float) -> Calibrated:
    """Thresholds of one gated_mlp block from its calibration input rows, for `method` at target `sparsity`."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; valid methods: {', '.join(METHODS)}")
    attrs = {"threshold": 0.0, "fused": False, "gate_first": True, **block.attrs}
    arrays = [rows, *(weights[w.attrs["name"]] for w in block.inputs[1:])]
    x, w_gate, w_up, _, b_gate, b_up = unpack_gated_inputs(arrays, attrs)
    input_threshold = 0.0
    if method == "teal":
        input_threshold = _quantile(np.abs(x), sparsity)
        x = np.where(np.abs(x) > input_threshold, x, 0).astype(x.dtype)
    g, u = x @ w_gate.T.astype(x.dtype), x @ w_up.T.astype(x.dtype)
    g, u = (g if b_gate is None else g + b_gate), (u if b_up is None else u + b_up)
    a = apply(attrs["gate_act"], g, attrs["threshold"])
    criterion = "gate" if method == "cats" else "product"
    t = _quantile(np.abs(a if criterion == "gate" else a * apply(attrs["up_act"], u)), sparsity)
    if attrs["gate_act"] == "fatrelu":
        t = max(t, attrs["threshold"])   # FATReLU already zeroes g <= its own threshold
    final = threshold_attrs(attrs, t, criterion)
    h = intermediate(x, w_gate, w_up, {}, final, b_gate, b_up)
    return Calibrated(t, criterion, input_threshold, float(np.mean(h == 0)), len(rows))


def threshold_attrs(attrs: dict, threshold: float, criterion: str) -> dict:
    """The sparse_gated_mlp attrs of a block in threshold mode (a ReLU-family gate becomes FATReLU at t)."""
    gate_act = attrs["gate_act"]
    if gate_act == "fatrelu" and criterion == "product" and attrs.get("threshold", 0.0) != 0.0:
        raise ActsparseError("a FATReLU block has its own threshold; calibrate it with method='cats' "
                             "(criterion 'gate'), or compile it in mode='exact'")
    if gate_act in ("relu", "fatrelu") and criterion == "gate":
        gate_act = "fatrelu"
    return {"gate_act": gate_act, "up_act": attrs["up_act"], "mode": "threshold", "threshold": float(threshold),
            "criterion": criterion}


def calibrate(graph: Graph, blocks: list[Node], calibration: Iterable, method: str, sparsity: float,
              max_tokens: int = 4096, progress: bool = True) -> list[Calibrated]:
    """Thresholds for every block from the calibration inputs (see the module docstring)."""
    samples = calibration_samples(calibration, len(graph.inputs))
    rows = collect_inputs(graph, blocks, samples, max_tokens, progress=progress)
    return [calibrate_block(b, graph.weights, r, method, sparsity) for b, r in zip(blocks, rows)]
