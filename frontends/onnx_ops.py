"""The ONNX -> IR table: `HANDLERS[op_type] = handler(cx, node, args, attrs)`.

`args` are the node's inputs as values (`Const` when known at import time, IR `Node` otherwise; None for an
omitted optional input), `attrs` its attributes as Python values. A handler returns a value or a list of
values (one per output) and builds IR through `cx.op(...)`, which folds static inputs, so each mapping is
written once for both the shape computations and the model's dataflow.
"""

from __future__ import annotations

import operator

import numpy as np

from ..ir import Node, TensorType, op_def
from ..ir.types import is_float, np_dtype
from .onnx import ONNX_DTYPES, Const, make_const, normalize

BIG = 2**62  # slice bounds at or beyond this mean "to the end" (exporters write INT64_MAX)


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


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# --- folding static values ------------------------------------------------------------------------------
def fold(cx, op: str, inputs: list[Const], attrs: dict, ttype: TensorType) -> Const:
    """Run IR op `op` at import time with its numpy reference (object arrays: the symbolic rules below)."""
    opdef = op_def(op)
    attrs = {**{k: v for k, v in opdef.attrs.items() if k not in attrs}, **attrs}
    arrays = [i.array for i in inputs]
    if any(i.symbolic for i in inputs):
        return normalize(_fold_symbolic(cx, op, arrays, attrs, ttype), ttype.dtype)
    with np.errstate(all="ignore"):
        out = opdef.reference(*arrays, attrs, {})
    return Const(np.asarray(out).astype(np_dtype(ttype.dtype)), ttype.dtype)


def _trunc_div(a, b):
    if isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)):
        return int(a / b)
    q = a / b
    if not getattr(q, "is_integer", False):
        raise ValueError(f"{a} / {b} is not a whole number")
    return q


def _fold_symbolic(cx, op, arrays, attrs, ttype):
    sympy = cx.sympy
    arrays = [a.astype(object) if not (op == "index_select" and i == 1) else a for i, a in enumerate(arrays)]
    structural = {"reshape", "permute", "expand", "slice", "concat", "index_select"}
    if op in structural:
        return np.asarray(op_def(op).reference(*arrays, attrs, {}), dtype=object)
    if op == "cast":
        if is_float(ttype.dtype):
            raise cx.error("a symbolic size is converted to a float, which the IR cannot express; export with "
                           "static shapes")
        if ttype.dtype == "bool":
            return np.frompyfunc(lambda x: _truth(cx, sympy.Ne(x, 0)), 1, 1)(arrays[0])
        return arrays[0]
    if op == "where":
        return np.where(arrays[0].astype(bool), arrays[1], arrays[2])
    compare = {"eq": sympy.Eq, "ne": sympy.Ne, "lt": sympy.Lt, "le": sympy.Le, "gt": sympy.Gt, "ge": sympy.Ge}
    if op in compare:
        fn = compare[op]
        return np.frompyfunc(lambda a, b: _truth(cx, fn(a, b)), 2, 1)(*arrays)
    arith = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": _trunc_div,
             "maximum": sympy.Max, "minimum": sympy.Min, "neg": operator.neg}
    if op not in arith:
        raise cx.error(f"{op} of a symbolic size cannot be computed at import time; export with static shapes")
    try:
        return np.frompyfunc(arith[op], len(arrays), 1)(*arrays)
    except (ValueError, TypeError) as err:
        raise cx.error(f"{op} of symbolic sizes: {err}; export with static shapes") from None


def _truth(cx, relation) -> bool:
    if relation in (cx.sympy.true, cx.sympy.false) or isinstance(relation, bool):
        return bool(relation)
    raise cx.error(f"the condition `{relation}` depends on the symbolic sequence length; export with static "
                   "shapes")


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
    return cx.op("softmax", [args[0]], axis=_axis(attrs.get("axis", -1), len(args[0].shape)))


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
        axes = tuple(sorted(_axis(int(a), rank) for a in axes))
        return cx.op(ir_op, [x], axes=axes, keepdim=bool(attrs.get("keepdims", 1)))
    return handle


