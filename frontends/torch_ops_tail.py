"""The long tail of the aten -> IR table, found by enumerating transformers' causal LMs (hf_coverage.py).

Merged into `torch_ops.ATEN_TO_IR`; same handler contract (see torch_ops.py). Grouped by what needs them:
activations spelled as aten ops (relu², softplus, ReLU6, mish), routers and position ids (gather, scatter,
cumsum, argmax / max.dim), interleaved rotary tables (repeat_interleave with a constant count), advanced
indexing of adjacent dims (mask functions' `mask[batch_idx, kv_idx]`). Anything
still missing is decomposed by torch itself before import (torch_export.decompose_missing).
"""

from __future__ import annotations

import math

import torch

from ..ir import dims
from ..ir.types import positive_axis
from .torch_einsum import einsum, handles
from .torch_masked_rows import masked_rows
from .torch_ops_layers import LAYER_TO_IR, slice_scatter


# --- activations -----------------------------------------------------------------------------------------
def _square(cx, node, x):  # square(x) -> mul(x, x)   (relu² = square(relu(x)): Primer, Nemotron, Persimmon)
    x = cx.tensor(x, cx.out(node).dtype)
    return cx.emit("mul", [x, x])


def _softplus(cx, node, x, beta=1, threshold=20):  # softplus -> where(βx > t, x, log(1 + exp(βx)) / β)
    dtype = cx.out(node).dtype
    bx = x if beta == 1 else cx.emit("mul", [x, cx.const(beta, dtype)])
    soft = cx.emit("log", [cx.emit("add", [cx.emit("exp", [bx]), cx.const(1.0, dtype)])])
    soft = soft if beta == 1 else cx.emit("div", [soft, cx.const(beta, dtype)])
    return cx.emit("where", [cx.emit("gt", [bx, cx.const(threshold, dtype)]), x, soft])


def _hardtanh(cx, node, x, lo=-1.0, hi=1.0):  # hardtanh(x, lo, hi) / relu6 -> minimum(maximum(x, lo), hi)
    dtype = cx.out(node).dtype
    return cx.emit("minimum", [cx.emit("maximum", [x, cx.const(lo, dtype)]), cx.const(hi, dtype)])


def _threshold(cx, node, x, threshold, value):  # threshold(x, t, v) -> where(gt(x, t), x, v)
    dtype = cx.out(node).dtype
    return cx.emit("where", [cx.emit("gt", [x, cx.const(threshold, dtype)]), x, cx.const(value, dtype)])


def _mish(cx, node, x):  # mish(x) -> x · tanh(softplus(x))
    return cx.emit("mul", [x, cx.emit("tanh", [_softplus(cx, node, x)])])


def _log1p(cx, node, x):  # log1p(x) -> log(add(x, 1))
    return cx.emit("log", [cx.emit("add", [x, cx.const(1.0, cx.out(node).dtype)])])


# --- routers, positions ----------------------------------------------------------------------------------
def _gather(cx, node, x, dim, index, sparse_grad=False):
    return cx.emit("gather", [x, index], axis=positive_axis(dim, x.type.rank))


def _scatter(cx, node, x, dim, index, src, *args, **kwargs):  # scatter(x, d, i, src | value) -> scatter
    if args or kwargs.get("reduce"):
        raise cx.error("scatter with a reduction is not supported (only plain assignment)")
    axis = positive_axis(dim, x.type.rank)
    return cx.emit("scatter", [x, index, cx.tensor(src, x.dtype)], axis=axis)


def _cumsum(cx, node, x, dim, dtype=None):
    return cx.emit("cumsum", [cx.tensor(x, cx.out(node).dtype)], axis=positive_axis(dim, x.type.rank))


def _argmax(cx, node, x, dim=None, keepdim=False):
    if dim is None:
        raise cx.error("argmax over all dims is not supported; give a dim")
    return cx.emit("argmax", [x], axis=positive_axis(dim, x.type.rank), keepdim=bool(keepdim))


def _max_dim(cx, node, x, dim, keepdim=False):  # max.dim -> (max over dim, argmax over dim)
    axis = positive_axis(dim, x.type.rank)
    return (cx.emit("max", [x], axes=(axis,), keepdim=bool(keepdim)),
            cx.emit("argmax", [x], axis=axis, keepdim=bool(keepdim)))


