"""The ONNX -> IR table: `HANDLERS[op_type] = handler(cx, node, args, attrs)`.

`args` are the node's inputs as values (`Const` when known at import time, IR `Node` otherwise; None for an
omitted optional input), `attrs` its attributes as Python values. A handler returns a value or a list of
values (one per output) and builds IR through `cx.op(...)`, which folds static inputs, so each mapping is
written once for both the shape computations and the model's dataflow. Shape and indexing ops are in
`onnx_shape_ops.py` (`SHAPE_HANDLERS`, merged into `HANDLERS` here); folding static values is in
`onnx_values.py`.
"""

from __future__ import annotations

import numpy as np

from ..ir import Node, TensorType
from ..ir.types import is_float, np_dtype, positive_axis
from .onnx_ops_tail import TAIL_HANDLERS
from .onnx_shape_ops import SHAPE_HANDLERS
from .onnx_values import ONNX_DTYPES, Const, make_const


def attributes(node) -> dict:
    from onnx import AttributeProto, helper, numpy_helper

    out = {}
    for a in node.attribute:
        if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            continue  # control flow: those ops have no handler, so they never get here
        value = helper.get_attribute_value(a)
        if a.type == AttributeProto.TENSOR:
            value = numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode()
        out[a.name] = value
    return out


# --- elementwise ----------------------------------------------------------------------------------------
def _unary(ir_op):
    return lambda cx, node, args, attrs: cx.op(ir_op, [args[0]])


def _binary(ir_op):
    return lambda cx, node, args, attrs: cx.op(ir_op, args[:2])


def _variadic(ir_op):  # Max / Min / Sum over any number of inputs -> a chain of binary ops
    def handle(cx, node, args, attrs):
        out = args[0]
        for other in args[1:]:
            out = cx.op(ir_op, [out, other])
        return out
    return handle


def _is_inf(cx, node, args, attrs):  # IsInf{detect_positive, detect_negative}: isinf, narrowed by the sign
    x = args[0]
    out = cx.op("isinf", [x])
    positive, negative = attrs.get("detect_positive", 1), attrs.get("detect_negative", 1)
    if positive and negative:
        return out
    if not positive and not negative:
        return cx.full(False, tuple(x.shape), "bool")
    zero = Const(np.zeros((), np_dtype(x.dtype)), x.dtype)
    return cx.op("logical_and", [out, cx.op("gt" if positive else "lt", [x, zero])])


def _clip(cx, node, args, attrs):  # Clip(x, lo, hi) -> minimum(maximum(x, lo), hi)
    x, lo, hi = (args + [None, None])[:3]
    x = x if lo is None else cx.op("maximum", [x, lo])
    return x if hi is None else cx.op("minimum", [x, hi])


def _div(cx, node, args, attrs):
    a, b = args
    if not is_float(a.dtype) and not (isinstance(a, Const) and isinstance(b, Const)):
        raise cx.error("integer division of tensors that depend on the inputs is not supported")
    return cx.op("div", [a, b])


def _gelu(cx, node, args, attrs):
    return cx.op("gelu", [args[0]], approximate=attrs.get("approximate", "none"))


def _softmax(cx, node, args, attrs):
    return cx.op("softmax", [args[0]], axis=positive_axis(attrs.get("axis", -1), len(args[0].shape)))


def _where(cx, node, args, attrs):
    return cx.op("where", args)


def _cast(cx, node, args, attrs):
    return cx.cast(args[0], cx.onnx_dtype(attrs["to"], f"Cast target of {node.name!r}"))


def _cast_like(cx, node, args, attrs):
    return cx.cast(args[0], args[1].dtype)


def _identity(cx, node, args, attrs):  # Identity / Dropout (inference): the input, under the output's name
    x = args[0]
    return Const(x.array, x.dtype) if isinstance(x, Const) else x


# --- linear algebra -------------------------------------------------------------------------------------
def _matmul(cx, node, args, attrs):
    a, b = args
    if isinstance(b, Const) and not isinstance(a, Const) and b.array.ndim == 2 and is_float(b.dtype) \
            and a.dtype == b.dtype:
        return cx.op("linear", [a, cx.projection_weight(b)])  # x @ W[k, n] -> linear(x, @Wᵀ[n, k])
    a2 = a if len(a.shape) > 1 else cx.op("reshape", [a], shape=(1, *a.shape))
    b2 = b if len(b.shape) > 1 else cx.op("reshape", [b], shape=(*b.shape, 1))
    out = cx.op("matmul", [a2, b2])
    if a2 is a and b2 is b:
        return out
    shape = out.shape[:-2] + (out.shape[-2:-1] if a2 is a else ()) + (out.shape[-1:] if b2 is b else ())
    return cx.op("reshape", [out], shape=tuple(shape))


