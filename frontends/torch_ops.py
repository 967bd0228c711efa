"""The aten -> IR table: `ATEN_TO_IR[name] = handler`, looked up by overload (`aten.split.Tensor`) then packet
(`aten.split`). A handler gets the importer `cx`, the FX node and the node's arguments with FX nodes replaced
by IR nodes (sizes stay torch `SymInt`s: read them with `cx.dim`); it returns an IR node, a tuple, or None.
`cx.out(node)` is the type torch recorded, and results are checked against it afterwards. The handlers live by
op family: elementwise, linear algebra, reductions and sources here; views, slices and indexing in
torch_ops_shape.py; the long tail in torch_ops_tail.py and torch_ops_layers.py.
"""

from __future__ import annotations

import math

import torch

from ..ir import Node
from ..ir.types import positive_axis
from .torch_inplace import functional_name, in_place
from .torch_ops_layers import complex_arith
from .torch_ops_shape import SHAPE_TO_IR
from .torch_ops_tail import TAIL_TO_IR


# --- no-ops, casts ---------------------------------------------------------------------------------------
def _nothing(cx, node, *args, **kwargs):  # _assert_* / sym_constrain_* -> (dropped)
    return None


def _same(cx, node, x, *args, **kwargs):  # clone / alias / contiguous / detach -> x
    return x


def _cast(cx, node, x, *args, **kwargs):  # to / _to_copy / type_as -> cast (or x if the dtype is unchanged)
    return cx.cast(x, cx.out(node).dtype)


def _dropout(cx, node, x, p=0.5, train=False):
    if train and p:
        raise cx.error("dropout is active (the model is in training mode); call model.eval() before importing")
    return x


# --- elementwise -----------------------------------------------------------------------------------------
def _unary(op):
    def handle(cx, node, x, **attrs):  # int inputs of float ops (sin, rsqrt, ...) are cast first, as torch does
        dtype = cx.out(node).dtype  # logical_not: bool, so a number is first cast to bool (x != 0), as torch reads it
        return cx.emit(op, [cx.tensor(x, dtype)], **attrs)
    return handle


def _bitwise_not(cx, node, x):  # ~mask -> logical_not(mask)
    if x.dtype != "bool":
        raise cx.error("bitwise not on integers is not supported (only on bool masks)")
    return cx.emit("logical_not", [x])


def _is(value, scalar) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == scalar


def _arith(op, identity=None, reverse=False):
    def handle(cx, node, a, b, alpha=1, **_):  # a op b, both cast to torch's result dtype; x+0, x*1 -> x
        if reverse:
            a, b = b, a
        val = getattr(node, "meta", {}).get("val")   # an FX node; the MLIR frontend's ops carry no meta
        if val is not None and getattr(val, "is_complex", lambda: False)():
            return complex_arith(cx, node, op, a, b, alpha)
        dtype = cx.out(node).dtype
        if alpha != 1:
            b = cx.emit("mul", [cx.tensor(b, dtype), cx.const(alpha, dtype)])
        if _is(b, identity) and isinstance(a, Node) and a.type == cx.out(node):
            return a
        name = BOOL_ARITH.get(op, op) if dtype == "bool" else op
        return cx.emit(name, [cx.tensor(a, dtype), cx.tensor(b, dtype)])
    return handle


# arithmetic on bools is logic (torch: True * x is `and`, a + b is `or`); the TVM kernels multiply numbers only
BOOL_ARITH = {"mul": "logical_and", "add": "logical_or"}


def _common_dtype(cx, node) -> str:
    """torch's promotion of a comparison's two operands (0-d tensors and scalars weigh less)."""
    vals = [a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in node.args[:2]]
    probes = [torch.empty([1] * v.ndim, dtype=v.dtype) if isinstance(v, torch.Tensor) else
              v if isinstance(v, (bool, int, float)) else 0 for v in vals]  # a symbolic size: an int
    return cx.dtype(torch.empty((), dtype=torch.result_type(*probes)))


def _compare(op):
    def handle(cx, node, a, b):
        dtype = _common_dtype(cx, node)
        return cx.emit(op, [cx.tensor(a, dtype), cx.tensor(b, dtype)])
    return handle


