"""The activation table: every activation defined once, for every layer that computes one.

An `Activation` entry holds
    name            the IR's name: op names (`relu`, `silu`, `gelu`, `fatrelu`) and the `gate_act`/`up_act`
                    attributes of the gated-MLP ops use the same names
    reference(x, t) numpy: the semantics (interpreter, calibration, report); t is the threshold (fatrelu's)
    tir(t)          -> (PrimExpr -> PrimExpr) on float32 values: the CPU kernels' form
    cuda(t)         the CUDA kernels' form (they are TIR too); None = the same as `tir`
    relax(x, t, dtype) -> a Relax expression (dense lowering of `gated_mlp` and of the elementwise ops)
    exactly_sparse  act(v) == 0 for every v <= t (ReLU family): an inactive neuron can be skipped losslessly

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


def _np_identity(x, t=0.0):
    return x


# --- TIR forms (float32 PrimExprs) --------------------------------------------------------------------------------
def _tir_relu(t):
    from tvm.script import tirx as T

    zero = T.float32(0)
    return lambda v: T.max(v, zero)


def _tir_fatrelu(t):
    from tvm.script import tirx as T

    zero, thr = T.float32(0), T.float32(float(t))
    return lambda v: T.if_then_else(v > thr, v, zero)


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


def _tir_identity(t):
    return lambda v: v


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


def _relax_fatrelu(x, t, dtype):
    from tvm import relax

    R = relax.op
    return R.where(R.greater(x, _relax_const(t, dtype)), x, _relax_const(0.0, dtype))


ACTIVATIONS: dict[str, Activation] = {a.name: a for a in (
    Activation("relu", _np_relu, _tir_relu, _relax_op("nn.relu"), exactly_sparse=True, doc="max(x, 0)"),
    Activation("fatrelu", _np_fatrelu, _tir_fatrelu, _relax_fatrelu, exactly_sparse=True,
               doc="FATReLU: x where x > t else 0"),
    Activation("silu", _np_silu, _tir_silu, _relax_op("nn.silu"), doc="x · sigmoid(x)"),
    Activation("gelu", _np_gelu, _tir_gelu, _relax_op("nn.gelu"), doc="0.5·x·(1 + erf(x/√2))"),
    Activation("gelu_tanh", _np_gelu_tanh, _tir_gelu_tanh, _relax_op("nn.gelu_tanh"),
               doc="0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))"),
    Activation("identity", _np_identity, _tir_identity, lambda x, t, dtype: x, doc="x"),
)}

GATE_ACTS = tuple(ACTIVATIONS)
UP_ACTS = ("identity", "relu")


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