def _layer_norm(cx, node, args, attrs):
    x, scale, bias = (args + [None, None])[:3]
    rank = len(x.shape)
    if _axis(attrs.get("axis", -1), rank) != rank - 1 or len(scale.shape) != 1:
        raise cx.error("LayerNormalization over more than the last axis is not supported")
    if bias is None:
        bias = Const(np.zeros(scale.shape, np_dtype(scale.dtype)), scale.dtype, f"{node.name}.zero_bias")
    out = cx.op("layer_norm", [x, scale, bias], eps=float(attrs.get("epsilon", 1e-5)))
    return [out] + [None] * (len(node.output) - 1)


# --- shapes ---------------------------------------------------------------------------------------------
def _shape(cx, node, args, attrs):
    dims = cx.sym_shape(args[0])
    rank = len(dims)
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    start, end = (min(max(_axis(v, rank), 0), rank) for v in (start, end))
    return cx.shape_const(dims[start:end])


def _size(cx, node, args, attrs):
    total = 1
    for d in cx.sym_shape(args[0]):
        total = total * d
    return make_const(total, "i64")


def _reshape_to(cx, x, dims):
    """Reshape to a list of ints / sympy dims (already resolved); reshape(reshape(x)) -> reshape(x)."""
    shape = tuple(cx.dim(d) for d in dims)
    if tuple(x.shape) == shape:
        return x
    if isinstance(x, Node) and x.op == "reshape":
        x = x.inputs[0]
        if tuple(x.shape) == shape:
            return x
    return cx.op("reshape", [x], shape=shape)


def _reshape(cx, node, args, attrs):
    x, target = args
    target = cx.ints(target, "the Reshape target shape")
    in_shape = cx.sym_shape(x)
    out = [in_shape[i] if (isinstance(d, int) and d == 0 and not attrs.get("allowzero", 0)) else d
           for i, d in enumerate(target)]
    unknown = [i for i, d in enumerate(out) if isinstance(d, int) and d == -1]
    if len(unknown) > 1:
        raise cx.error(f"Reshape target {target} has more than one -1")
    if unknown:
        known = 1
        for i, d in enumerate(out):
            if i != unknown[0]:
                known = known * d
        total = 1
        for d in in_shape:
            total = total * d
        out[unknown[0]] = cx.sympy.simplify(total / known) if not isinstance(total, int) or not isinstance(
            known, int) else total // known
    return _reshape_to(cx, x, out)


def _unsqueeze(cx, node, args, attrs):
    x = args[0]
    axes = cx.ints(args[1], "the Unsqueeze axes") if len(args) > 1 else list(attrs["axes"])
    rank = len(x.shape) + len(axes)
    dims = cx.sym_shape(x)
    for a in sorted(_axis(int(a), rank) for a in axes):
        dims.insert(a, 1)
    return _reshape_to(cx, x, dims)


def _squeeze(cx, node, args, attrs):
    x = args[0]
    dims = cx.sym_shape(x)
    if len(args) > 1 and args[1] is not None:
        axes = {_axis(int(a), len(dims)) for a in cx.ints(args[1], "the Squeeze axes")}
    else:
        axes = {i for i, d in enumerate(dims) if isinstance(d, int) and d == 1}
    if any(not (isinstance(dims[a], int) and dims[a] == 1) for a in axes):
        raise cx.error(f"Squeeze of axes {sorted(axes)} that are not of size 1 in {list(x.shape)}")
    return _reshape_to(cx, x, [d for i, d in enumerate(dims) if i not in axes])


def _flatten(cx, node, args, attrs):
    x = args[0]
    dims = cx.sym_shape(x)
    axis = _axis(attrs.get("axis", 1), len(dims))
    outer, inner = 1, 1
    for d in dims[:axis]:
        outer = outer * d
    for d in dims[axis:]:
        inner = inner * d
    return _reshape_to(cx, x, [outer, inner])


def _transpose(cx, node, args, attrs):
    x = args[0]
    rank = len(x.shape)
    perm = tuple(_axis(int(p), rank) for p in attrs.get("perm", range(rank - 1, -1, -1)))
    if perm == tuple(range(rank)):
        return x
    out = cx.op("permute", [x], axes=perm)
    if isinstance(x, Const) and rank == 2 and isinstance(out, Const):
        cx.transposed[id(out)] = (out, x)  # MatMul(a, Transpose(@w)) -> linear(a, @w)
    return out


