"""Semantics of the gated-MLP ops that passes introduce.

`gated_mlp` is the canonical form of a detected block: y = (act_gate(x·Wgᵀ) ⊙ act_up(x·Wuᵀ))·Wdᵀ.
The pattern name is derived from the activation pair, so the report and the sparsifier agree on it:

    gate_act  up_act     pattern
    silu      identity   swiglu      (Llama, Mistral, Qwen)
    gelu      identity   geglu       (Gemma; gelu_tanh too)
    relu      identity   reglu       (ProSparse)
    relu      relu       drelu       (TurboSparse)
    fatrelu   identity   fatrelu     (where(g > t, g, 0))
    relu2     identity   relu2-glu   (relu(g)²)
    relu6     identity   relu6-glu   (min(relu(g), 6))
    clamped_swish7  clip7_plus1  swiglu-clamped7    (gpt-oss: min(g, 7)·σ(1.702·min(g, 7)) · (clip(u, ±7) + 1))
    clamped_silu10  clip10       swiglu-clamped10   (DeepSeek-V4: silu(min(g, 10)) · clip(u, ±10))

Only the ReLU family (reglu, drelu, fatrelu, relu2-glu, relu6-glu) is exactly sparse (`exactly_sparse` in
the activation table, ir/activations.py): a neuron whose gate activation is 0 contributes nothing, so its up
and down rows need not be read.

`hidden_rms_eps` (BitNet's ffn_sub_norm): h is RMS-normalised over the neurons before the down projection,
h / sqrt(mean(h²) + eps), with the norm's weight folded into Wd's columns at detection; zeros stay zeros.

Inputs: `x, w_gate, w_up, w_down` or, fused, `x, w_gate_up, w_down` (weights [out, in]). With `bias=True` the
gate/up biases follow: `b_gate, b_up` (fused: `b_gate_up`), inside the activations: act(x·Wgᵀ + bg). A down
bias is not part of the op: detection leaves it as an `add` after the block. `expert` is the expert index of
an MoE block (-1 for a dense layer); it is provenance for the report, the math does not depend on it.

The sparse form, `sparse_gated_mlp`, is an op family with one entry per variant: ir/sparse_variants.py.
"""

from __future__ import annotations

import numpy as np

from .activations import CLAMPED_PATTERNS, exactly_sparse
from .sparse_variants import check_inputs, dense_intermediate, rms_normed, sizes
from .types import TensorType

GATED_MLP_ATTRS = {"gate_act": "silu", "up_act": "identity", "threshold": 0.0, "fused": False,
                   "gate_first": True, "expert": -1, "bias": False, "hidden_rms_eps": None}


def pattern_name(gate_act: str, up_act: str) -> str:
    if up_act == "unit":   # a non-gated MLP, act(x·W1)·W2, as a block whose up factor is 1
        return f"{gate_act}-mlp"
    if gate_act == "fatrelu":
        return "fatrelu"
    if gate_act == "relu":
        return "drelu" if up_act == "relu" else "reglu"
    if gate_act in ("relu2", "relu6"):
        return f"{gate_act}-glu" + ("-relu" if up_act == "relu" else "")
    if (gate_act, up_act) in CLAMPED_PATTERNS:
        return CLAMPED_PATTERNS[gate_act, up_act]
    if gate_act not in ("silu", "gelu", "gelu_tanh"):
        return f"{gate_act}-{up_act}"  # a pairing no model has shown yet: named by its parts
    if gate_act == "silu":
        return "swiglu" if up_act == "identity" else "silu-relu"
    return "geglu" if up_act == "identity" else "gelu-relu"


def has_hidden_norm(node) -> bool:
    """Whether a gated MLP node normalises its hidden vector before the down projection (`hidden_rms_eps`)."""
    return node.attrs.get("hidden_rms_eps") is not None


HIDDEN_NORM_REASON = ("its hidden vector is RMS-normalised before the down projection (BitNet's ffn_sub_norm): only "
                      "exact mode's kernels apply that norm; kept dense")


def is_exactly_sparse(gate_act: str) -> bool:
    return exactly_sparse(gate_act)


def split_fused(w_gate_up: np.ndarray, gate_first: bool) -> tuple[np.ndarray, np.ndarray]:
    n = w_gate_up.shape[0] // 2
    first, second = w_gate_up[:n], w_gate_up[n:]
    return (first, second) if gate_first else (second, first)


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
    h = rms_normed(dense_intermediate(x, w_gate, w_up, attrs, b_gate, b_up), attrs)
    return (h @ w_down.T.astype(x.dtype)).astype(x.dtype)


def sparse_gated_mlp_type(types, attrs) -> TensorType:
    """x[..., d], w_gate[n, d], w_up[n, d], w_down_t[n, d_out], then the variant's extra inputs."""
    check_inputs(len(types), attrs)
    x, w_gate, w_up, w_down_t = types[:4]
    n_ff, d = sizes(attrs, w_gate.shape)
    if x.shape[-1] != d:
        raise TypeError(f"gated MLP input {x} does not match gate weight width {d}")
    if w_up.shape != w_gate.shape or w_down_t.shape[0] != n_ff:
        raise TypeError(f"sparse gated MLP weights {w_gate}, {w_up}, {w_down_t} do not share n_ff")
    return TensorType((*x.shape[:-1], w_down_t.shape[1]), x.dtype)


def gated_mlp_type(types, attrs) -> TensorType:
    x = types[0]
    if attrs.get("fused"):
        w_gate_up, w_down = types[1], types[2]
        n_ff, d_in = w_gate_up.shape[0] // 2, w_gate_up.shape[1]
        d_out = w_down.shape[0]
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