def _logical(op):
    def handle(cx, node, a, b):  # __and__ / bitwise_and on bool -> logical_and; on integers -> bitwise_and
        dtype = cx.out(node).dtype  # (logical_and always gives bool; torch has no bitwise ops on floats)
        if dtype != "bool":
            return cx.emit("bitwise" + op[7:], [cx.tensor(a, dtype), cx.tensor(b, dtype)])
        return cx.emit(op, [cx.tensor(a, "bool"), cx.tensor(b, "bool")])
    return handle


def _where(cx, node, cond, a, b):
    dtype = cx.out(node).dtype
    return cx.emit("where", [cx.tensor(cond, "bool"), cx.tensor(a, dtype), cx.tensor(b, dtype)])


def _masked_fill(cx, node, x, mask, value):  # masked_fill(x, m, v) -> where(m, v, x)
    return _where(cx, node, mask, value, x)


def _clamp(cx, node, x, min=None, max=None):  # clamp(x, lo, hi) -> minimum(maximum(x, lo), hi)
    dtype = cx.out(node).dtype
    x = cx.tensor(x, dtype)
    x = x if min is None else cx.emit("maximum", [x, cx.tensor(min, dtype)])
    return x if max is None else cx.emit("minimum", [x, cx.tensor(max, dtype)])


# --- linear algebra --------------------------------------------------------------------------------------
def _linear(cx, node, x, w, b=None):
    return cx.emit("linear", [x, w] + ([b] if b is not None else []))


def _matmul(cx, node, a, b):  # 1-d operands are lifted to matrices and the result reshaped as torch does
    a2 = a if a.type.rank > 1 else cx.emit("reshape", [a], shape=(1, a.shape[0]))
    b2 = b if b.type.rank > 1 else cx.emit("reshape", [b], shape=(b.shape[0], 1))
    out = cx.emit("matmul", [a2, b2])
    return out if a2 is a and b2 is b else cx.emit("reshape", [out], shape=cx.out(node).shape)


def _scaled(cx, x, factor):
    return x if factor == 1 else cx.emit("mul", [x, cx.const(factor, x.dtype)])


def _addmm(cx, node, bias, a, b, beta=1, alpha=1):  # addmm(c, a, b) -> add(matmul(a, b), c)
    prod = _scaled(cx, cx.emit("matmul", [a, b]), alpha)
    return prod if beta == 0 else cx.emit("add", [prod, _scaled(cx, bias, beta)])