def _sort(cx, node, x, *args, dim=-1, descending=False, stable=None):  # sort -> (sort{values}, sort{indices})
    if args:  # sort.default(x, dim, descending) spells them positionally
        dim, descending = (*args, descending)[:2]
    axis = positive_axis(dim, x.type.rank)
    return tuple(cx.emit("sort", [x], axis=axis, descending=bool(descending), output=out)
                 for out in ("values", "indices"))  # stable either way: an unstable sort may order ties anyhow


def _std_var(square_root: bool):
    def handle(cx, node, x, dim=None, *args, correction=None, keepdim=False, unbiased=None):
        # std / var(x, dim, correction) -> sqrt?(sum((x - mean)²) / (N - correction))
        if args:  # std.dim(x, dim, unbiased, keepdim)
            unbiased, keepdim = (*args, keepdim)[:2]
        correction = correction if correction is not None else (0 if unbiased is False else 1)
        dims = [dim] if isinstance(dim, int) else list(dim or range(x.type.rank))
        axes = tuple(positive_axis(d, x.type.rank) for d in dims)
        if any(isinstance(x.shape[a], str) for a in axes):
            raise cx.error("std / var over a symbolic dim is not supported")
        dtype = cx.out(node).dtype
        x = cx.tensor(x, dtype)
        centred = cx.emit("sub", [x, cx.emit("mean", [x], axes=axes, keepdim=True)])
        total = cx.emit("sum", [cx.emit("mul", [centred, centred])], axes=axes, keepdim=bool(keepdim))
        n = math.prod(x.shape[a] for a in axes)
        out = cx.emit("div", [total, cx.const(float(max(n - correction, 0)), dtype)])
        return cx.emit("sqrt", [out]) if square_root else out
    return handle


# --- tables ----------------------------------------------------------------------------------------------
def _repeat_interleave(cx, node, x, repeats, dim=None, output_size=None):
    # repeat_interleave(x, r, d) -> reshape(expand(reshape(x, [.., n, 1, ..]), [.., n, r, ..]), [.., n·r, ..])
    if not isinstance(repeats, int):
        raise cx.error("repeat_interleave with per-element repeat counts has a data-dependent shape")
    if dim is None:
        x, axis = cx.emit("reshape", [x], shape=(math.prod(x.shape),)), 0
    else:
        axis = positive_axis(dim, x.type.rank)
    shape = x.shape
    split = (*shape[:axis + 1], 1, *shape[axis + 1:])
    wide = (*shape[:axis + 1], repeats, *shape[axis + 1:])
    return cx.tiled(x, split, wide, cx.out(node).shape)


def _eye(cx, node, *args, **kwargs):  # eye(n[, m]) -> cast(eq(arange(n)[:, None], arange(m)[None, :]))
    ttype = cx.out(node)
    rows, cols = ttype.shape
    row = cx.emit("reshape", [cx.arange(rows)], shape=(rows, 1))
    same = cx.emit("eq", [row, cx.emit("reshape", [cx.arange(cols)], shape=(1, cols))])
    return cx.tensor(same, ttype.dtype)


def _broadcast_tensors(cx, node, tensors):  # broadcast_tensors(xs) -> each expanded to torch's common shape
    shapes = [cx.shape(val) for val in node.meta["val"]]
    return tuple(cx.expanded(x, shape) for x, shape in zip(tensors, shapes))


def _numpy_t(cx, node, x):  # x.T on any rank (Falcon) -> permute(x, reversed axes)
    axes = tuple(reversed(range(x.type.rank)))
    return x if x.type.rank < 2 else cx.emit("permute", [x], axes=axes)


# --- functionalized writes (what torch's decompositions make of `new_empty` + `view.copy_`) ---------------------
def _empty(cx, node, *args, **kwargs):  # empty -> full(0) (functionalized: every element is written before use)
    ttype = cx.out(node)
    return cx.full(ttype.shape, ttype.dtype, 0)


def _copy(cx, node, dst, src, non_blocking=False):  # copy(dst, src) -> src broadcast to dst's type
    ttype = cx.out(node)
    return cx.expanded(cx.tensor(src, ttype.dtype), ttype.shape)


def _slice_scatter(cx, node, x, src, dim=0, start=None, end=None, step=1):
    return slice_scatter(cx, node, x, src, positive_axis(dim, x.type.rank), start, end, step)


