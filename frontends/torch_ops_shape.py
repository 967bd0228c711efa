"""The aten -> IR handlers of shape and indexing ops (views, permutes, slices, splits, concatenation, index_select
/ index_copy, triangles), and `slice_of`, which the MLIR frontend shares: a slice of a symbolic dim becomes a
static window or a slice whose bounds and length are symbolic dims (ir/dims.py). Part of the table in torch_ops.py.
"""

from __future__ import annotations

import torch

from ..ir import TensorType, dims
from ..ir.types import positive_axis
from .torch_dims import sympy_dim

BIG = 2**62  # slice ends at or beyond this mean "to the end" (torch spells it 9223372036854775807)


def _reshape(cx, node, x, *args, **kwargs):  # view / unsqueeze / squeeze / flatten -> reshape to torch's shape
    shape = cx.out(node).shape
    return x if x.shape == shape else cx.emit("reshape", [x], shape=shape)


def _expand(cx, node, x, *args, **kwargs):
    return cx.expanded(x, cx.out(node).shape)


def _permute(cx, node, x, dims):
    axes = tuple(positive_axis(d, x.type.rank) for d in dims)
    return x if axes == tuple(range(x.type.rank)) else cx.emit("permute", [x], axes=axes)


def _transpose(cx, node, x, d0=0, d1=1):  # transpose(x, i, j) / t(x) -> permute
    axes = list(range(x.type.rank))
    if x.type.rank >= 2:
        i, j = positive_axis(d0, x.type.rank), positive_axis(d1, x.type.rank)
        axes[i], axes[j] = axes[j], axes[i]
    return _permute(cx, node, x, axes)


def slice_of(cx, x, axis, start, end, step=1):
    """x[start:end:step] along `axis`; with a symbolic dim or bounds: a static window of the symbolic dim as an
    index_select, else a slice whose bounds and length are affine dims (ir/dims.py: [:-1] of kv+1 is kv)."""
    dim = x.shape[axis]
    if _minus(cx, start) == dim:  # x[-n:] of an axis n long (XLM's ids[:, -(n - cached):] with nothing cached)
        start = 0
    start = 0 if start is None else cx.dim(start)
    end = None if end is None or (isinstance(end, int) and end >= BIG) else cx.dim(end)
    start, end = (_from_end(cx, b, dim) for b in (start, end))
    if isinstance(dim, int) and isinstance(start, int) and not isinstance(end, str):
        start, end, step = slice(start, end, step).indices(dim)
        if (start, end, step) == (0, dim, 1):
            return x
        return cx.emit("slice", [x], axis=axis, start=start, end=end, step=step)
    if start == 0 and step == 1 and end in (None, dim):
        return x
    if start == 0 and step == 1 and isinstance(end, str):
        return cx.emit("slice", [x], axis=axis, start=0, end=end)
    end = 0 if end is None and isinstance(start, int) and start < 0 else end
    if isinstance(start, int) and isinstance(end, int) and (start < 0) == (end <= 0) and start < end and step == 1:
        if start < 0 and end == 0 and _at_most(cx, dim, -start):  # x[-n:] of a dim never longer than n: all of it
            return x  # (XLNet's memory `h[-mem_len:]`; torch clamps the start to 0)
        index = cx.source_node("constant", TensorType((end - start,), "i64"), value=tuple(range(start, end)))
        return cx.emit("index_select", [x, index], axis=axis)  # a static window of the symbolic dim
    if step == 1:  # bounds in range by construction (torch's guards); negative ints count from the end, and an
        # end of 0 here is x[-n:]'s
        start, end = (dims.add(dim, b) if isinstance(b, int) and b < 0 else b for b in (start, end or dim))
        return x if (start, end) == (0, dim) else cx.emit("slice", [x], axis=axis, start=start, end=end)
    raise cx.symbolic_error(f"slice [{start}:{end}:{step}] of the symbolic dim `{dim}` cannot be expressed; "
                            "import with dynamic_seq=False")


def _at_most(cx, dim, n: int) -> bool:
    """Whether the symbolic `dim` is at most n for every length the dims' bounds allow."""
    return dims.interval(dim, getattr(cx, "bounds", {}))[1] <= n


def _from_end(cx, bound, size):
    """A symbolic slice bound as a position: counted from the end of `size` where it is negative for every length
    the dims' bounds allow (x[-(n + 3):] of n + 3 rows; MiniMax's key_decay[:, -min(seq, 256):]), as is where it
    is never negative. One whose sign the bounds do not decide has no single size: a precise error. A bound of
    several names (`kv - seq`) is ordered by the caller (a decoder's kv >= seq), which no interval says: as is."""
    if not isinstance(bound, str):
        return bound
    known = getattr(cx, "bounds", {})
    least, most = dims.interval(bound, known)
    if least >= 0 or (most >= 0 and len(dims.names(bound)) > 1):
        return bound
    spans = ", ".join("{} in [{}, {}]".format(n, *known.get(n, (1, "∞"))) for n in dims.names(bound))
    if most >= 0:
        raise cx.symbolic_error(f"the slice bound `{bound}` of the dim `{size}` is negative for some lengths and not "
                                f"for others ({spans}): torch counts a negative bound from the end, so the slice has "
                                "no single size; import with dynamic_seq=False")
    position = dims.add(size, bound)
    # torch clamps a start before the first row to 0 (checked against a static size; of a symbolic one the
    # intervals lose that both sides grow with the length, and torch's shape check stands in)
    if isinstance(size, int) and dims.interval(position, known)[0] < 0:
        raise cx.symbolic_error(f"the slice bound `{bound}` counts back past the start of the dim `{size}` for some "
                                f"lengths ({spans}), where torch clamps it to 0; import with dynamic_seq=False")
    return position


