"""Semantics of the gated-MLP ops that passes introduce.

`gated_mlp` is the canonical form of a detected block: y = (act_gate(x·Wgᵀ) ⊙ act_up(x·Wuᵀ))·Wdᵀ.
The pattern name is derived from the activation pair, so the report and the sparsifier agree on it:

    gate_act  up_act     pattern
    silu      identity   swiglu      (Llama, Mistral, Qwen)
    gelu      identity   geglu       (Gemma; gelu_tanh too)
    relu      identity   reglu       (ProSparse)
    relu      relu       drelu       (TurboSparse)
    fatrelu   identity   fatrelu     (where(g > t, g, 0))

Only the last three are exactly sparse: a neuron whose gate activation is 0 contributes nothing, so its up and
down rows need not be read.

Inputs: `x, w_gate, w_up, w_down` or, fused, `x, w_gate_up, w_down` (weights [out, in]). With `bias=True` the
gate/up biases follow: `b_gate, b_up` (fused: `b_gate_up`), inside the activations: act(x·Wgᵀ + bg). A down
bias is not part of the op: detection leaves it as an `add` after the block. `expert` is the expert index of
an MoE block (-1 for a dense layer); it is provenance for the report, the math does not depend on it.
"""

from __future__ import annotations

import numpy as np

from .types import TensorType

GATE_ACTS = ("silu", "gelu", "gelu_tanh", "relu", "fatrelu")
UP_ACTS = ("identity", "relu")
RELU_FAMILY = ("relu", "fatrelu")

GATED_MLP_ATTRS = {"gate_act": "silu", "up_act": "identity", "threshold": 0.0, "fused": False,
                   "gate_first": True, "expert": -1, "bias": False}
SPARSE_GATED_MLP_ATTRS = {"gate_act": "relu", "up_act": "identity", "threshold": 0.0, "mode": "exact",
                          "pattern": "reglu", "expert": -1}


def pattern_name(gate_act: str, up_act: str) -> str:
    if gate_act == "fatrelu":
        return "fatrelu"
    if gate_act == "relu":
        return "drelu" if up_act == "relu" else "reglu"
    if gate_act == "silu":
        return "swiglu" if up_act == "identity" else "silu-relu"
    return "geglu" if up_act == "identity" else "gelu-relu"


def is_exactly_sparse(gate_act: str) -> bool:
    return gate_act in RELU_FAMILY


def apply_gate_act(g: np.ndarray, kind: str, threshold: float = 0.0) -> np.ndarray:
    if kind == "relu":
        return np.maximum(g, 0)
    if kind == "fatrelu":
        return np.where(g > threshold, g, 0).astype(g.dtype)
    if kind == "silu":
        return g / (1 + np.exp(-g))
    if kind in ("gelu", "gelu_tanh"):
        from .ops import _gelu

        return _gelu(g, "tanh" if kind == "gelu_tanh" else "none")
    raise ValueError(f"unknown gate activation {kind!r}; known: {GATE_ACTS}")


def apply_up_act(u: np.ndarray, kind: str) -> np.ndarray:
    return np.maximum(u, 0) if kind == "relu" else u


def split_fused(w_gate_up: np.ndarray, gate_first: bool) -> tuple[np.ndarray, np.ndarray]:
    n = w_gate_up.shape[0] // 2
    first, second = w_gate_up[:n], w_gate_up[n:]
    return (first, second) if gate_first else (second, first)


def intermediate(x, w_gate, w_up, attrs, b_gate=None, b_up=None) -> np.ndarray:
    """The activations h = act_gate(x·Wgᵀ + bg) ⊙ act_up(x·Wuᵀ + bu), shape [..., n_ff] (what sparsity is
    measured on)."""
    g, u = x @ w_gate.T.astype(x.dtype), x @ w_up.T.astype(x.dtype)
    g, u = (g if b_gate is None else g + b_gate), (u if b_up is None else u + b_up)
    h = apply_gate_act(g, attrs["gate_act"], attrs["threshold"]) * apply_up_act(u, attrs["up_act"])
    return h.astype(x.dtype)