# --- advanced indexing ------------------------------------------------------------------------------------
def _index(cx, node, x, indices):
    # x[i0, i1, ...] on adjacent dims -> index_select(x with those dims merged into one, flat index), the flat
    # index Σ_k i_k · stride_k over the dims not of size 1 (one such dim: its index as it is)
    used = [(d, i) for d, i in enumerate(indices) if i is not None]
    if any(i.dtype == "bool" for _, i in used):
        if len(indices) == 1 and hasattr(cx, "masked_rows") and isinstance(node, torch.fx.Node):
            return masked_rows(cx, node, x, indices[0])  # every row, kept where the mask holds by its write-back
        raise cx.error("indexing with a boolean mask has a data-dependent shape and is not supported")
    dims = [d for d, _ in used]
    if dims != list(range(dims[0], dims[0] + len(dims))):
        raise cx.error("advanced indexing is only supported on adjacent dims (torch moves the result's index dims "
                       "first otherwise)")
    wide = [(d, i) for d, i in used if x.shape[d] != 1] or used[:1]
    first, last = dims[0], dims[-1]
    merged = _size_product(x.shape[first:last + 1]) if len(wide) > 1 else x.shape[wide[0][0]]
    if merged is None:
        raise cx.symbolic_error("advanced indexing of several dims, two of them symbolic: the merged dim would be "
                                "their product, which IR dims cannot name; import with dynamic_seq=False")
    index = wide[-1][1]
    if len(wide) > 1:  # strides and sizes may be symbolic (one dim of the product at most): tensors of the dims
        index = _nonnegative(cx, index, x.shape[wide[-1][0]])
        for d, i in reversed(wide[:-1]):
            stride = cx.size_value(_size_product(x.shape[d + 1:last + 1]), index.dtype)
            scaled = cx.emit("mul", [_nonnegative(cx, cx.cast(i, index.dtype), x.shape[d]), stride])
            index = cx.emit("add", [scaled, index])
    squeezed = (*x.shape[:first], merged, *x.shape[last + 1:])
    x = x if squeezed == x.shape else cx.emit("reshape", [x], shape=squeezed)
    out = cx.out(node).shape
    width = len(out) - len(squeezed) + 1  # rank of the broadcast index
    wanted = out[first:first + width]
    index = cx.expanded(index, wanted)
    return cx.emit("index_select", [x, index], axis=first)


def _size_product(sizes):
    """The product of IR dims as an IR dim (constants times one symbolic dim at most), or None."""
    symbolic = [d for d in sizes if not isinstance(d, int)]
    if len(symbolic) > 1:
        return None
    constant = math.prod(d for d in sizes if isinstance(d, int))
    return dims.mul(symbolic[0], constant) if symbolic else constant


def _nonnegative(cx, index, size):  # torch counts a negative index from the end of its dim
    wrapped = cx.emit("add", [index, cx.size_value(size, index.dtype)])
    return cx.emit("where", [cx.emit("lt", [index, cx.const(0, index.dtype)]), wrapped, index])


TAIL_TO_IR = {
    "aten.square": _square, "aten.softplus": _softplus, "aten.hardtanh": _hardtanh,
    "aten.relu6": lambda cx, node, x: _hardtanh(cx, node, x, 0.0, 6.0), "aten.threshold": _threshold,
    "aten.mish": _mish, "aten.log1p": _log1p, "aten.index.Tensor": _index,
    "aten.gather": _gather, **dict.fromkeys(["aten.scatter.src", "aten.scatter.value"], _scatter),
    "aten.cumsum": _cumsum, "aten.argmax": _argmax, "aten.max.dim": _max_dim, "aten.sort": _sort,
    "aten.std": _std_var(True), "aten.var": _std_var(False),
    "aten.repeat_interleave.self_int": _repeat_interleave,
    # `empty` as torch's functionalization leaves it (`new_empty` is mapped with the zeros, torch_ops.py)
    "aten.empty.memory_format": _empty,
    "aten.eye": _eye, "aten.broadcast_tensors": _broadcast_tensors,  # XLNet's, Kimi's masks; Gemma 3n's inputs
    "aten.numpy_T": _numpy_t, "aten.copy.default": _copy, "aten.slice_scatter": _slice_scatter,
    "aten.fill.Tensor": _copy,  # fill(x, v: 0-d tensor) -> v broadcast to x's type (XLNet's `perm_mask[..., -1] = 1`)
    "aten.einsum": einsum,  # one or two operands; other forms are left to torch (torch_einsum.py)
    **LAYER_TO_IR,  # convolutions, padding, norms, rounding, repeat (torch_ops_layers.py)
}
einsum.handles = handles