def _minus(cx, size):
    """The dim `n` of a symbolic size `-n` (a name, or affine: XLM slices its seq+1 ids by -(seq+1)), else None."""
    expr = getattr(getattr(size, "node", None), "expr", None)
    if expr is None or not (-expr).free_symbols <= set(cx.symbols):
        return None
    return cx.symbols.get(-expr) if (-expr).is_Symbol else sympy_dim(-expr, cx.symbols, cx.bounds, cx.facts)


def _slice(cx, node, x, dim=0, start=None, end=None, step=1):
    return slice_of(cx, x, positive_axis(dim, x.type.rank), start, end, step)


def _narrow(cx, node, x, dim, start, length):
    return slice_of(cx, x, positive_axis(dim, x.type.rank), start, cx.dim(start) + cx.dim(length))


def _select(cx, node, x, dim, index):  # select(x, d, i) -> reshape(slice(x, d, i:i+1))
    axis, index = positive_axis(dim, x.type.rank), cx.dim(index)
    part = slice_of(cx, x, axis, index, None if index == -1 else index + 1)
    return cx.emit("reshape", [part], shape=cx.out(node).shape)


def _split(cx, node, x, *args, **kwargs):  # split(_with_sizes) / tensor_split / chunk / unbind -> slices (torch sizes)
    unbind = node.target.overloadpacket is torch.ops.aten.unbind
    dim = (args if unbind else args[1:])[:1] or [kwargs.get("dim", 0)]
    axis, parts, start = positive_axis(dim[0], x.type.rank), [], 0
    for val in node.meta["val"]:  # each part from the sum of torch's sizes before it (chunks of 3*seq: affine)
        size = 1 if unbind else val.shape[axis]
        part = slice_of(cx, x, axis, start, start + size)
        parts.append(cx.emit("reshape", [part], shape=cx.shape(val)) if unbind else part)
        start = start + size
    return tuple(parts)


def _getitem(cx, node, seq, index):
    return seq[index]


def _cat(cx, node, tensors, dim=0):
    dtype = cx.out(node).dtype
    tensors = [cx.tensor(t, dtype) for t in tensors]
    if any(t.type.rank > 1 for t in tensors):  # torch skips 1-D empty parts (the legacy `torch.tensor([])` of
        tensors = [t for t in tensors if tuple(t.shape) != (0,)] or tensors  # an empty cache, XLM's)
    if len(tensors) == 1:
        return tensors[0]
    return cx.emit("concat", tensors, axis=positive_axis(dim, tensors[0].type.rank))


def _stack(cx, node, tensors, dim=0):  # stack -> concat of unsqueezed parts
    axis = positive_axis(dim, tensors[0].type.rank + 1)
    parts = [cx.emit("reshape", [t], shape=(*t.shape[:axis], 1, *t.shape[axis:])) for t in tensors]
    parts = [cx.cast(p, cx.out(node).dtype) for p in parts]
    return parts[0] if len(parts) == 1 else cx.emit("concat", parts, axis=axis)


def _index_select(cx, node, x, dim, index):
    return cx.emit("index_select", [x, index], axis=positive_axis(dim, x.type.rank))


def _index_copy(cx, node, x, dim, index, src):  # index_copy(cache, 2, positions, new) -> index_copy
    return cx.emit("index_copy", [x, index, cx.cast(src, x.dtype)], axis=positive_axis(dim, x.type.rank))


def _triangle(op):
    def handle(cx, node, x, diagonal=0):
        return cx.emit(op, [x], diagonal=diagonal)
    return handle


SHAPE_TO_IR = {
    **dict.fromkeys(["aten.view", "aten._unsafe_view", "aten.reshape", "aten.flatten.using_ints", "aten.unflatten",
                     "aten.unsqueeze", "aten.squeeze", "aten.view_as", "aten.reshape_as"], _reshape),
    **dict.fromkeys(["aten.expand", "aten.expand_as"], _expand),
    "aten.permute": _permute, **dict.fromkeys(["aten.transpose.int", "aten.t", "aten.swapaxes"], _transpose),
    "aten.slice.Tensor": _slice, "aten.narrow": _narrow, "aten.select.int": _select,
    **dict.fromkeys(["aten.split.Tensor", "aten.split_with_sizes", "aten.chunk", "aten.unbind.int",
                     "aten.tensor_split.indices", "aten.tensor_split.sections"], _split),
    "getitem": _getitem, **dict.fromkeys(["aten.cat", "aten.concatenate", "aten.concat"], _cat), "aten.stack": _stack,
    "aten.index_select": _index_select, "aten.index_copy": _index_copy,
    "aten.triu": _triangle("triu"), "aten.tril": _triangle("tril"),
}
