"""The long tail of the ONNX -> IR table, found by exporting transformers' causal LMs (scripts/onnx_table.py).

Merged into `onnx_ops.HANDLERS`; same handler contract (see onnx_ops.py). Floor (position buckets), ReduceLogSumExp
(Granite's router logits), Conv on [N, C, L] (the depthwise causal convolution of Mamba-style layers) and ScatterND
(a slice assignment, `q[..., nope:] = q_pe`, as the TorchScript exporter writes it), Einsum of one or two
operands (ProphetNet's and the SSD scan's contractions), as permutes and a matmul, constant Pad, Mod and OneHot
(Mamba-2's chunked scan).
"""

from __future__ import annotations

import math

import numpy as np

from ..ir.types import positive_axis
from .onnx_values import Const, make_const


def _reduce_log_sum_exp(cx, node, args, attrs):  # log Σ exp(x) = m + log Σ exp(x - m), m the max (no overflow)
    x = args[0]
    axes = cx.ints(args[1], "the reduction axes") if len(args) > 1 and args[1] is not None else \
        list(attrs.get("axes", []))
    if not axes and attrs.get("noop_with_empty_axes", 0):
        return x
    axes = tuple(sorted(positive_axis(int(a), len(x.shape)) for a in axes or range(len(x.shape))))
    peak = cx.op("max", [x], axes=axes, keepdim=True)
    total = cx.op("sum", [cx.op("exp", [cx.op("sub", [x, peak])])], axes=axes, keepdim=True)
    out = cx.op("add", [cx.op("log", [total]), peak])
    if attrs.get("keepdims", 1):
        return out
    return cx.op("reshape", [out], shape=tuple(d for i, d in enumerate(out.shape) if i not in axes))


def _conv(cx, node, args, attrs):  # Conv(x[N, C, L], w[O, C/g, K], b) -> conv1d (1-d, symmetric padding)
    x, w, b = (list(args) + [None])[:3]
    if len(x.shape) != 3:
        raise cx.error(f"Conv of rank {len(x.shape)}: only 1-d convolutions ([N, C, L]) are supported")
    pads = list(attrs.get("pads", [0, 0]))
    if attrs.get("auto_pad", "NOTSET") != "NOTSET" or pads[0] != pads[1]:
        raise cx.error(f"Conv with padding {attrs.get('auto_pad', pads)}: only explicit, equal padding on both ends "
                       "is supported")
    inputs = [x, cx.node_as_weight(w) if isinstance(w, Const) else w]
    if b is not None:
        inputs.append(cx.node_as_weight(b, "bias") if isinstance(b, Const) else b)
    return cx.op("conv1d", inputs, stride=attrs.get("strides", [1])[0], padding=pads[0],
                 dilation=attrs.get("dilations", [1])[0], groups=attrs.get("group", 1))


def _scatter_nd(cx, node, args, attrs):
    # ScatterND(data, indices[..., k], updates) -> reshape(scatter(data with its first k dims flattened, axis 0,
    # at Σ_j idx_j · stride_j broadcast over the rest, updates flattened alike), data's shape)
    data, indices, updates = args
    if attrs.get("reduction", "none") != "none":
        raise cx.error(f"ScatterND with reduction={attrs['reduction']!r}: only plain assignment is supported")
    k = indices.shape[-1]
    lead, rest = tuple(data.shape[:k]), tuple(data.shape[k:])
    rows = tuple(indices.shape[:-1])
    if not all(isinstance(d, int) for d in (*lead, *rows, k)):
        raise cx.error("ScatterND: the indexed dims and the number of updates must be static; export the model "
                       "with static shapes")
    strides = [math.prod(lead[j + 1:]) for j in range(k)]
    if isinstance(indices, Const):  # the usual case: a slice assignment's indices, folded from shapes
        idx = indices.array.astype(np.int64)
        flat = make_const(((idx + (idx < 0) * np.array(lead)) * np.array(strides)).sum(-1), "i64")
    else:
        idx = cx.cast(indices, "i64")
        wrapped = cx.op("where", [cx.op("lt", [idx, make_const(0, "i64")]),
                                  cx.op("add", [idx, make_const(np.array(lead), "i64")]), idx])
        flat = cx.op("sum", [cx.op("mul", [wrapped, make_const(np.array(strides), "i64")])], axes=(len(rows),),
                     keepdim=False)
    count = math.prod(rows)
    index = cx.op("reshape", [flat], shape=(count,) + (1,) * len(rest))
    index = cx.op("expand", [index], shape=(count, *rest))
    table = cx.op("reshape", [data], shape=(math.prod(lead), *rest))
    src = cx.op("reshape", [cx.cast(updates, data.dtype)], shape=(count, *rest))
    return cx.op("reshape", [cx.op("scatter", [table, index, src], axis=0)], shape=tuple(data.shape))


