"""The long tail of the ONNX -> IR table, found by exporting transformers' causal LMs (scripts/onnx_table.py).

Merged into `onnx_ops.HANDLERS`; same handler contract (see onnx_ops.py). Floor (position buckets), ReduceLogSumExp
(Granite's router logits), Conv on [N, C, L] (the depthwise causal convolution of Mamba-style layers) and ScatterND
(a slice assignment, `q[..., nope:] = q_pe`, as the TorchScript exporter writes it).
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


TAIL_HANDLERS = {
    "Floor": lambda cx, node, args, attrs: cx.op("floor", [args[0]]),
    "ReduceLogSumExp": _reduce_log_sum_exp, "Conv": _conv, "ScatterND": _scatter_nd,
}
