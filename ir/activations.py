"""The activation table: every activation defined once, for every layer that computes one.

An `Activation` entry holds
    name            the IR's name: op names (`relu`, `silu`, `gelu`, `fatrelu`) and the `gate_act`/`up_act`
                    attributes of the gated-MLP ops use the same names
    reference(x, t) numpy: the semantics (interpreter, calibration, report); t is the threshold (fatrelu's)
    tir(t)          -> (PrimExpr -> PrimExpr) on float32 values: the CPU kernels' form
    cuda(t)         the CUDA kernels' form (they are TIR too); None = the same as `tir`
    relax(x, t, dtype) -> a Relax expression (dense lowering of `gated_mlp` and of the elementwise ops)
    exactly_sparse  act(v) == 0 for every v <= t (ReLU family): an inactive neuron can be skipped losslessly
    constant        the value of an activation that ignores its input (`unit`, the up factor of a non-gated MLP,
                    whose first projection is the gate): kernels read no up rows for it

`gelu` is the erf form everywhere (as torch's default and the IR's `gelu{approximate='none'}`), `gelu_tanh` the
tanh approximation (`gelu{approximate='tanh'}`). tests/test_activations.py checks every entry's kernel forms
against its reference. Adding an activation is adding an entry here (TVM is imported only when a kernel or a
lowering asks for an expression).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SQRT_2_OVER_PI = 0.7978845608028654


@dataclass(frozen=True)
class Activation:
    name: str
    reference: Callable[[np.ndarray, float], np.ndarray]
    tir: Callable[[float], Callable]
    relax: Callable
    exactly_sparse: bool = False
    cuda: Callable[[float], Callable] | None = None
    doc: str = ""
    constant: float | None = None

    def tir_expr(self, threshold: float = 0.0) -> Callable:
        """PrimExpr -> PrimExpr of the CPU kernels."""
        return self.tir(threshold)

    def cuda_expr(self, threshold: float = 0.0) -> Callable:
        """PrimExpr -> PrimExpr of the CUDA kernels."""
        return (self.cuda or self.tir)(threshold)


# --- numpy references -----------------------------------------------------------------------------------------
def erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(x).astype(x.dtype)


def _np_relu(x, t=0.0):
    return np.maximum(x, 0).astype(x.dtype)


def _np_fatrelu(x, t=0.0):
    return np.where(x > t, x, 0).astype(x.dtype)


def _np_silu(x, t=0.0):
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x << 0: x / inf = -0, the right limit
        return (x / (1 + np.exp(-x))).astype(x.dtype)


def _np_gelu(x, t=0.0):
    return (0.5 * x * (1 + erf(x / math.sqrt(2)))).astype(x.dtype)


def _np_gelu_tanh(x, t=0.0):
    return (0.5 * x * (1 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3)))).astype(x.dtype)


def _np_relu2(x, t=0.0):
    return np.square(np.maximum(x, 0)).astype(x.dtype)


def _np_relu6(x, t=0.0):
    return np.clip(x, 0, 6).astype(x.dtype)


def _np_gelu_tanh_relu(x, t=0.0):
    return _np_gelu_tanh(_np_relu(x))


def _np_identity(x, t=0.0):
    return x


# --- TIR forms (float32 PrimExprs) --------------------------------------------------------------------------------
def _tir_relu(t):
    from tvm.script import tirx as T

    zero = T.float32(0)
    return lambda v: T.if_then_else(T.isnan(v), v, T.max(v, zero))  # NaN kept, as torch (LLVM's max gives 0)


def _tir_fatrelu(t):
    from tvm.script import tirx as T

    zero, thr = T.float32(0), T.float32(float(t))
    return lambda v: T.if_then_else(T.isnan(v), zero, T.if_then_else(v > thr, v, zero))  # NaN -> 0, as torch's where


def _tir_silu(t):
    from tvm.script import tirx as T

    zero = T.float32(0)
    return lambda v: v / (T.float32(1) + T.exp(zero - v))


def _tir_gelu(t):
    from tvm.script import tirx as T

    return lambda v: T.float32(0.5) * v * (T.float32(1) + T.erf(v * T.float32(1 / math.sqrt(2))))


def _tir_gelu_tanh(t):
    from tvm.script import tirx as T

    c = T.float32(SQRT_2_OVER_PI)
    return lambda v: T.float32(0.5) * v * (T.float32(1) + T.tanh(c * (v + T.float32(0.044715) * v * v * v)))


def _tir_relu2(t):
    from tvm.script import tirx as T

    zero = T.float32(0)
    return lambda v: T.max(v, zero) * T.max(v, zero)


def _tir_relu6(t):
    from tvm.script import tirx as T

    return lambda v: T.min(T.max(v, T.float32(0)), T.float32(6))


def _tir_gelu_tanh_relu(t):
    from tvm.script import tirx as T

    gelu = _tir_gelu_tanh(t)
    return lambda v: gelu(T.max(v, T.float32(0)))


def _tir_identity(t):
    return lambda v: v


def _tir_unit(t):
    from tvm.script import tirx as T

    return lambda v: T.float32(1)


# --- Relax forms --------------------------------------------------------------------------------------------------
def _relax_op(name: str):
    def build(x, t, dtype):
        from tvm import relax

        op = relax.op
        for part in name.split("."):
            op = getattr(op, part)
        return op(x)

    return build


def _relax_const(value, dtype: str):
    from tvm import relax

    from .types import np_dtype

    array = np.asarray(value, dtype=np_dtype(dtype))
    return relax.const(array, array.dtype.name)


def _relax_ones_like(x):
    from tvm import relax

    return relax.op.ones_like(x)


def _relax_relu(x, t, dtype):
    from tvm import relax

    R = relax.op
    return R.where(R.isnan(x), x, R.nn.relu(x))  # NaN kept, as torch (TVM's relu is a max: NaN -> 0)


def _relax_fatrelu(x, t, dtype):
    from tvm import relax

    R = relax.op
    return R.where(R.greater(x, _relax_const(t, dtype)), x, _relax_const(0.0, dtype))


def _relax_gelu_tanh_relu(x, t, dtype):
    from tvm import relax

    return relax.op.nn.gelu_tanh(relax.op.nn.relu(x))


def _relax_relu2(x, t, dtype):
    from tvm import relax

    return relax.op.square(relax.op.nn.relu(x))


def _relax_relu6(x, t, dtype):
    from tvm import relax

    return relax.op.clip(x, 0, 6)


# --- clamped SwiGLUs of released models: gate c·σ(α·c), c = min(g, L); up clip(u, ±L) + offset -----------------
# (transformers' GptOssExperts: α 1.702, L = swiglu_limit 7, offset 1; DeepSeek-V4's experts: α 1, L 10, offset
# 0 — the limits of their configs and checkpoints.) A limit is part of the function, so each is an entry; a model
# with another limit computes another function: it is not found, and stays dense. One line each in CLAMPED.
def _clamped_gate(name: str, alpha: float, limit: float) -> Activation:
    def reference(x, t=0.0):
        c = np.minimum(x, np.asarray(limit, x.dtype))
        with np.errstate(over="ignore"):
            return (c / (1 + np.exp(-np.asarray(alpha, x.dtype) * c))).astype(x.dtype)

    def tir(t):
        from tvm.script import tirx as T

        return lambda v: (lambda c: c / (T.float32(1) + T.exp(T.float32(-alpha) * c)))(T.min(v, T.float32(limit)))

    def relax_form(x, t, dtype):
        from tvm import relax

        R = relax.op
        c = R.minimum(x, _relax_const(limit, dtype))
        return R.multiply(c, R.sigmoid(R.multiply(c, _relax_const(alpha, dtype)) if alpha != 1 else c))

    return Activation(name, reference, tir, relax_form, doc=f"c·σ({alpha:g}·c), c = min(x, {limit:g})")


def _clipped_up(name: str, limit: float, offset: float) -> Activation:
    def reference(x, t=0.0):
        return (np.clip(x, -limit, limit) + np.asarray(offset, x.dtype)).astype(x.dtype)

    def tir(t):
        from tvm.script import tirx as T

        return lambda v: T.min(T.max(v, T.float32(-limit)), T.float32(limit)) + T.float32(offset)

    def relax_form(x, t, dtype):
        from tvm import relax

        return relax.op.add(relax.op.clip(x, -limit, limit), _relax_const(offset, dtype))

    return Activation(name, reference, tir, relax_form, doc=f"clip(x, ±{limit:g}) + {offset:g}")


CLAMPED = (  # gate entry, up entry, the gated pattern they make
    (_clamped_gate("clamped_swish7", 1.702, 7.0), _clipped_up("clip7_plus1", 7.0, 1.0), "swiglu-clamped7"),  # gpt-oss
    (_clamped_gate("clamped_silu10", 1.0, 10.0), _clipped_up("clip10", 10.0, 0.0), "swiglu-clamped10"),  # DeepSeek-V4
)


ACTIVATIONS: dict[str, Activation] = {a.name: a for a in (
    Activation("relu", _np_relu, _tir_relu, _relax_relu, exactly_sparse=True, doc="max(x, 0); relu(NaN) = NaN"),
    Activation("fatrelu", _np_fatrelu, _tir_fatrelu, _relax_fatrelu, exactly_sparse=True,
               doc="FATReLU: x where x > t else 0 (torch's where: NaN -> 0)"),
    Activation("relu2", _np_relu2, _tir_relu2, _relax_relu2, exactly_sparse=True, doc="max(x, 0)² (Primer)"),
    Activation("relu6", _np_relu6, _tir_relu6, _relax_relu6, exactly_sparse=True, doc="min(max(x, 0), 6)"),
    # Gemma 3n's gate after its per-token cutoff, gelu_tanh(relu(P - c)) (passes/activation_analysis.classify_shifted
    # finds the cutoff c): zero for x <= 0, so exactly sparse
    Activation("gelu_tanh_relu", _np_gelu_tanh_relu, _tir_gelu_tanh_relu, _relax_gelu_tanh_relu, exactly_sparse=True,
               doc="gelu_tanh(max(x, 0)): zero for x <= 0"),
    Activation("silu", _np_silu, _tir_silu, _relax_op("nn.silu"), doc="x · sigmoid(x)"),
    Activation("gelu", _np_gelu, _tir_gelu, _relax_op("nn.gelu"), doc="0.5·x·(1 + erf(x/√2))"),
    Activation("gelu_tanh", _np_gelu_tanh, _tir_gelu_tanh, _relax_op("nn.gelu_tanh"),
               doc="0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))"),
    Activation("identity", _np_identity, _tir_identity, lambda x, t, dtype: x, doc="x"),
    Activation("unit", lambda x, t=0.0: np.ones_like(x), _tir_unit, lambda x, t, dtype: _relax_ones_like(x),
               constant=1.0, doc="1 whatever x: a non-gated MLP as a gated one (up factor 1, no up rows read)"),
    *(entry for gate, up, _ in CLAMPED for entry in (gate, up)),
)}

GATE_ACTS = tuple(ACTIVATIONS)
UP_ACTS = ("identity", "relu", "unit", *(up.name for _, up, _ in CLAMPED))
PROBED = tuple(e.name for gate, up, _ in CLAMPED for e in (gate, up))  # no op of their own: found by probing
CLAMPED_PATTERNS = {(gate.name, up.name): pattern for gate, up, pattern in CLAMPED}


def activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}") from None


def apply(name: str, x: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """The numpy reference of activation `name` on x."""
    return activation(name).reference(x, threshold)


def exactly_sparse(name: str) -> bool:
    return activation(name).exactly_sparse


def reads_input(name: str) -> bool:
    """Whether the activation depends on its input: `unit` does not, so no up dot is computed for it."""
    return activation(name).constant is None


ZERO_BELOW = tuple(name for name, a in ACTIVATIONS.items() if a.exactly_sparse)  # exact mode's activations
THRESHOLDED = ("fatrelu",)  # the ones whose threshold is an attribute (the others are zero below 0)