def _pad(cx, node, args, attrs):  # Pad(x, pads, value, axes), constant mode -> concat(full(v), x, full(v)) per axis
    x = args[0]
    if attrs.get("mode", "constant") != "constant":
        raise cx.error(f"Pad mode {attrs['mode']!r}: only constant padding is supported")
    pads = cx.ints(args[1], "the pads") if len(args) > 1 else list(attrs["pads"])
    value = cx.static(args[2], "the pad value").array.item() if len(args) > 2 and args[2] is not None else 0
    rank = len(x.shape)
    axes = [positive_axis(a, rank) for a in cx.ints(args[3], "the pad axes")] if len(args) > 3 and \
        args[3] is not None else list(range(rank))
    for axis, lo, hi in zip(axes, pads[:len(axes)], pads[len(axes):], strict=True):
        if not (isinstance(lo, int) and isinstance(hi, int)):
            raise cx.error(f"Pad by ({lo}, {hi}): only static padding is supported")
        if lo < 0 or hi < 0:  # negative padding crops (RWKV's time shift: pad 1 before, crop 1 after)
            size = x.shape[axis]
            if hi < 0 and not isinstance(size, int):
                raise cx.error("Pad crops the symbolic dim; export the model with static shapes")
            x = cx.op("slice", [x], axis=axis, start=max(-lo, 0), end=None if hi >= 0 else size + hi)
            lo, hi = max(lo, 0), max(hi, 0)
        shape = list(x.shape)
        parts = [cx.full(value, tuple(shape[:axis] + [n] + shape[axis + 1:]), x.dtype) for n in (lo, hi)]
        pieces = [p for p, n in zip([parts[0], x, parts[1]], [lo, 1, hi]) if n]
        x = pieces[0] if len(pieces) == 1 else cx.op("concat", pieces, axis=axis)
    return x


def _mod(cx, node, args, attrs):  # Mod{fmod}: a - b·floor(a / b) (the divisor's sign; fmod=1: C's, trunc)
    a, b = args
    fmod = attrs.get("fmod", 0)
    if isinstance(a, Const) and isinstance(b, Const) and not (a.symbolic or b.symbolic):
        return Const((np.fmod if fmod else np.mod)(a.array, b.array).astype(a.array.dtype), a.dtype)
    if isinstance(a, Const) and a.symbolic or isinstance(b, Const) and b.symbolic:
        raise cx.error("Mod of a symbolic size is no IR size; export the model with static shapes")
    dtype = a.dtype
    fa, fb = cx.cast(a, "f64"), cx.cast(b, "f64")  # exact for the integers of positions and sizes
    quotient = cx.op("trunc" if fmod else "floor", [cx.op("div", [fa, fb])])
    return cx.cast(cx.op("sub", [fa, cx.op("mul", [fb, quotient])]), dtype)


def _one_hot(cx, node, args, attrs):  # OneHot(indices, depth, [off, on]) -> where(indices[.., None] == arange, on, off)
    indices, depth, values = args
    depth = int(cx.static(depth, "the OneHot depth").array.reshape(-1)[0])
    off, on = cx.static(values, "the OneHot values").array.reshape(-1)
    index = cx.cast(indices, "i64")
    index = cx.op("where", [cx.op("lt", [index, make_const(0, "i64")]),
                            cx.op("add", [index, make_const(depth, "i64")]), index])  # negative: from the end
    axis = positive_axis(attrs.get("axis", -1), len(index.shape) + 1)
    index = cx.op("reshape", [index], shape=(*index.shape[:axis], 1, *index.shape[axis:]))
    shape = [1] * len(index.shape)
    shape[axis] = depth
    hits = cx.op("eq", [index, Const(np.arange(depth, dtype=np.int64).reshape(shape), "i64")])
    return cx.op("where", [hits, Const(np.asarray(on), values.dtype), Const(np.asarray(off), values.dtype)])


