"""Semantics of `sparse_gated_mlp` in threshold mode (mode='threshold'): training-free activation sparsity.

A SwiGLU/GeGLU neuron is never exactly zero, but most are small; threshold mode declares a neuron inactive for a
token when its activation is at most `threshold` in magnitude, and skips it like an exactly-zero one:

    criterion 'gate'     (CATS)            a = act_g(g);  a = a if |a| > t else 0;   h = a · act_u(u)
    criterion 'product'  (TurboSparse top-k% of |act(g)·u|, TEAL's intermediate)
                                           h = act_g(g) · act_u(u);  h = h if |h| > t else 0
    y = h · W_down

with g = x·Wgᵀ, u = x·Wuᵀ. A ReLU-family gate in threshold mode is FATReLU at the same t (the pass sets
gate_act='fatrelu', threshold=t), for which the 'gate' mask changes nothing: |fatrelu(g, t)| > t iff g > t.
In exact mode (the default) `criterion` is unused and the op is the plain gated MLP.
"""

from __future__ import annotations

import numpy as np

from .input_sparse import input_sparse_reference
from .mlp import apply_gate_act, apply_up_act, intermediate

CRITERIA = ("gate", "product")
THRESHOLD_ATTRS = {"criterion": "gate"}


def sparse_intermediate(x, w_gate, w_up, attrs, b_gate=None, b_up=None) -> np.ndarray:
    """h = act_gate(x·Wgᵀ) ⊙ act_up(x·Wuᵀ), thresholded as the attrs say (mode 'threshold'), shape [..., n_ff]."""
    if attrs.get("mode") != "threshold":
        return intermediate(x, w_gate, w_up, attrs, b_gate, b_up)
    criterion, t = attrs.get("criterion", "gate"), attrs["threshold"]
    if criterion not in CRITERIA:
        raise ValueError(f"unknown threshold criterion {criterion!r}; known: {CRITERIA}")
    g, u = x @ w_gate.T.astype(x.dtype), x @ w_up.T.astype(x.dtype)
    g, u = (g if b_gate is None else g + b_gate), (u if b_up is None else u + b_up)
    a = apply_gate_act(g, attrs["gate_act"], t)
    if criterion == "gate":
        a = np.where(np.abs(a) > t, a, 0)
    h = a * apply_up_act(u, attrs["up_act"])
    if criterion == "product":
        h = np.where(np.abs(h) > t, h, 0)
    return h.astype(x.dtype)


def sparse_gated_mlp_reference(*args):
    """Every mode's reference: input mode (input_sparse.py) takes two threshold vectors after the weights."""
    (x, w_gate, w_up, w_down_t, *thresholds), attrs = args[:-2], args[-2]
    if attrs.get("mode") == "input":
        return input_sparse_reference(x, w_gate, w_up, w_down_t, *thresholds, attrs)
    return (sparse_intermediate(x, w_gate, w_up, attrs) @ w_down_t.astype(x.dtype)).astype(x.dtype)


def threshold_torch(x, w_gate, w_up, w_down, attrs, act_g):
    """Threshold mode in torch on the model's own [out, in] weights (the quality benchmarks' forward hooks)."""
    import torch

    a, u = act_g(x @ w_gate.T), x @ w_up.T
    t = attrs["threshold"]
    if attrs.get("criterion", "gate") == "gate":
        a = torch.where(a.abs() > t, a, 0)
    h = a * (u.relu() if attrs.get("up_act") == "relu" else u)
    if attrs.get("criterion", "gate") == "product":
        h = torch.where(h.abs() > t, h, 0)
    return h @ w_down.T