def _gemm(cx, node, args, attrs):
    a, b, c = (args + [None])[:3]
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if attrs.get("transA", 0):
        a = cx.op("permute", [a], axes=(1, 0))
    if isinstance(b, Const) and not isinstance(a, Const) and is_float(b.dtype):
        weight = cx.node_as_weight(b) if attrs.get("transB", 0) else cx.projection_weight(b)
        out = cx.op("linear", [a, weight])
    else:
        b = cx.op("permute", [b], axes=(1, 0)) if attrs.get("transB", 0) else b
        out = cx.op("matmul", [a, b])
    if alpha != 1.0:
        out = cx.op("mul", [out, make_const(alpha, out.dtype)])
    if c is not None and beta != 0.0:
        if beta != 1.0:
            c = cx.op("mul", [c, make_const(beta, c.dtype)])
        if isinstance(c, Const) and c.array.ndim == 1 and c.array.size > 1:
            c = cx.node_as_weight(c, "bias")
        out = cx.op("add", [out, c])
    return out


# --- reductions, normalisation --------------------------------------------------------------------------
def _reduce(ir_op, axes_input_since):
    def handle(cx, node, args, attrs):
        x = args[0]
        if cx.opset >= axes_input_since:
            axes = cx.ints(args[1], "the reduction axes") if len(args) > 1 and args[1] is not None else []
        else:
            axes = list(attrs.get("axes", []))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(len(x.shape)))
        rank = len(x.shape)
        axes = tuple(sorted(positive_axis(int(a), rank) for a in axes))
        return cx.op(ir_op, [x], axes=axes, keepdim=bool(attrs.get("keepdims", 1)))
    return handle


def _layer_norm(cx, node, args, attrs):
    x, scale, bias = (args + [None, None])[:3]
    rank = len(x.shape)
    if positive_axis(attrs.get("axis", -1), rank) != rank - 1 or len(scale.shape) != 1:
        raise cx.error("LayerNormalization over more than the last axis is not supported")
    if bias is None:
        bias = Const(np.zeros(scale.shape, np_dtype(scale.dtype)), scale.dtype, f"{node.name}.zero_bias")
    out = cx.op("layer_norm", [x, scale, bias], eps=float(attrs.get("epsilon", 1e-5)))
    return [out] + [None] * (len(node.output) - 1)


# --- masks ----------------------------------------------------------------------------------------------
def _trilu(cx, node, args, attrs):
    k = int(cx.ints(args[1], "the Trilu diagonal")[0]) if len(args) > 1 and args[1] is not None else 0
    return cx.op("triu" if attrs.get("upper", 1) else "tril", [args[0]], diagonal=k)


# --- sources --------------------------------------------------------------------------------------------
def _constant(cx, node, args, attrs):
    if "value" in attrs:
        array = attrs["value"]
        return Const(np.asarray(array, order="C"), cx.onnx_dtype(_onnx_type(array), f"Constant {node.name!r}"))
    for key, dtype in (("value_float", "f32"), ("value_floats", "f32"), ("value_int", "i64"),
                       ("value_ints", "i64")):
        if key in attrs:
            return Const(np.asarray(attrs[key], dtype=np_dtype(dtype)), dtype)
    raise cx.error(f"Constant with {', '.join(attrs) or 'no value'} is not supported (only numeric tensors)")


def _onnx_type(array: np.ndarray) -> int:
    for code, dtype in ONNX_DTYPES.items():
        if np.dtype(np_dtype(dtype)) == array.dtype:
            return code
    return -1


def _constant_of_shape(cx, node, args, attrs):
    value = attrs.get("value", np.zeros(1, np.float32))
    dtype = cx.onnx_dtype(_onnx_type(value), f"ConstantOfShape {node.name!r}")
    dims = tuple(cx.dim(d) for d in cx.ints(args[0], "the ConstantOfShape shape"))
    return cx.full(value.reshape(-1)[0].item(), dims, dtype)


