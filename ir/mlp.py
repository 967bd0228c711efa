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
"""

from __future__ import annotations

import numpy as np

from .types import TensorType

GATE_ACTS = ("silu", "gelu", "gelu_tanh", "relu", "fatrelu")
UP_ACTS = ("identity", "relu")
RELU_FAMILY = ("relu", "fatrelu")

GATED_MLP_ATTRS = {"gate_act": "silu", "up_act": "identity", "threshold": 0.0, "fused": False,
                   "gate_first": True, "expert": -1}
SPARSE_GATED_MLP_ATTRS = {"gate_act": "relu", "up_act": "identity", "threshold": 0.0, "mode": "exact",
                          "pattern": "reglu"}


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


def intermediate(x, w_gate, w_up, attrs) -> np.ndarray:
    """The activations h = act_gate(x·Wgᵀ) ⊙ act_up(x·Wuᵀ), shape [..., n_ff] (what sparsity is measured on)."""
    g = apply_gate_act(x @ w_gate.T.astype(x.dtype), attrs["gate_act"], attrs["threshold"])
    u = apply_up_act(x @ w_up.T.astype(x.dtype), attrs["up_act"])
    return (g * u).astype(x.dtype)


def unpack_gated_inputs(arrays, attrs):
    if attrs["fused"]:
        x, w_gate_up, w_down = arrays
        w_gate, w_up = split_fused(w_gate_up, attrs["gate_first"])
        return x, w_gate, w_up, w_down
    return arrays


def gated_mlp_ref(*args):
    arrays, attrs = args[:-2], args[-2]
    x, w_gate, w_up, w_down = unpack_gated_inputs(arrays, attrs)
    return (intermediate(x, w_gate, w_up, attrs) @ w_down.T.astype(x.dtype)).astype(x.dtype)


def sparse_gated_mlp_ref(x, w_gate, w_up, w_down_t, attrs, env):
    return (intermediate(x, w_gate, w_up, attrs) @ w_down_t.astype(x.dtype)).astype(x.dtype)


def gated_mlp_type(types, attrs) -> TensorType:
    x = types[0]
    if attrs.get("fused"):
        w_gate_up, w_down = types[1], types[2]
        n_ff, d_in = w_gate_up.shape[0] // 2, w_gate_up.shape[1]
        d_out = w_down.shape[0]
    elif "pattern" in attrs:  # sparse form: w_down_t is [n_ff, d_out]
        n_ff, d_in = types[1].shape
        d_out = types[3].shape[1]
    else:
        n_ff, d_in = types[1].shape
        d_out = types[3].shape[0]
    if x.shape[-1] != d_in:
        raise TypeError(f"gated MLP input {x} does not match gate weight width {d_in}")
    return TensorType((*x.shape[:-1], d_out), x.dtype)

