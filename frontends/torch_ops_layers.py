"""More of the aten -> IR long tail, found by enumerating transformers' causal LMs (scripts/arch_table.py).

Merged into `torch_ops.ATEN_TO_IR` through `torch_ops_tail.TAIL_TO_IR`; same handler contract (see torch_ops.py).
Grouped by what needs them: convolutions and padding (the causal depthwise conv of Mamba-style and linear-attention
layers), norms torch keeps whole (`_fused_rms_norm`, `linalg_vector_norm`), rounding (`floor`, `div` with a
rounding mode: position buckets, llama4's attention temperature), activations spelled as other aten ops
(xIELU's `expm1`, `log_sigmoid`), and `repeat`, `select_scatter`. Each maps onto existing IR ops where it can;
`conv1d`, `floor` and `trunc` are IR ops of their own (ir/ops_conv.py, ir/ops.py).
"""

from __future__ import annotations

import math

import torch

from ..ir import Node, TensorType, dims
from ..ir.types import is_float, positive_axis
from .torch_dims import arange_extreme
from .torch_masked_rows import masked_write_back


def _int_list(value, rank: int = 1) -> list:
    return list(value) * (rank if len(value) == 1 else 1) if isinstance(value, (list, tuple)) else [value] * rank


# --- convolution, padding --------------------------------------------------------------------------------
def _pad(cx, node, x, pad, mode="constant", value=None):  # F.pad(x, pad) of a constant
    if mode != "constant":  # torch_export.decompose_missing decomposes these before import (`handles`)
        raise cx.error(f"F.pad in mode {mode!r} is not mapped; import through torch_export, which decomposes it")
    return _constant_pad(cx, node, x, pad, 0 if value is None else value)


_pad.handles = lambda node: node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant") == "constant"