def unpack_gated_inputs(arrays, attrs):
    """A gated_mlp's input arrays -> (x, w_gate, w_up, w_down, b_gate, b_up); biases None without `bias`."""
    if attrs["fused"]:
        x, w_gate_up, w_down, *bias = arrays
        w_gate, w_up = split_fused(w_gate_up, attrs["gate_first"])
        b_gate, b_up = split_fused(bias[0], attrs["gate_first"]) if bias else (None, None)
        return x, w_gate, w_up, w_down, b_gate, b_up
    x, w_gate, w_up, w_down, *bias = arrays
    return (x, w_gate, w_up, w_down, *(bias or (None, None)))


def gated_mlp_ref(*args):
    arrays, attrs = args[:-2], args[-2]
    x, w_gate, w_up, w_down, b_gate, b_up = unpack_gated_inputs(arrays, attrs)
    return (intermediate(x, w_gate, w_up, attrs, b_gate, b_up) @ w_down.T.astype(x.dtype)).astype(x.dtype)


def sparse_gated_mlp_ref(x, w_gate, w_up, w_down_t, attrs, env):
    return (intermediate(x, w_gate, w_up, attrs) @ w_down_t.astype(x.dtype)).astype(x.dtype)


def gated_mlp_type(types, attrs) -> TensorType:
    x = types[0]
    if attrs.get("fused"):
        w_gate_up, w_down = types[1], types[2]
        n_ff, d_in = w_gate_up.shape[0] // 2, w_gate_up.shape[1]
        d_out = w_down.shape[0]
    elif attrs.get("mode") == "input":  # input-sparse form: w_gate_t [d_in, n_ff], then x_thr [d_in], h_thr [n_ff]
        return _input_sparse_type(types)
    elif "pattern" in attrs:  # sparse form: w_down_t is [n_ff, d_out]
        n_ff, d_in = types[1].shape
        d_out = types[3].shape[1]
    else:
        n_ff, d_in = types[1].shape
        d_out = types[3].shape[0]
    if x.shape[-1] != d_in:
        raise TypeError(f"gated MLP input {x} does not match gate weight width {d_in}")
    n_weights = 3 if attrs.get("fused") else 4
    biases = types[n_weights:]
    n_biases = n_weights - 2 if attrs.get("bias") else 0
    if len(biases) != n_biases:
        raise TypeError(f"gated MLP with bias={attrs.get('bias', False)} takes {n_weights - 1} weights and "
                        f"{n_biases} biases, got {len(types) - 1} inputs after x")
    if any(b.shape != (types[1].shape[0],) for b in biases):
        raise TypeError(f"gated MLP biases {[str(b) for b in biases]} do not match the projections' width")
    return TensorType((*x.shape[:-1], d_out), x.dtype)



def _input_sparse_type(types) -> TensorType:
    x, w_gate_t, w_up_t, w_down_t, *thresholds = types
    d_in, n_ff = w_gate_t.shape
    if x.shape[-1] != d_in or w_up_t.shape != w_gate_t.shape or w_down_t.shape[0] != n_ff:
        raise TypeError(f"input-sparse gated MLP: x {x}, w_gate_t {w_gate_t}, w_up_t {w_up_t}, w_down_t {w_down_t} "
                        "do not fit ([d], [d, n_ff], [d, n_ff], [n_ff, d_out])")
    if [t.shape for t in thresholds] != [(d_in,), (n_ff,)]:
        raise TypeError(f"input-sparse gated MLP takes thresholds x_thr [{d_in}] and h_thr [{n_ff}], got "
                        f"{[str(t) for t in thresholds]}")
    return TensorType((*x.shape[:-1], w_down_t.shape[1]), x.dtype)