def _range(cx, node, args, attrs):
    start, limit, delta = (cx.static(a, "Range bounds") for a in args)
    dtype = start.dtype
    if not (start.symbolic or limit.symbolic or delta.symbolic):
        return Const(np.arange(start.array.item(), limit.array.item(), delta.array.item()).astype(np_dtype(dtype)),
                     dtype)
    s, e, d = (c.array.reshape(-1)[0] for c in (start, limit, delta))
    if not (s == 0 and d == 1):
        raise cx.error(f"Range({s}, {e}, {d}) over a symbolic size is only supported from 0 in steps of 1")
    end = cx.dim(e)
    return Node("arange", (), {"end": end}, TensorType((end,), dtype), cx.loc)


# --- found by enumerating the exports of transformers' decoders (scripts/onnx_table.py) ---------------------
def _gather_elements(cx, node, args, attrs):  # GatherElements{axis}(x, index) -> gather (torch.gather's export)
    x, index = args
    return cx.op("gather", [x, index], axis=positive_axis(attrs.get("axis", 0), len(x.shape)))


def _cumsum(cx, node, args, attrs):  # CumSum(x, axis) -> cumsum (positions from a mask)
    if attrs.get("exclusive", 0) or attrs.get("reverse", 0):
        raise cx.error("CumSum with exclusive or reverse is not supported")
    (axis,) = cx.ints(args[1], "the CumSum axis")
    return cx.op("cumsum", [args[0]], axis=positive_axis(int(axis), len(args[0].shape)))


def _softplus(cx, node, args, attrs):  # Softplus(x) -> where(x > 20, x, log(exp(x) + 1)) (torch's threshold)
    x = args[0]
    one, limit = (make_const(v, x.dtype) for v in (1.0, 20.0))
    soft = cx.op("log", [cx.op("add", [cx.op("exp", [x]), one])])
    return cx.op("where", [cx.op("gt", [x, limit]), x, soft])


def _tile(cx, node, args, attrs):  # Tile(x, repeats) -> reshape(expand(reshape(x, [1, s0, 1, s1, ..])), ..)
    x, repeats = args[0], cx.ints(args[1], "the Tile repeats")
    if any(r != 1 and not isinstance(d, int) for r, d in zip(repeats, x.shape)):
        raise cx.error("Tile along a symbolic dim is not supported")
    split = tuple(v for d in x.shape for v in (1, d))
    wide = tuple(v for r, d in zip(repeats, x.shape) for v in (int(r), d))
    out = cx.op("expand", [cx.op("reshape", [x], shape=split)], shape=wide)
    return cx.op("reshape", [out], shape=tuple(d if r == 1 else int(r) * d for r, d in zip(repeats, x.shape)))


HANDLERS = {
    **{op: _unary(ir) for op, ir in {
        "Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Reciprocal": "reciprocal", "Tanh": "tanh",
        "Sigmoid": "sigmoid", "Erf": "erf", "Sin": "sin", "Cos": "cos", "Relu": "relu", "Abs": "abs",
        "Not": "logical_not", "IsNaN": "isnan"}.items()},
    **{op: _binary(ir) for op, ir in {
        "Add": "add", "Sub": "sub", "Mul": "mul", "Pow": "pow", "Equal": "eq", "Greater": "gt", "Less": "lt",
        "GreaterOrEqual": "ge", "LessOrEqual": "le", "And": "logical_and", "Or": "logical_or"}.items()},
    "Div": _div, "IsInf": _is_inf, "Clip": _clip, "Max": _variadic("maximum"), "Min": _variadic("minimum"),
    "Sum": _variadic("add"),
    "Gelu": _gelu, "Softmax": _softmax, "Where": _where, "Cast": _cast, "CastLike": _cast_like,
    "Identity": _identity, "Dropout": _identity,
    "MatMul": _matmul, "Gemm": _gemm,
    "ReduceMean": _reduce("mean", 18), "ReduceSum": _reduce("sum", 13), "ReduceMax": _reduce("max", 18),
    "LayerNormalization": _layer_norm,
    **SHAPE_HANDLERS, "Trilu": _trilu,
    "Constant": _constant, "ConstantOfShape": _constant_of_shape, "Range": _range,
    "GatherElements": _gather_elements, "CumSum": _cumsum, "Softplus": _softplus, "Tile": _tile,
    **TAIL_HANDLERS,  # the long tail found by exporting transformers' decoders (onnx_ops_tail.py)
}

__all__ = ["HANDLERS", "attributes"]