def _convolution(cx, node, x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    # convolution(x[N,C,L], w[O,C/g,K], b, ...) -> conv1d
    if transposed or x.type.rank != 3:
        raise cx.error(f"only 1-d, non-transposed convolutions are supported (got a {x.type.rank - 2}-d "
                       f"{'transposed ' if transposed else ''}convolution)")
    return _conv(cx, node, x, w, bias, stride, padding, dilation, groups)


def _conv1d(cx, node, x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):  # conv1d(...) -> conv1d
    if isinstance(padding, str):  # "valid" | "same" (odd effective kernel: torch pads both ends alike)
        span = _int_list(dilation)[0] * (w.shape[-1] - 1)
        if padding == "same" and span % 2:
            raise cx.error("conv1d padding='same' with an even kernel span pads unevenly; give the padding as a number")
        padding = 0 if padding == "valid" else span // 2
    if x.type.rank != 3:
        raise cx.error("conv1d without a batch dim is not supported; give x as [batch, channels, length]")
    return _conv(cx, node, x, w, bias, stride, padding, dilation, groups)


def _conv(cx, node, x, w, bias, stride, padding, dilation, groups):
    dtype = cx.out(node).dtype
    attrs = {"stride": _int_list(stride)[0], "padding": _int_list(padding)[0],
             "dilation": _int_list(dilation)[0], "groups": int(groups)}
    inputs = [cx.cast(x, dtype), cx.cast(w, dtype)] + ([cx.cast(bias, dtype)] if bias is not None else [])
    return cx.emit("conv1d", inputs, **attrs)


def _constant_pad(cx, node, x, pad, value=0):
    # constant_pad_nd(x, [lo_last, hi_last, lo_prev, ...], v) -> concat(full(v), x, full(v)) per padded axis
    dtype = cx.out(node).dtype
    x = cx.tensor(x, dtype)
    for i in range(len(pad) // 2):
        axis = x.type.rank - 1 - i
        lo, hi = (cx.dim(p) for p in pad[2 * i: 2 * i + 2])  # a symbolic amount (GIT pads its mask's groups by
        # kv - seq) is a full of that affine size, which torch's guards keep non-negative
        size = x.shape[axis]
        if any(isinstance(p, int) and p < 0 for p in (lo, hi)):  # negative padding crops
            if not (isinstance(lo, int) and isinstance(hi, int)):
                raise cx.symbolic_error("cropping by a symbolic amount cannot be expressed; import with "
                                        "dynamic_seq=False")
            end = None if hi >= 0 else (size + hi if isinstance(size, int) else None)
            if not isinstance(size, int) and hi < 0:
                raise cx.symbolic_error("cropping the symbolic dim cannot be expressed; import with dynamic_seq=False")
            x = cx.emit("slice", [x], axis=axis, start=max(-lo, 0), end=end)
            lo, hi = max(lo, 0), max(hi, 0)
        parts = [cx.full(_with(x.shape, axis, lo), dtype, value)] if lo else []
        parts += [x] + ([cx.full(_with(x.shape, axis, hi), dtype, value)] if hi else [])
        x = parts[0] if len(parts) == 1 else cx.emit("concat", parts, axis=axis)
    return x


def _with(shape, axis, size):
    return (*shape[:axis], size, *shape[axis + 1:])


# --- norms -----------------------------------------------------------------------------------------------
def _fused_rms_norm(cx, node, x, shape, weight=None, eps=None):
    # _fused_rms_norm(x, shape, w, eps) -> (x · rsqrt(mean(x², last dims) + eps) · w, rsqrt(...))
    val = node.meta["val"]
    dtype = cx.dtype(val[0] if isinstance(val, (tuple, list)) else val)
    eps = torch.finfo(node.args[0].meta["val"].dtype).eps if eps is None else eps
    axes = tuple(range(x.type.rank - len(shape), x.type.rank))
    mean = cx.emit("mean", [cx.emit("mul", [x, x])], axes=axes, keepdim=True)
    rstd = cx.emit("rsqrt", [cx.emit("add", [mean, cx.const(eps, x.dtype)])])
    out = cx.emit("mul", [x, rstd])
    out = out if weight is None else cx.emit("mul", [out, cx.cast(weight, out.dtype)])
    return cx.cast(out, dtype), rstd


def _rms_norm(cx, node, x, shape, weight=None, eps=None):  # rms_norm: _fused_rms_norm's first output
    return _fused_rms_norm(cx, node, x, shape, weight, eps)[0]


def _vector_norm(cx, node, x, ord=2, dim=None, keepdim=False, *, dtype=None):
    # linalg_vector_norm(x, 2 | 1 | inf, dims) -> sqrt(sum(x²)) | sum(|x|) | max(|x|)
    x = cx.tensor(x, cx.out(node).dtype)
    axes = tuple(positive_axis(d, x.type.rank) for d in ([dim] if isinstance(dim, int) else dim or
                                                          range(x.type.rank)))
    if ord == 2:
        return cx.emit("sqrt", [cx.emit("sum", [cx.emit("mul", [x, x])], axes=axes, keepdim=bool(keepdim))])
    if ord in (1, math.inf):
        op = "sum" if ord == 1 else "max"
        return cx.emit(op, [cx.emit("abs", [x])], axes=axes, keepdim=bool(keepdim))
    raise cx.error(f"vector norm of order {ord} is not supported (only 1, 2 and inf)")


# --- rounding, activations -------------------------------------------------------------------------------
def _rounding(op):
    def handle(cx, node, x):  # floor / trunc of a float (an integer is its own floor)
        return cx.emit(op, [x]) if is_float(x.dtype) else x
    return handle


def _div_mode(cx, node, a, b, rounding_mode=None):
    # div(a, b, rounding_mode="floor" | "trunc") -> floor | trunc(div(a, b)), in f64 for integers (exact)
    out = cx.out(node).dtype
    work = out if is_float(out) else "f64"
    q = cx.emit("div", [cx.tensor(a, work), cx.tensor(b, work)])
    q = q if rounding_mode is None else cx.emit("floor" if rounding_mode == "floor" else "trunc", [q])
    return cx.cast(q, out)


def _floor_divide(cx, node, a, b):  # floor_divide(a, b) -> div(a, b, rounding_mode="floor")
    return _div_mode(cx, node, a, b, "floor")


def _expm1(cx, node, x):  # expm1(x) -> exp(x) - 1   (xIELU's negative branch; fp32 error ~1e-7 absolute)
    x = cx.tensor(x, cx.out(node).dtype)
    return cx.emit("sub", [cx.emit("exp", [x]), cx.const(1.0, x.dtype)])


def _log_sigmoid(cx, node, x):  # log_sigmoid_forward(x) -> (min(x, 0) - log(1 + exp(-|x|)), buffer)
    zero, one = cx.const(0.0, x.dtype), cx.const(1.0, x.dtype)
    soft = cx.emit("log", [cx.emit("add", [one, cx.emit("exp", [cx.emit("neg", [cx.emit("abs", [x])])])])])
    out = cx.emit("sub", [cx.emit("minimum", [x, zero]), soft])
    return out if node.target is torch.ops.aten.log_sigmoid.default else (out, None)


# --- shapes ----------------------------------------------------------------------------------------------
def _repeat(cx, node, x, repeats):
    # repeat(x, [r0, r1, ..]) -> reshape(expand(reshape(x, [1, s0, 1, s1, ..]), [r0, s0, r1, s1, ..]), [r0·s0, ..])
    repeats = [cx.dim(r) for r in repeats]
    shape = (1,) * (len(repeats) - x.type.rank) + tuple(x.shape)
    if all(r == 1 for r in repeats):
        return x if shape == x.shape else cx.emit("reshape", [x], shape=shape)
    if any(isinstance(r, str) for r in repeats):
        raise cx.symbolic_error("repeat by a symbolic count cannot be expressed; import with dynamic_seq=False")
    split = tuple(v for s in shape for v in (1, s))
    wide = tuple(v for r, s in zip(repeats, shape) for v in (r, s))
    return cx.tiled(x, split, wide, cx.out(node).shape)


def _unfold(cx, node, x, dimension, size, step):
    # unfold(x, d, size, step) -> permute(reshape(index_select(x, [windows' positions], d), [.., n, size, ..]),
    #                                     size last): the sliding windows of a short convolution
    #   symbolic length, step 1: concat(reshape(slice(x, d, k, L - size + 1 + k), [.., 1]) for k < size, last axis)
    axis, length = positive_axis(dimension, x.type.rank), x.shape[positive_axis(dimension, x.type.rank)]
    if isinstance(length, str):
        if step != 1:
            raise cx.symbolic_error(f"sliding windows with step {step} over the symbolic dim `{length}` cannot be "
                                    "expressed; import with dynamic_seq=False")
        taps = [cx.emit("slice", [x], axis=axis, start=k, end=dims.add(length, k - size + 1)) for k in range(size)]
        taps = [cx.emit("reshape", [t], shape=(*t.shape, 1)) for t in taps]
        return taps[0] if size == 1 else cx.emit("concat", taps, axis=-1)
    starts = range(0, length - size + 1, step)
    positions = tuple(s + k for s in starts for k in range(size))
    index = cx.source_node("constant", TensorType((len(positions),), "i64"), value=positions)
    x = cx.emit("reshape", [cx.emit("index_select", [x, index], axis=axis)],
                shape=(*x.shape[:axis], len(starts), size, *x.shape[axis + 1:]))
    rank = x.type.rank
    axes = (*range(axis + 1), *range(axis + 2, rank), axis + 1)
    return x if axes == tuple(range(rank)) else cx.emit("permute", [x], axes=axes)


def _flip(cx, node, x, dims):  # flip(x, dims) -> index_select(x, [n-1, ..., 0]) per dim
    for dim in dims:
        axis = positive_axis(dim, x.type.rank)
        length = x.shape[axis]
        if isinstance(length, str):
            raise cx.symbolic_error(f"reversing the symbolic dim `{length}` cannot be expressed; "
                                    "import with dynamic_seq=False")
        index = cx.source_node("constant", TensorType((length,), "i64"), value=tuple(range(length - 1, -1, -1)))
        x = cx.emit("index_select", [x, index], axis=axis)
    return x


def _select_scatter(cx, node, x, src, dim, index):  # select_scatter(x, s, d, i) -> slice_scatter(x, s[d:=1], d, i, i+1)
    axis = positive_axis(dim, x.type.rank)
    index = cx.dim(index)
    index = dims.add(x.shape[axis], index) if isinstance(index, int) and index < 0 else index  # from the end
    src = cx.emit("reshape", [src], shape=_with(x.shape, axis, 1))
    return slice_scatter(cx, node, x, src, axis, index, dims.add(index, 1), 1)


def slice_scatter(cx, node, x, src, axis, start, end, step):
    # slice_scatter(x, src, d, a, b) -> concat(x[:a], src, x[b:]) along d; with a step s > 1:
    #   scatter(x, expand(arange(a, b, s) along d, src's shape), src, d)
    size = x.shape[axis]
    start, end = (b if b is None or isinstance(b, str) else cx.dim(b) for b in (start or 0, end))  # or IR dims
    end = size if end is None or (isinstance(end, int) and end >= 2**62) else end
    if not all(isinstance(v, int) for v in (start, end, size)):
        # a symbolic dim (XLNet's `perm_mask[:, :, -1] = 1` on a [1, seq+1, seq+1] mask): the same concat, bounds
        # as dims (a negative int counts from the end); torch's guards keep them in 0 .. size
        if step != 1:
            raise cx.symbolic_error("slice_scatter with a step on a symbolic dim cannot be expressed; import with "
                                    "dynamic_seq=False")
        start, end = (dims.add(size, b) if isinstance(b, int) and b < 0 else b for b in (start, end))
        return _concat_around(cx, x, src, axis, start, end, size)
    start, end, step = slice(start, end, step).indices(size)
    if step != 1:
        positions = tuple(range(start, end, step))
        index = cx.source_node("constant", TensorType((len(positions),), "i64"), value=positions)
        index = cx.emit("reshape", [index], shape=tuple(len(positions) if d == axis else 1 for d in range(x.type.rank)))
        index = cx.emit("expand", [index], shape=src.shape)
        return cx.emit("scatter", [x, index, cx.cast(src, x.dtype)], axis=axis)
    return _concat_around(cx, x, src, axis, start, end, size)


def _concat_around(cx, x, src, axis, start, end, size):  # concat(x[:start], src, x[end:]), empty parts left out
    parts = ([cx.emit("slice", [x], axis=axis, start=0, end=start)] if start != 0 else []) + [cx.cast(src, x.dtype)] + \
        ([cx.emit("slice", [x], axis=axis, start=end, end=size)] if dims.sub(size, end) != 0 else [])
    return parts[0] if len(parts) == 1 else cx.emit("concat", parts, axis=axis)


def _index_put(cx, node, x, indices, values, accumulate=False):
    # index_put(x, [mask], v) -> where(mask, v, x)   (x[mask] = v: e.g. out-of-vocabulary image tokens set to 0)
    used = [i for i in indices if i is not None]
    if accumulate or len(used) != 1 or len(indices) != 1 or used[0].dtype != "bool":
        raise cx.error("index_put is only supported as x[bool_mask] = value (no integer indices, no accumulate)")
    mask = used[0]
    back = masked_write_back(cx, node, x, mask, values) if hasattr(cx, "masked_rows") else None
    if back is not None:  # y[mask] = f(x[mask]), f row-wise: where(mask, f(x), y) (torch_masked_rows.py)
        return back
    if mask.type.rank < x.type.rank:  # a mask over the leading dims selects whole trailing slices
        mask = cx.emit("reshape", [mask], shape=(*mask.shape, *(1,) * (x.type.rank - mask.type.rank)))
    if isinstance(values, Node) and values.type.rank and values.shape != x.shape:
        raise cx.error("x[mask] = values needs a scalar (or x-shaped) value; masked selections have data-dependent "
                       "sizes")
    return cx.emit("where", [mask, cx.tensor(values, x.dtype), x])


# --- complex numbers as real pairs (rotary embeddings written with torch.polar / view_as_complex) ---------------
# A complex tensor is held as a real one with a last axis of 2 (re, im): torch.view_as_real's layout, so
# view_as_complex / view_as_real are identities and shape ops follow torch's recorded shapes (Importer.tensor_type).
def _polar(cx, node, magnitude, angle):  # polar(r, θ) -> concat(r·cos θ, r·sin θ) on a new last axis
    parts = [cx.emit("mul", [magnitude, cx.emit(f, [angle])]) for f in ("cos", "sin")]
    parts = [cx.emit("reshape", [p], shape=(*p.shape, 1)) for p in parts]
    return cx.emit("concat", parts, axis=len(parts[0].shape) - 1)


def _as_pairs(cx, node, x):  # view_as_complex / view_as_real -> x (the same real pairs)
    return x


def complex_arith(cx, node, op, a, b, alpha=1):
    # (a0, a1) * (b0, b1) -> (a0·b0 - a1·b1, a0·b1 + a1·b0); ± pairwise; a real operand scales both parts
    if op not in ("add", "sub", "mul") or alpha != 1:
        raise cx.error(f"complex {op} is not supported (only +, -, · of complex tensors)")
    dtype = cx.out(node).dtype
    vals = [v.meta["val"] if isinstance(v, torch.fx.Node) else v for v in node.args[:2]]
    if op == "sub" and node.target.overloadpacket is torch.ops.aten.rsub:
        vals = vals[::-1]
    complex_in = [isinstance(v, torch.Tensor) and v.is_complex() for v in vals]
    a, b = (cx.tensor(t, dtype) if c or not isinstance(t, Node) else
            cx.emit("reshape", [cx.cast(t, dtype)], shape=(*t.shape, 1)) for t, c in zip((a, b), complex_in))
    if op != "mul" or not all(complex_in):
        if op != "mul" and not all(complex_in):
            raise cx.error("adding a real tensor to a complex one is not supported")
        return cx.emit(op, [a, b])
    pa, pb = ([cx.emit("slice", [t], axis=t.type.rank - 1, start=i, end=i + 1) for i in (0, 1)] for t in (a, b))
    real = cx.emit("sub", [cx.emit("mul", [pa[0], pb[0]]), cx.emit("mul", [pa[1], pb[1]])])
    imag = cx.emit("add", [cx.emit("mul", [pa[0], pb[1]]), cx.emit("mul", [pa[1], pb[0]])])
    return cx.emit("concat", [real, imag], axis=real.type.rank - 1)


def _scalar(cx, node, x):  # _local_scalar_dense (x.item()): kept as torch's symbol; assertions on it are dropped
    value = node.meta["val"]
    known = arange_extreme(node.args[0], cx.dim) if isinstance(value, torch.SymInt) else None
    if known is not None and value.node.expr.is_Symbol:  # the largest position of an arange: a size after all
        cx.symbols[value.node.expr] = known
    return value


LAYER_TO_IR = {
    "aten.convolution.default": _convolution, "aten.conv1d.default": _conv1d, "aten.conv1d.padding": _conv1d,
    "aten.constant_pad_nd": _constant_pad, "aten.pad": _pad,  # other modes than constant: torch's decompositions
    "aten._fused_rms_norm": _fused_rms_norm, "aten.rms_norm": _rms_norm, "aten.linalg_vector_norm": _vector_norm,
    "aten.floor": _rounding("floor"), "aten.trunc": _rounding("trunc"), "aten.fix": _rounding("trunc"),
    "aten.div.Tensor_mode": _div_mode, "aten.div.Scalar_mode": _div_mode,
    "aten.floor_divide": _floor_divide,
    "aten.expm1": _expm1, **dict.fromkeys(["aten.log_sigmoid_forward", "aten.log_sigmoid.default"], _log_sigmoid),
    "aten.repeat": _repeat, "aten.select_scatter": _select_scatter, "aten.unfold": _unfold, "aten.flip": _flip,
    "aten.index_put": _index_put, **dict.fromkeys(["aten._local_scalar_dense", "aten.item"], _scalar),
    "aten.polar": _polar, "aten.view_as_complex": _as_pairs, "aten.view_as_real": _as_pairs,
}