def _expand(cx, node, args, attrs):
    x, shape = args
    target = cx.ints(shape, "the Expand shape")
    dims = cx.sym_shape(x)
    rank = max(len(dims), len(target))
    dims = [1] * (rank - len(dims)) + dims
    target = [1] * (rank - len(target)) + target
    out = []
    for a, b in zip(dims, target, strict=False):
        if isinstance(b, int) and b == 1:
            out.append(a)
        elif (isinstance(a, int) and a == 1) or a == b:
            out.append(b)
        else:
            raise cx.error(f"Expand of {list(x.shape)} to {target}: dims {a} and {b} do not broadcast")
    shape = tuple(cx.dim(d) for d in out)
    if shape == tuple(x.shape):
        return x
    if len(shape) > len(x.shape):
        x = _reshape_to(cx, x, [1] * (len(shape) - len(x.shape)) + cx.sym_shape(x))
    return x if tuple(x.shape) == shape else cx.op("expand", [x], shape=shape)


def _concat(cx, node, args, attrs):
    parts = [a for a in args if a is not None and 0 not in a.shape]
    if len(parts) == 1:
        return parts[0]
    return cx.op("concat", parts, axis=_axis(attrs["axis"], len(parts[0].shape)))


def slice_of(cx, x, axis: int, start, end, step=1):
    """x[start:end:step] along `axis` (ONNX Slice semantics; bounds clamp)."""
    dim = x.shape[axis]
    if isinstance(end, int) and end >= BIG:
        end = None
    if isinstance(dim, int) and isinstance(start, int) and (end is None or isinstance(end, int)):
        if step < 0 and end is not None and end < -dim:
            end = None
        start, stop, step = slice(start, end, step).indices(dim)
        if (start, stop, step) == (0, dim, 1):
            return x
        return cx.op("slice", [x], axis=axis, start=start, end=None if step < 0 and stop < 0 else stop, step=step)
    sym_end = None if end is None else cx.sympy.sympify(end)
    if start == 0 and step == 1 and (sym_end is None or sym_end == cx.sym(dim)):
        return x
    if start == 0 and step == 1 and sym_end is not None and sym_end.is_Symbol:
        return cx.op("slice", [x], axis=axis, start=0, end=cx.dim(sym_end))
    stop = 0 if end is None else end
    if isinstance(start, int) and isinstance(stop, int) and step == 1 and start < 0 and stop <= 0 and start < stop:
        index = Const(np.arange(start, stop, dtype=np.int64), "i64")  # a window at the end of a symbolic dim
        return cx.op("index_select", [x, index], axis=axis)
    raise cx.error(f"slice [{start}:{end}:{step}] of the symbolic dim `{dim}` cannot be expressed in the IR; export "
                   "with static shapes")


def _slice(cx, node, args, attrs):
    x, starts, ends = args[:3]
    starts, ends = cx.ints(starts, "Slice starts"), cx.ints(ends, "Slice ends")
    rank = len(x.shape)
    axes = cx.ints(args[3], "Slice axes") if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = cx.ints(args[4], "Slice steps") if len(args) > 4 and args[4] is not None else [1] * len(starts)
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=False):
        x = slice_of(cx, x, _axis(int(axis), rank), start, end, int(step))
    return x


