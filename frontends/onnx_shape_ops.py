"""The ONNX -> IR table for shape and indexing ops: `SHAPE_HANDLERS[op_type] = handler(cx, node, args, attrs)`.

Shape, Size, Reshape, Unsqueeze, Squeeze, Flatten, Transpose, Expand, Concat, Slice, Split, Gather and GatherND,
with the helper they share (`slice_of`; axes go through `ir.types.positive_axis`). These ops carry the Shape ->
Gather -> Unsqueeze -> Concat chains that exporters emit for sizes, so they are written for both static values
(folded through `cx.op`, possibly symbolic) and the model's dataflow; a reshape of a reshape collapses to one. The
handler convention is that of `onnx_ops.py`, whose `HANDLERS` table includes this one.
"""

from __future__ import annotations

import numpy as np

from ..ir import Node
from ..ir.types import is_float, positive_axis
from .onnx_values import Const, make_const

BIG = 2**62  # slice bounds at or beyond this mean "to the end" (exporters write INT64_MAX)


def _shape(cx, node, args, attrs):
    dims = cx.sym_shape(args[0])
    rank = len(dims)
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    start, end = (min(max(positive_axis(v, rank), 0), rank) for v in (start, end))
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
    for a in sorted(positive_axis(int(a), rank) for a in axes):
        dims.insert(a, 1)
    return _reshape_to(cx, x, dims)


def _squeeze(cx, node, args, attrs):
    x = args[0]
    dims = cx.sym_shape(x)
    if len(args) > 1 and args[1] is not None:
        axes = {positive_axis(int(a), len(dims)) for a in cx.ints(args[1], "the Squeeze axes")}
    else:
        axes = {i for i, d in enumerate(dims) if isinstance(d, int) and d == 1}
    if any(not (isinstance(dims[a], int) and dims[a] == 1) for a in axes):
        raise cx.error(f"Squeeze of axes {sorted(axes)} that are not of size 1 in {list(x.shape)}")
    return _reshape_to(cx, x, [d for i, d in enumerate(dims) if i not in axes])


def _flatten(cx, node, args, attrs):
    x = args[0]
    dims = cx.sym_shape(x)
    axis = positive_axis(attrs.get("axis", 1), len(dims))
    outer, inner = 1, 1
    for d in dims[:axis]:
        outer = outer * d
    for d in dims[axis:]:
        inner = inner * d
    return _reshape_to(cx, x, [outer, inner])


def _transpose(cx, node, args, attrs):
    x = args[0]
    rank = len(x.shape)
    perm = tuple(positive_axis(int(p), rank) for p in attrs.get("perm", range(rank - 1, -1, -1)))
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
    return cx.op("concat", parts, axis=positive_axis(attrs["axis"], len(parts[0].shape)))


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
        x = slice_of(cx, x, positive_axis(int(axis), rank), start, end, int(step))
    return x


def _split(cx, node, args, attrs):
    x = args[0]
    axis = positive_axis(attrs.get("axis", 0), len(x.shape))
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
    axis = positive_axis(attrs.get("axis", 0), len(data.shape))
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


SHAPE_HANDLERS = {
    "Shape": _shape, "Size": _size, "Reshape": _reshape, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "Flatten": _flatten, "Transpose": _transpose, "Expand": _expand, "Concat": _concat, "Slice": _slice,
    "Split": _split, "Gather": _gather, "GatherND": _gather_nd,
}

__all__ = ["SHAPE_HANDLERS", "slice_of"]