def _sdpa(cx, node, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    # sdpa(q, k, v, mask) -> matmul(softmax(matmul(q, kᵀ) * scale [+ mask | where(mask, ., min)]), v)
    if dropout_p:
        raise cx.error("attention dropout is active; call model.eval() before importing")
    if enable_gqa and k.shape[-3] != q.shape[-3]:  # repeat each kv head for its group of query heads
        k, v = (_repeat_heads(cx, t, q.shape[-3] // t.shape[-3]) for t in (k, v))
    rank = k.type.rank
    kt = cx.emit("permute", [k], axes=(*range(rank - 2), rank - 1, rank - 2))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = cx.emit("mul", [cx.emit("matmul", [q, kt]), cx.const(scale, q.dtype)])
    if is_causal:
        attn_mask = cx.emit("tril", [cx.full(scores.shape[-2:], "bool", True)])
    if attn_mask is not None and attn_mask.dtype == "bool":
        scores = cx.emit("where", [attn_mask, scores, cx.const(-math.inf, scores.dtype)])
    elif attn_mask is not None:
        scores = cx.emit("add", [scores, cx.cast(attn_mask, scores.dtype)])
    return cx.emit("matmul", [cx.emit("softmax", [scores], axis=-1), v])


def _repeat_heads(cx, x, times):  # [b, h, s, d] -> [b, h*times, s, d], each head repeated in place
    b, h, s, d = x.shape
    x = cx.emit("reshape", [x], shape=(b, h, 1, s, d))
    x = cx.emit("expand", [x], shape=(b, h, times, s, d))
    return cx.emit("reshape", [x], shape=(b, h * times, s, d))


def _embedding(cx, node, w, ids, *args, **kwargs):
    return cx.emit("embedding", [w, ids])


# --- reductions, normalisation ---------------------------------------------------------------------------
def _reduce(op):
    def handle(cx, node, x, dim=None, keepdim=False, **_):  # sum/mean/amax over `dim` (None or [] = all)
        dims = [dim] if isinstance(dim, int) else list(dim or range(x.type.rank))
        x = x if op == "max" else cx.tensor(x, cx.out(node).dtype)
        return cx.emit(op, [x], axes=tuple(positive_axis(d, x.type.rank) for d in dims), keepdim=bool(keepdim))
    return handle


def _topk(cx, node, x, k, dim=-1, largest=True, sorted=True):  # topk -> (topk{values}, topk{indices})
    axis, k = positive_axis(dim, x.type.rank), cx.dim(k)
    if isinstance(k, str) and k == x.shape[axis]:  # all of a symbolic axis (DSA's min(index_topk, kv)): a sort
        return tuple(cx.emit("sort", [x], axis=axis, descending=bool(largest), output=out)
                     for out in ("values", "indices"))
    if isinstance(k, str) and isinstance(x.shape[axis], str):  # min(seq, 2048) of seq (a top-k indexer): the
        # first k of the sorted axis, whatever k is
        return tuple(cx.emit("slice", [cx.emit("sort", [x], axis=axis, descending=bool(largest), output=out)],
                             axis=axis, start=0, end=k, step=1) for out in ("values", "indices"))
    if isinstance(k, str):
        raise cx.symbolic_error(f"topk of a symbolic `{k}` entries of an axis of {x.shape[axis]} cannot be expressed")
    return tuple(cx.emit("topk", [x], k=k, axis=axis, largest=bool(largest), output=out)
                 for out in ("values", "indices"))


def _softmax(cx, node, x, dim, *args, **kwargs):
    return cx.emit("softmax", [cx.tensor(x, cx.out(node).dtype)], axis=dim)


def _layer_norm(cx, node, x, shape, weight=None, bias=None, eps=1e-5, *args):
    if len(shape) != 1:
        raise cx.error(f"layer_norm over {len(shape)} dims is not supported (only the last dim)")
    d = x.shape[-1]
    weight = weight if weight is not None else cx.full((d,), x.dtype, 1.0)
    bias = bias if bias is not None else cx.full((d,), x.dtype, 0.0)
    out = cx.emit("layer_norm", [x, weight, bias], eps=float(eps))
    return out if node.target is torch.ops.aten.layer_norm.default else (out, None, None)


# --- sources ---------------------------------------------------------------------------------------------
def _arange(cx, node, *args, **kwargs):  # arange(end) | arange(start, end[, step])
    start, end, step = (0, args[0], 1) if len(args) == 1 else (*args, 1)[:3]
    start, end, step = (cx.dim(v) if isinstance(v, torch.SymInt) else v for v in (start, end, step))
    attrs = {**({"start": start} if start != 0 else {}), **({"step": step} if step != 1 else {})}
    return cx.source_node("arange", cx.out(node), end=end, **attrs)


def _filled(position, value=None):
    def handle(cx, node, *args, **kwargs):  # full / ones / zeros / *_like / new_* -> full (or a 0-d constant)
        ttype = cx.out(node)
        return cx.full(ttype.shape, ttype.dtype, value if value is not None else args[position])
    return handle


def _higher_order(cx, node, *args):  # wrap_with_set_grad_enabled / wrap_with_autocast(..., body, *xs) -> body
    at = next(i for i, a in enumerate(args) if isinstance(a, torch.fx.GraphModule))
    return cx.inline(args[at], args[at + 1:])


ATEN_TO_IR = {
    **dict.fromkeys(["aten._assert_tensor_metadata", "aten._assert_scalar", "aten._assert_async",
                     "aten.sym_constrain_range", "aten.sym_constrain_range_for_size"], _nothing),
    **dict.fromkeys(["aten.alias", "aten.clone", "aten.contiguous", "aten.detach", "aten.lift_fresh_copy"], _same),
    **dict.fromkeys(["aten.to", "aten._to_copy", "aten.type_as"], _cast),
    "aten.dropout": _dropout,
    **{f"aten.{op}": _unary(op) for op in ["neg", "exp", "log", "sqrt", "rsqrt", "abs", "reciprocal", "tanh",
                                           "sigmoid", "erf", "sin", "cos", "relu", "silu", "gelu", "logical_not",
                                           "erfinv"]},
    "aten.bitwise_not": _bitwise_not,
    "aten.add": _arith("add", 0), "aten.sub": _arith("sub", 0), "aten.rsub": _arith("sub", reverse=True),
    **dict.fromkeys(["aten.mul", "aten.multiply"], _arith("mul", 1)), "aten.pow": _arith("pow", 1),
    **dict.fromkeys(["aten.div.Tensor", "aten.div.Scalar"], _arith("div", 1)),
    **dict.fromkeys(["aten.maximum", "aten.max.other"], _arith("maximum")),
    **dict.fromkeys(["aten.minimum", "aten.min.other"], _arith("minimum")),
    **{f"aten.{op}": _compare(op) for op in ["gt", "ge", "lt", "le", "eq", "ne"]},
    **dict.fromkeys(["aten.__and__", "aten.bitwise_and", "aten.logical_and"], _logical("logical_and")),
    **dict.fromkeys(["aten.__or__", "aten.bitwise_or", "aten.logical_or"], _logical("logical_or")),
    **dict.fromkeys(["aten.__xor__", "aten.bitwise_xor", "aten.logical_xor"], _logical("logical_xor")),
    **dict.fromkeys(["aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar"],
                    _where), "aten.masked_fill": _masked_fill,
    **dict.fromkeys(["aten.clamp.default", "aten.clamp.Tensor"], _clamp),
    "aten.clamp_min": lambda cx, node, x, lo: _clamp(cx, node, x, min=lo),
    "aten.clamp_max": lambda cx, node, x, hi: _clamp(cx, node, x, max=hi),
    "aten.linear": _linear, **dict.fromkeys(["aten.mm", "aten.bmm", "aten.matmul"], _matmul),
    "aten.addmm": _addmm, "aten.baddbmm": _addmm,
    "aten.scaled_dot_product_attention": _sdpa, "aten.embedding": _embedding,
    "aten.sum": _reduce("sum"), "aten.mean": _reduce("mean"), "aten.amax": _reduce("max"),
    "aten.max.default": _reduce("max"),
    **dict.fromkeys(["aten.softmax.int", "aten._softmax"], _softmax), "aten.topk": _topk,
    **dict.fromkeys(["aten.layer_norm", "aten.native_layer_norm"], _layer_norm),
    **SHAPE_TO_IR,  # views, slices, splits, concatenation, indexing (torch_ops_shape.py)
    "aten.arange": _arange,
    "aten.full.default": _filled(1), "aten.full_like": _filled(1), "aten.new_full": _filled(2),
    "aten.fill.Scalar": _filled(1), "aten.scalar_tensor": _filled(0),
    **dict.fromkeys(["aten.ones", "aten.ones_like", "aten.new_ones"], _filled(None, 1)),
    # an empty tensor's values are whatever memory held: zeros are one such value, and deterministic
    **dict.fromkeys(["aten.zeros", "aten.zeros_like", "aten.new_zeros", "aten.new_empty"], _filled(None, 0)),
    **dict.fromkeys(["wrap_with_set_grad_enabled", "wrap_with_autocast"], _higher_order),
    **TAIL_TO_IR,  # the long tail found by enumerating transformers' decoders (torch_ops_tail.py)
}

_MISSING = object()


def lookup(name: str, default=_MISSING):
    """The handler for `aten.add.Tensor` (or its packet `aten.add`); an in-place op (`aten.div_.Tensor`) gets
    its functional handler, rebinding the updated tensor."""
    packet, _, overload = name.rpartition(".") if name.count(".") >= 2 else (name, "", "")
    handler = ATEN_TO_IR.get(name) or ATEN_TO_IR.get(packet)
    namespace, _, op = packet.rpartition(".")
    twin = functional_name(op)
    if handler is None and twin is not None:
        functional = lookup(f"{namespace}.{twin}" + (f".{overload}" if overload else ""), None)
        handler = in_place(functional) if functional is not None else None
    if handler is None and default is _MISSING:
        raise KeyError(name)
    return handler if handler is not None else default