def _einsum(cx, node, args, attrs):
    # Einsum("bhqd,bhkd->bhqk") -> permute each operand to (shared, own, summed), merge own and summed dims,
    # matmul (shared dims as its batch), split and permute to the output's order; letters in one operand only and
    # not in the output are summed first
    spec = attrs["equation"].replace(" ", "")
    inputs, _, out = spec.partition("->")
    terms = inputs.split(",")
    if "." in spec or "->" not in spec or len(terms) > 2 or any(len(set(t)) != len(t) for t in terms):
        raise cx.error(f"Einsum {spec!r}: only explicit outputs of one or two operands without ellipsis or repeated "
                       "letters are supported")
    operands = []
    for k, (term, x) in enumerate(zip(terms, args, strict=True)):
        others = set(out).union(*(set(t) for j, t in enumerate(terms) if j != k))
        dropped = tuple(i for i, c in enumerate(term) if c not in others)
        if dropped:
            x, term = cx.op("sum", [x], axes=dropped, keepdim=False), "".join(c for c in term if c in others)
        operands.append((term, x))
    if len(operands) == 1:
        term, x = operands[0]
        return cx.op("permute", [x], axes=tuple(term.index(c) for c in out)) if term != out else x
    (ta, a), (tb, b) = operands
    size = {c: d for t, x in operands for c, d in zip(t, x.shape, strict=True)}
    shared = [c for c in ta if c in tb and c in out]
    summed = [c for c in ta if c in tb and c not in out]
    own_a, own_b = [c for c in ta if c not in tb], [c for c in tb if c not in ta]
    a = _grouped(cx, a, ta, shared, own_a, summed, size)
    b = _grouped(cx, b, tb, shared, summed, own_b, size)
    y = cx.op("matmul", [a, b])
    order = shared + own_a + own_b
    shape = tuple(size[c] for c in order)
    y = cx.op("reshape", [y], shape=shape) if tuple(y.shape) != shape else y
    return cx.op("permute", [y], axes=tuple(order.index(c) for c in out)) if order != list(out) else y


def _grouped(cx, x, term, lead, rows, cols, size):  # x permuted to (lead, rows, cols), rows and cols merged
    order = lead + rows + cols
    if order != list(term):
        x = cx.op("permute", [x], axes=tuple(term.index(c) for c in order))
    merged = [_merged(cx, [size[c] for c in rows]), _merged(cx, [size[c] for c in cols])]
    shape = (*(size[c] for c in lead), *merged)
    return cx.op("reshape", [x], shape=shape) if shape != tuple(x.shape) else x


def _merged(cx, dims):
    if len(dims) <= 1:
        return dims[0] if dims else 1
    if not all(isinstance(d, int) for d in dims):
        raise cx.error(f"Einsum merges the dims {dims}, one of them symbolic; export the model with static shapes")
    return math.prod(dims)


def _top_k(cx, node, args, attrs):  # TopK{axis, largest}(x, K) -> (values, indices): a MoE router's expert choice
    x, k = args[0], int(cx.ints(args[1], "the TopK count")[0])
    axis, largest = positive_axis(attrs.get("axis", -1), len(x.shape)), bool(attrs.get("largest", 1))
    if not attrs.get("sorted", 1):
        raise cx.error("TopK with sorted=0 (an unspecified order) is not supported")
    return [cx.op("topk", [x], k=k, axis=axis, largest=largest, output=out) for out in ("values", "indices")]


def _scatter_elements(cx, node, args, attrs):  # ScatterElements{axis}(x, index, updates) -> scatter (torch's)
    if attrs.get("reduction", "none") != "none":
        raise cx.error(f"ScatterElements with reduction={attrs['reduction']!r} is not supported (only a plain write)")
    x, index, updates = args
    return cx.op("scatter", [x, index, updates], axis=positive_axis(attrs.get("axis", 0), len(x.shape)))


TAIL_HANDLERS = {
    "Floor": lambda cx, node, args, attrs: cx.op("floor", [args[0]]),
    "ReduceLogSumExp": _reduce_log_sum_exp, "Conv": _conv, "ScatterND": _scatter_nd, "Einsum": _einsum,
    "Pad": _pad, "Mod": _mod, "OneHot": _one_hot, "TopK": _top_k, "ScatterElements": _scatter_elements,
}
