"""The op table: every op defined once — name, arity, attribute schema, type rule, numpy reference.

Frontends map onto these ops, the interpreter runs them through `reference`, the verifier checks `infer`, and
codegen has one lowering per op name. Reference functions take numpy arrays, the attrs, and `env` (the values
of symbolic dims, needed by ops such as `arange` whose size is a symbol). An op marked `accumulate` sums over an
axis and runs its sums in the wider dtype `accumulation_dtype` names (float16 -> float32, as torch), in its
reference and its lowering alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .activations import ACTIVATIONS, erf
from .attention import ATTENTION_ATTRS, attention_ref, attention_type
from .dims import add, evaluate, sub
from .mlp import GATED_MLP_ATTRS, gated_mlp_ref, gated_mlp_type, sparse_gated_mlp_type
from .moe import ROUTED_MOE_ATTRS, routed_moe_ref, routed_moe_type
from .sparse_variants import SPARSE_GATED_MLP_ATTRS, VARIANTS
from .sparse_variants import reference as sparse_gated_mlp_reference
from .types import TensorType, broadcast_shapes, dtype_of, is_float, np_dtype, positive_axis, resolve, summing_dtype

REQUIRED = object()


@dataclass(frozen=True)
class OpDef:
    name: str
    arity: tuple[int, int]  # (min, max) inputs; max -1 = variadic
    attrs: Mapping[str, Any]  # attr name -> default (REQUIRED if none)
    infer: Callable[[list[TensorType], dict], TensorType]
    reference: Callable[..., np.ndarray]
    doc: str = ""
    elementwise: bool = field(default=False)
    accumulate: bool = field(default=False)  # sums over an axis, in types.summing_dtype (f16 -> f32, as torch)


OPS: dict[str, OpDef] = {}


def define(name, arity, infer, reference, attrs=None, doc="", elementwise=False, accumulate=False):
    arity = (arity, arity) if isinstance(arity, int) else arity
    OPS[name] = OpDef(name, arity, attrs or {}, infer, reference, doc, elementwise, accumulate)


def op_def(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known ops: {', '.join(sorted(OPS))}") from None


def accumulation_dtype(op: str, dtype: str) -> str:
    """The dtype `op` runs its sums in for a result of `dtype`: a wider one where the op accumulates, else dtype."""
    return summing_dtype(dtype) if op_def(op).accumulate else dtype


# --- sources --------------------------------------------------------------------------------------------
def _no_infer(types, attrs):
    raise TypeError("source ops carry their own type")


define("input", 0, _no_infer, lambda attrs, env: None, {"name": REQUIRED, "least": None},
       "a graph input; `least` ({dim: size}, ir/limits.py) bounds its symbolic dims from below")
define("weight", 0, _no_infer, lambda attrs, env: None, {"name": REQUIRED, "layout": "dense"},
       "a named constant held by the graph; `layout` names a quantized storage (ir.quant) of the logical type")
define("constant", 0, _no_infer, lambda attrs, env: None, {"value": REQUIRED},
       "a small literal (scalar or nested tuple)")
define(
    "arange", 0, _no_infer,
    lambda attrs, env: np.arange(evaluate(attrs["start"], env), resolve((attrs["end"],), env)[0], attrs["step"]),
    {"start": 0, "end": REQUIRED, "step": 1},
    "0-d sources whose size may be symbolic (positions, masks); start and end are dims, so positions after a "
    "cache are arange(kv-seq, kv)",
)
define(
    "full", 0, _no_infer, lambda attrs, env: np.full(resolve(attrs["shape"], env), attrs["value"]),
    {"shape": REQUIRED, "value": REQUIRED},
)

# --- elementwise -----------------------------------------------------------------------------------------
def _unary_type(types, attrs):
    return types[0]


def _sigmoid(x):
    return (1 / (1 + np.exp(-x))).astype(x.dtype)


UNARY = {
    "neg": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs,
    "rsqrt": lambda x: (1 / np.sqrt(x)).astype(x.dtype), "reciprocal": lambda x: (1 / x).astype(x.dtype),
    "tanh": np.tanh, "sigmoid": _sigmoid, "erf": erf, "sin": np.sin, "cos": np.cos,
    "relu": ACTIVATIONS["relu"].reference, "silu": ACTIVATIONS["silu"].reference, "logical_not": np.logical_not,
    "relu2": ACTIVATIONS["relu2"].reference, "relu6": ACTIVATIONS["relu6"].reference,
    "floor": np.floor, "trunc": np.trunc,  # rounding divisions (div with rounding_mode), position buckets
    "erfinv": lambda x: _erfinv(x),  # a Gaussian quantile (Gemma-3n's activation-sparsity cutoff)
}


def _erfinv(x):
    from scipy.special import erfinv

    return erfinv(x).astype(x.dtype)
for _name, _fn in UNARY.items():
    define(_name, 1, _unary_type, (lambda fn: lambda x, attrs, env: fn(x))(_fn), elementwise=True)
for _name, _fn in {"isnan": np.isnan, "isinf": np.isinf}.items():  # bool masks of non-finite values
    define(_name, 1, lambda t, a: TensorType(t[0].shape, "bool"), (lambda fn: lambda x, attrs, env: fn(x))(_fn),
           elementwise=True)
define("fatrelu", 1, _unary_type, lambda x, attrs, env: ACTIVATIONS["fatrelu"].reference(x, attrs["threshold"]),
       {"threshold": 0.0}, ACTIVATIONS["fatrelu"].doc, elementwise=True)
define("gelu", 1, _unary_type, lambda x, attrs, env: ACTIVATIONS[gelu_activation(attrs["approximate"])].reference(x),
       {"approximate": "none"}, "approximate 'none': the erf form (activation `gelu`), 'tanh': `gelu_tanh`",
       elementwise=True)


def _binary_type(types, attrs):
    dtype = types[0].dtype if is_float(types[0].dtype) or not is_float(types[1].dtype) else types[1].dtype
    return TensorType(broadcast_shapes(types[0].shape, types[1].shape), dtype)


def _compare_type(types, attrs):
    return TensorType(broadcast_shapes(types[0].shape, types[1].shape), "bool")


def _promote(fn):
    def run(a, b, attrs, env):
        dtype = a.dtype if np.issubdtype(a.dtype, np.floating) or not np.issubdtype(b.dtype, np.floating) else b.dtype
        return np.asarray(fn(a, b)).astype(dtype, copy=False)
    return run


BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "pow": np.power,
          "maximum": np.maximum, "minimum": np.minimum}
for _name, _fn in BINARY.items():
    define(_name, 2, _binary_type, _promote(_fn), elementwise=True)
BITWISE = {"bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or, "bitwise_xor": np.bitwise_xor}
for _name, _fn in BITWISE.items():  # on integers (bool masks use logical_*): CPM-Ant's segment masks
    define(_name, 2, _binary_type, _promote(_fn), elementwise=True)
COMPARE = {"gt": np.greater, "ge": np.greater_equal, "lt": np.less, "le": np.less_equal, "eq": np.equal,
           "ne": np.not_equal, "logical_and": np.logical_and, "logical_or": np.logical_or,
           "logical_xor": np.logical_xor}
for _name, _fn in COMPARE.items():
    define(_name, 2, _compare_type, (lambda fn: lambda a, b, attrs, env: fn(a, b))(_fn), elementwise=True)


def _where_type(types, attrs):
    return TensorType(broadcast_shapes(*(t.shape for t in types)), _binary_type(types[1:], attrs).dtype)


def _where_ref(c, a, b, attrs, env):
    dtype = a.dtype if np.issubdtype(a.dtype, np.floating) or not np.issubdtype(b.dtype, np.floating) else b.dtype
    return np.where(c, a, b).astype(dtype)


define("where", 3, _where_type, _where_ref, elementwise=True)
define("cast", 1, lambda t, a: TensorType(t[0].shape, a["dtype"]),
       lambda x, attrs, env: x.astype(np_dtype(attrs["dtype"])), {"dtype": REQUIRED}, elementwise=True)


# --- linear algebra --------------------------------------------------------------------------------------
def _linear_type(types, attrs):
    x, w = types[0], types[1]
    if w.rank != 2 or x.shape[-1] != w.shape[1]:
        raise TypeError(f"linear: x {x} does not match weight {w} (expects weight [out, in])")
    return TensorType((*x.shape[:-1], w.shape[0]), x.dtype)


def _linear_ref(x, w, b=None, attrs=None, env=None):
    out = x @ w.T.astype(x.dtype, copy=False)   # no copy of a weight already in x's dtype
    return (out + b if b is not None else out).astype(x.dtype)


def _linear_call(*args):
    arrays, attrs, env = args[:-2], args[-2], args[-1]
    return _linear_ref(*arrays, attrs=attrs, env=env)


# float_x: against a quantized weight, x stays float (no 8-bit rounding of x by an int8-dot kernel): for a dot
# whose error must stay within a bound computed from the weights alone (passes/certified_gate.py)
define("linear", (2, 3), _linear_type, _linear_call, {"float_x": False}, doc="x[..., in] @ w[out, in]^T (+ b)")


def _matmul_type(types, attrs):
    a, b = types
    if a.rank < 2 or b.rank < 2 or a.shape[-1] != b.shape[-2]:
        raise TypeError(f"matmul: {a} @ {b} has mismatched inner dims")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return TensorType((*batch, a.shape[-2], b.shape[-1]), a.dtype)


define("matmul", 2, _matmul_type, lambda a, b, attrs, env: np.matmul(a, b),  # numpy's float16 loop sums in float32
       accumulate=True)


def _embedding_type(types, attrs):
    w, ids = types
    return TensorType((*ids.shape, w.shape[1]), w.dtype)


define("embedding", 2, _embedding_type, lambda w, ids, attrs, env: w[ids], doc="rows of w[vocab, d] at ids")


# --- reductions and normalisation -------------------------------------------------------------------------
def _reduce_type(types, attrs):
    t = types[0]
    axes = {positive_axis(a, t.rank) for a in attrs["axes"]}
    if attrs["keepdim"]:
        shape = tuple(1 if i in axes else d for i, d in enumerate(t.shape))
    else:
        shape = tuple(d for i, d in enumerate(t.shape) if i not in axes)
    return TensorType(shape, t.dtype)


def _accumulating(op: str, x: np.ndarray) -> np.ndarray:
    """x in the dtype `op` runs its sums in (see accumulation_dtype); integer and bool arrays as they are."""
    if x.dtype.kind != "f":
        return x
    return x.astype(np_dtype(accumulation_dtype(op, dtype_of(x))), copy=False)


for _name, _fn, _sums in (("sum", np.sum, True), ("mean", np.mean, True), ("max", np.max, False)):
    define(_name, 1, _reduce_type,
           (lambda name, fn: lambda x, attrs, env:
            fn(_accumulating(name, x), axis=tuple(attrs["axes"]), keepdims=attrs["keepdim"]).astype(x.dtype))(
               _name, _fn),
           {"axes": REQUIRED, "keepdim": False}, accumulate=_sums)


def _softmax(x, attrs, env):
    w = _accumulating("softmax", x)
    e = np.exp(w - w.max(axis=attrs["axis"], keepdims=True))
    return (e / e.sum(axis=attrs["axis"], keepdims=True)).astype(x.dtype)


define("softmax", 1, _unary_type, _softmax, {"axis": -1}, accumulate=True)


def _layer_norm(x, w, b, attrs, env):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + attrs["eps"]) * w + b).astype(x.dtype)


define("layer_norm", 3, _unary_type, _layer_norm, {"eps": 1e-5}, "over the last axis")

# --- shape ops -------------------------------------------------------------------------------------------
def _reshape_type(types, attrs):
    return TensorType(tuple(attrs["shape"]), types[0].dtype)


define("reshape", 1, _reshape_type, lambda x, attrs, env: x.reshape(resolve(attrs["shape"], env)), {"shape": REQUIRED})
define("permute", 1, lambda t, a: TensorType(tuple(t[0].shape[i] for i in a["axes"]), t[0].dtype),
       lambda x, attrs, env: np.transpose(x, attrs["axes"]), {"axes": REQUIRED})
define("expand", 1, lambda t, a: TensorType(tuple(a["shape"]), t[0].dtype),
       lambda x, attrs, env: np.broadcast_to(x, resolve(attrs["shape"], env)), {"shape": REQUIRED})


def _slice_len(dim, start, end, step):
    if isinstance(dim, int) and isinstance(start, int) and (end is None or isinstance(end, int)):
        return len(range(*slice(start, end, step).indices(dim)))
    if step != 1:
        raise TypeError(f"slice of symbolic dim {dim} or with symbolic bounds needs step 1")
    # symbolic: bounds in range by construction (the frontend's guards), a negative int counting from the end,
    # e.g. a static rotary table cut to `seq`, scores with a sink column cut back to `kv` (kv+1 [:-1]), a causal
    # mask's rows kv-seq .. kv
    start, end = (add(dim, b) if isinstance(b, int) and b < 0 else b for b in (start, dim if end is None else end))
    return sub(end, start)


def _slice_type(types, attrs):
    t = types[0]
    axis = positive_axis(attrs["axis"], t.rank)
    shape = list(t.shape)
    shape[axis] = _slice_len(t.shape[axis], attrs["start"], attrs["end"], attrs["step"])
    return TensorType(tuple(shape), t.dtype)


def _slice_ref(x, attrs, env):
    start, end = (b if b is None else evaluate(b, env) for b in (attrs["start"], attrs["end"]))
    index = [slice(None)] * x.ndim
    index[attrs["axis"]] = slice(start, end, attrs["step"])
    return x[tuple(index)]


define("slice", 1, _slice_type, _slice_ref, {"axis": REQUIRED, "start": 0, "end": None, "step": 1})


def _concat_type(types, attrs):
    axis = positive_axis(attrs["axis"], types[0].rank)
    dims = [t.shape[axis] for t in types]
    total = functools.reduce(add, dims)
    shape = list(types[0].shape)
    shape[axis] = total
    return TensorType(tuple(shape), types[0].dtype)


define("concat", (1, -1), _concat_type, lambda *a: np.concatenate(a[:-2], axis=a[-2]["axis"]), {"axis": REQUIRED})


def _index_select_type(types, attrs):
    t, idx = types
    axis = positive_axis(attrs["axis"], t.rank)
    return TensorType((*t.shape[:axis], *idx.shape, *t.shape[axis + 1:]), t.dtype)


define("index_select", 2, _index_select_type, lambda x, i, attrs, env: np.take(x, i, axis=attrs["axis"]),
       {"axis": REQUIRED}, "x gathered at integer indices along one axis")


def _index_copy_ref(x, index, src, attrs, env):
    out = x.copy()  # functional here; codegen writes in place when x is dead afterwards (a KV cache input)
    axis = positive_axis(attrs["axis"], x.ndim)
    out[(slice(None),) * axis + (index,)] = src
    return out


define("index_copy", 3, lambda t, a: t[0], _index_copy_ref, {"axis": REQUIRED},
       "x with its slices at integer indices along an axis replaced by src's (KV-cache writes)")


def _topk_type(types, attrs):
    t = types[0]
    axis = positive_axis(attrs["axis"], t.rank)
    shape = tuple(attrs["k"] if i == axis else d for i, d in enumerate(t.shape))
    return TensorType(shape, t.dtype if attrs["output"] == "values" else "i64")


def _topk_ref(x, attrs, env):
    axis = attrs["axis"]
    order = np.argsort(-x if attrs["largest"] else x, axis=axis, kind="stable")  # ties: the lower index first
    index = np.take(order, np.arange(attrs["k"]), axis=axis)
    return np.take_along_axis(x, index, axis=axis) if attrs["output"] == "values" else index.astype(np.int64)


define("topk", 1, _topk_type, _topk_ref, {"k": REQUIRED, "axis": -1, "largest": True, "output": "values"},
       "the k largest (or smallest) entries along an axis, sorted; output 'values' or their 'indices' (MoE routers)")
define("triu", 1, _unary_type, lambda x, attrs, env: np.triu(x, attrs["diagonal"]), {"diagonal": 0})
define("tril", 1, _unary_type, lambda x, attrs, env: np.tril(x, attrs["diagonal"]), {"diagonal": 0})

# --- gated MLPs (introduced by passes) ---------------------------------------------------------------------
define("gated_mlp", (3, 6), gated_mlp_type, gated_mlp_ref, GATED_MLP_ATTRS,
       "down(act_gate(x·Wg + bg) ⊙ act_up(x·Wu + bu)); inputs x, w_gate, w_up, w_down or x, w_gate_up, w_down "
       "(fused), then with bias=True b_gate, b_up (fused: b_gate_up)")
define("sparse_gated_mlp", (4, -1), sparse_gated_mlp_type, sparse_gated_mlp_reference, SPARSE_GATED_MLP_ATTRS,
       "gated_mlp with prepared layouts: x, w_gate[n,d], w_up[n,d], w_down_t[n,d] (one neuron per row), then the "
       f"variant's extra inputs; variants (attr mode, ir/sparse_variants.py): {', '.join(VARIANTS)}")
define("attention", 4, attention_type, attention_ref, ATTENTION_ATTRS,
       "softmax(scale * q k^T (soft-capped, masked)) v with grouped-query heads: q[B,H,S,D], k, v[B,Hk,kv,D], mask "
       "(bool 'select' or float 'add'); query head h reads KV head h // (H / Hk) (ir/attention.py)", accumulate=True)
define("routed_moe", (6, 9), routed_moe_type, routed_moe_ref, {**ROUTED_MOE_ATTRS, "experts": REQUIRED},
       "MoE experts run only on their routed tokens: x, w_gate[E*n,d], w_up[E*n,d], w_down_t[E*n,d_out] (experts "
       "stacked by rows; down_rows=outputs: w_down[E*d_out,n]), route_w[...,k], route_i[...,k], then with bias=True "
       "b_gate[E*n], b_up[E*n], b_down[E,d_out]; mode threshold: then thresholds[2,E*n]; mode input: gate / up "
       "[E*d,n] (each expert transposed), then x_thr[E*d], h_thr[E*n]; mode dense|exact|threshold|input (ir/moe.py)")


from .predictor import sign_score_reference, sign_score_type  # noqa: E402

define("sign_score", 2, sign_score_type, sign_score_reference, {"d": REQUIRED},
       "SparseInfer's predictor: d - 2 popcount(signbits(x) xor bits[j]) per packed row, as f32 (ir/predictor.py)")


def gelu_activation(approximate: str) -> str:
    """The activation-table name of `gelu{approximate}`."""
    return "gelu_tanh" if approximate == "tanh" else "gelu"


from .ops_conv import CONV_OPS  # noqa: E402  (conv1d)
from .ops_indexing import INDEXING_OPS  # noqa: E402  (gather, scatter, cumsum, argmax)

for _entry in INDEXING_OPS + CONV_OPS:
    define(*_entry)
