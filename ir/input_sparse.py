"""Semantics of `sparse_gated_mlp` in input mode (mode='input'): TEAL / WINA input sparsity of every projection.

Threshold mode (threshold.py) decides per neuron; input mode decides per *input channel* of each matmul, so a
skipped entry saves a whole weight column (TEAL): gate and up skip the columns of inactive x entries, down the
rows of inactive h entries. Inputs and layout (the kernels read one contiguous row per skipped unit):

    x [..., d],  w_gate_t [d, n_ff],  w_up_t [d, n_ff]   (gate / up TRANSPOSED: input channel i is row i)
    w_down_t [n_ff, d]                                   (down transposed as in every sparse mode)
    x_thr [d],  h_thr [n_ff]                             per-channel thresholds (float32)

Per token:

    keep_x  = |x_i| > x_thr_i                     (x_keep = k > 0: the k largest |x_i| / x_thr_i instead, below)
    x'      = where(keep_x, x, 0)
    a       = act_g(x'·w_gate_t);   h = a ⊙ act_u(x'·w_up_t)
    score_j = |h_j| (criterion 'product', TEAL)  or |a_j| (criterion 'gate', CATS on the down input)
    keep_h  = score_j > h_thr_j                   (h_keep = k > 0: the k largest score_j / h_thr_j)
    y       = where(keep_h, h, 0)·w_down_t

Per-channel thresholds hold every method in one form: TEAL's per-matrix magnitude threshold t is the constant
vector t; WINA's weight-informed score |x_i|·‖W[:, i]‖₂ > t is x_thr_i = t / ‖W[:, i]‖₂. Top-k (a fixed count
per token: stable latency) ranks the same ratios. `x_thr_i = 0` keeps every nonzero entry (no x sparsity).
Top-k keeps every ratio >= the k-th largest (a tie at the k-th value keeps all of its entries: which of equal
ratios to drop would be arbitrary, and the kernels' radix select finds the k-th value, not an order) and no ratio of
0 or NaN (nothing to add, or no number); the thresholds are clamped to >= 1e-30 before the division.
"""

from __future__ import annotations

import numpy as np

from .activations import apply, reads_input

INPUT_CRITERIA = ("product", "gate")
INPUT_ATTRS = {"x_keep": 0, "h_keep": 0}


def keep_mask(values: np.ndarray, thr: np.ndarray, keep: int) -> np.ndarray:
    """|values| > thr, or (keep > 0) the `keep` largest |values| / thr along the last axis."""
    magnitude = np.abs(values)
    if keep <= 0:
        return magnitude > thr
    with np.errstate(invalid="ignore"):
        ratio = (magnitude / np.maximum(thr, np.float32(1e-30))).astype(np.float32)
    ratio = np.where(np.isnan(ratio), np.float32(0), ratio)
    k = min(keep, values.shape[-1])
    kth = np.partition(ratio, -k, axis=-1)[..., -k:][..., :1]   # the k-th largest of each row
    return (ratio >= kth) & (ratio > 0)


def input_sparse_parts(x, w_gate_t, w_up_t, x_thr, h_thr, attrs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keep_x, keep_h, h): the masks and the masked intermediate of the module docstring."""
    keep_x = keep_mask(x, x_thr, attrs.get("x_keep", 0))
    xs = np.where(keep_x, x, 0).astype(np.float32)
    a = apply(attrs["gate_act"], xs @ w_gate_t.astype(np.float32), attrs.get("threshold", 0.0))
    h = a * apply(attrs["up_act"], xs @ w_up_t.astype(np.float32))
    score = a if attrs.get("criterion", "product") == "gate" else h
    keep_h = keep_mask(score, h_thr, attrs.get("h_keep", 0))
    return keep_x, keep_h, np.where(keep_h, h, 0).astype(np.float32)


def input_intermediate(x, w_gate_t, w_up_t, extras, attrs, b_gate=None, b_up=None) -> np.ndarray:
    """h of the "input" entry of sparse_variants.py (extras: x_thr, h_thr; no biases in this layout)."""
    return input_sparse_parts(x, w_gate_t, w_up_t, extras["x_thr"], extras["h_thr"], attrs)[2].astype(x.dtype)


def input_measure(x, w_gate_t, w_up_t, extras, attrs, h) -> dict:
    """Report fields on the example inputs: x's own sparsity and the effective one (weight bytes not read:
    gate + up behind x (gate alone for a `unit` up), down behind h, equal-size matrices; less the bytes of a
    rotation in front, if any)."""
    keep_x, keep_h, _ = input_sparse_parts(x, w_gate_t, w_up_t, extras["x_thr"], extras["h_thr"], attrs)
    sx, sh = float(1 - keep_x.mean()), float(1 - keep_h.mean())
    behind_x = 2 if reads_input(attrs["up_act"]) else 1   # a non-gated MLP's `unit` up: no up matrix read
    return {"input_sparsity": sx, "effective_sparsity": (behind_x * sx + sh) / (behind_x + 1)
            - float(attrs.get("rotation_share", 0.0))}


def input_sparse_reference(x, w_gate_t, w_up_t, w_down_t, x_thr, h_thr, attrs) -> np.ndarray:
    _, _, h = input_sparse_parts(x, w_gate_t, w_up_t, x_thr, h_thr, attrs)
    return (h @ w_down_t.astype(np.float32)).astype(x.dtype)


def input_sparse_torch(x, w_gate, w_up, w_down, x_thr, h_thr, attrs, act_g):
    """The same semantics in torch on the model's own weights ([out, in], as nn.Linear holds them): the forward
    hooks of the quality benchmarks, so perplexity needs no compile. `act_g` is the model's gate activation."""
    import torch

    def mask(values, thr, keep):
        magnitude = values.abs()
        if keep <= 0:
            return magnitude > thr
        ratio = magnitude / thr.clamp_min(1e-30)
        ratio = torch.where(ratio.isnan(), 0.0, ratio)
        kth = ratio.topk(min(keep, ratio.shape[-1]), dim=-1).values[..., -1:]
        return (ratio >= kth) & (ratio > 0)

    xs = torch.where(mask(x, x_thr, attrs.get("x_keep", 0)), x, 0)
    a = act_g(xs @ w_gate.T)
    u = xs @ w_up.T
    h = a * (u.relu() if attrs["up_act"] == "relu" else u)
    score = a if attrs.get("criterion", "product") == "gate" else h
    return torch.where(mask(score, h_thr, attrs.get("h_keep", 0)), h, 0) @ w_down.T


def threshold_torch(x, w_gate, w_up, w_down, attrs, act_g):
    """Threshold mode (the "threshold" entry of sparse_variants.py) in torch on the model's own weights."""
    import torch

    a, u = act_g(x @ w_gate.T), x @ w_up.T
    t = attrs["threshold"]
    if attrs.get("criterion", "gate") == "gate":
        a = torch.where(a.abs() > t, a, 0)
    h = a * (u.relu() if attrs.get("up_act") == "relu" else u)
    if attrs.get("criterion", "gate") == "product":
        h = torch.where(h.abs() > t, h, 0)
    return h @ w_down.T