def _split(cx, node, args, attrs):
    x = args[0]
    axis = _axis(attrs.get("axis", 0), len(x.shape))
    dim = x.shape[axis]
    n_out = len(node.output)
    if len(args) > 1 and args[1] is not None:
        sizes = [int(s) for s in cx.ints(args[1], "the Split sizes")]
    elif "split" in attrs:
        sizes = list(attrs["split"])
    else:
        if not isinstance(dim, int):
            raise cx.error(f"Split of the symbolic dim `{dim}` into equal parts; export with static shapes")
        n = attrs.get("num_outputs", n_out)
        chunk = -(-dim // n)
        sizes = [min(chunk, dim - i * chunk) for i in range(n)]
    parts, start = [], 0
    for size in sizes:
        parts.append(slice_of(cx, x, axis, start, start + size))
        start += size
    return parts


def _gather(cx, node, args, attrs):
    data, idx = args
    axis = _axis(attrs.get("axis", 0), len(data.shape))
    dim = data.shape[axis]
    if isinstance(idx, Const) and not idx.symbolic and isinstance(dim, int):
        idx = Const(np.where(idx.array < 0, idx.array + dim, idx.array), idx.dtype)
    if isinstance(data, Const) and not isinstance(idx, Const) and axis == 0 and len(data.shape) == 2 \
            and is_float(data.dtype) and data.array.size > 1:
        return cx.op("embedding", [cx.node_as_weight(data), idx])  # rows of a table
    if isinstance(idx, Const) and idx.array.ndim == 0 and not isinstance(data, Const):
        i = int(idx.array)
        part = slice_of(cx, data, axis, i, i + 1 if i != -1 else None)  # x[..., i, ...]
        return _reshape_to(cx, part, [d for i, d in enumerate(cx.sym_shape(data)) if i != axis])
    if idx.dtype not in ("i64", "i32"):
        raise cx.error(f"Gather indices of type {idx.dtype}")
    return cx.op("index_select", [data, idx], axis=axis)


def _gather_nd(cx, node, args, attrs):
    data, idx = args
    if attrs.get("batch_dims", 0):
        raise cx.error("GatherND with batch_dims is not supported")
    depth = idx.shape[-1]
    if not isinstance(depth, int):
        raise cx.error("GatherND needs a static index depth")
    out_shape = tuple(idx.shape[:-1]) + tuple(data.shape[depth:])
    value = cx.uniform(data)
    if value is not None:  # gathering from a tensor of one value (e.g. an all-ones attention mask)
        return cx.full(value[0], out_shape, data.dtype)
    if isinstance(data, Const) and isinstance(idx, Const):
        return Const(np.asarray(data.array[tuple(np.moveaxis(idx.array, -1, 0))], order="C"), data.dtype)
    wide = [k for k in range(depth) if data.shape[k] != 1]
    if len(wide) > 1:
        raise cx.error("GatherND indexing more than one dim of size > 1 is not supported")
    k = wide[0] if wide else 0
    squeezed = _reshape_to(cx, data, [d for i, d in enumerate(cx.sym_shape(data)) if i >= depth or i == k])
    col = slice_of(cx, idx, len(idx.shape) - 1, k, k + 1)
    col = _reshape_to(cx, col, cx.sym_shape(col)[:-1])
    return cx.op("index_select", [squeezed, col], axis=0)


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


HANDLERS = {
    **{op: _unary(ir) for op, ir in {
        "Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Reciprocal": "reciprocal", "Tanh": "tanh",
        "Sigmoid": "sigmoid", "Erf": "erf", "Sin": "sin", "Cos": "cos", "Relu": "relu", "Abs": "abs",
        "Not": "logical_not"}.items()},
    **{op: _binary(ir) for op, ir in {
        "Add": "add", "Sub": "sub", "Mul": "mul", "Pow": "pow", "Equal": "eq", "Greater": "gt", "Less": "lt",
        "GreaterOrEqual": "ge", "LessOrEqual": "le", "And": "logical_and", "Or": "logical_or"}.items()},
    "Div": _div, "Clip": _clip, "Max": _variadic("maximum"), "Min": _variadic("minimum"), "Sum": _variadic("add"),
    "Gelu": _gelu, "Softmax": _softmax, "Where": _where, "Cast": _cast, "CastLike": _cast_like,
    "Identity": _identity, "Dropout": _identity,
    "MatMul": _matmul, "Gemm": _gemm,
    "ReduceMean": _reduce("mean", 18), "ReduceSum": _reduce("sum", 13), "ReduceMax": _reduce("max", 18),
    "LayerNormalization": _layer_norm,
    "Shape": _shape, "Size": _size, "Reshape": _reshape, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "Flatten": _flatten, "Transpose": _transpose, "Expand": _expand, "Concat": _concat, "Slice": _slice,
    "Split": _split, "Gather": _gather, "GatherND": _gather_nd, "Trilu": _trilu,
    "Constant": _constant, "ConstantOfShape": _constant_of_shape, "Range": _range,
}
