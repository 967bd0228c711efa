"""canonicalize, projection rules: every way an exporter spells a projection becomes `linear(x, @W[out, in])`.

Rules (before -> after):
    matmul(x, permute(@w, (1, 0)))                        -> linear(x, @w)
    matmul(x, @w[k, n])                                   -> linear(x, @w.t)       (@w.t = wᵀ, made at compile time)
    add(linear(x, @w), @b)                                -> linear(x, @w, @b)
    reshape(linear(reshape(x, [M, k]), @w..), [.., n])    -> linear(x, @w..)       (M = x's leading dims flattened)
    reshape(slice(@W[E, n, d], axis 0, e:e+1), [n, d])    -> @W.e<e>               (one expert of batched weights)
    index_select(@W[E, n, d], e) (+ reshape to [n, d])    -> @W.e<e>               (also biases @b[E, n])
    slice(@W[E·n, d], axis 0, s:e)                        -> @W.rows<s_e_1>        (an expert's rows: DBRX's [E·n, d])
    slice(linear(x, @W, @b), last axis, s:e:k), k > 1      -> linear(x, @W.rows<s:e:k>, @b.rows<s:e:k>)
                                                   (interleaved gate_up, gpt-oss: gate = L[..., ::2], up = L[..., 1::2])

GPT-2's Conv1D (`addmm(b, x.view(-1, k), W[k, n]).view(..., n)`) thus becomes `linear(x, @W.t, @b)`, and the
per-expert slice `W[e]` of a transformers-5 MoE layer (see `frontends/moe.py`) an ordinary named weight, so the
detector sees ordinary linears everywhere. Each rule computes the same values: a transposed or sliced copy of a
weight is the same numbers in the layout `linear` reads; flattening leading dims does not change a row-wise map.
"""

from __future__ import annotations

import math

from ..ir import Node
from .base import Rule, derived_weight, weight_array
from .match import commuted, scalar_value


def _matmul_transposed_weight(node: Node):
    if node.op == "matmul":
        x, wt = node.inputs
        if wt.op == "permute" and tuple(wt.attrs["axes"]) == (1, 0) and wt.inputs[0].op == "weight":
            return {"x": x, "w": wt.inputs[0]}
    return None


def _matmul_weight_in_out(node: Node):
    if node.op == "matmul":
        x, w = node.inputs
        if w.op == "weight" and w.type.rank == 2 and x.dtype == w.dtype:
            return {"x": x, "w": w}
    return None


def _build_transposed(node: Node, b: dict) -> Node:
    w = b["w"]
    wt = derived_weight(f"{w.attrs['name']}.t", lambda: weight_array(w).T)
    return Node("linear", (b["x"], wt), {}, node.type, node.loc)


def _bias_add(node: Node):
    if node.op == "add":
        for lin, b in commuted(node):
            if (lin.op == "linear" and len(lin.inputs) == 2 and b.op == "weight" and b.type.rank == 1
                    and b.shape[0] == lin.shape[-1] and lin.dtype == node.dtype):
                return {"lin": lin, "b": b}
    return None


def _flat_size(dims):
    """The product of dims as one IR dim (an int, or a single symbol times ones), else None."""
    symbols = [d for d in dims if isinstance(d, str)]
    size = math.prod(d for d in dims if isinstance(d, int))
    if not symbols:
        return size
    return symbols[0] if len(symbols) == 1 and size == 1 else None


def _flattened_linear(node: Node):
    if node.op != "reshape" or node.inputs[0].op != "linear":
        return None
    lin = node.inputs[0]
    flat = lin.inputs[0]
    if flat.op != "reshape" or flat.type.rank != 2:
        return None
    x = flat.inputs[0]
    lead = x.shape[:-1]
    if (x.type.rank >= 2 and flat.shape == (_flat_size(lead), x.shape[-1]) and _flat_size(lead) is not None
            and node.shape == (*lead, lin.shape[-1])):
        return {"x": x, "lin": lin}
    return None


def _expert_slice(node: Node):
    """reshape(slice(@W, 0, e:e+1)) | [reshape](index_select(@W, e)) of a 3-D weight (or 2-D bias) -> (W, e)."""
    inner = node.inputs[0] if node.op == "reshape" else node
    if inner.op == "slice" and inner.attrs["axis"] == 0 and inner.shape[0] == 1:
        w, e = inner.inputs[0], inner.attrs.get("start", 0)
    elif inner.op == "index_select" and inner.attrs["axis"] == 0 and inner.inputs[1].type.rank <= 1:
        w, e = inner.inputs[0], scalar_value(inner.inputs[1])
        if e is None or inner.inputs[1].type.shape not in ((), (1,)):
            return None
    else:
        return None
    if w.op != "weight" or w.type.rank not in (2, 3) or node.shape != w.shape[1:]:
        return None
    e = int(e) + (w.shape[0] if e < 0 else 0)
    return {"w": w, "e": e}


def _weight_rows(node: Node):
    """slice(@W, axis 0, s:e) of a 2-D weight with constant bounds (two rows or more, not all) -> (W, rows)."""
    if node.op != "slice" or node.attrs["axis"] != 0 or node.attrs.get("step", 1) != 1 or node.inputs[0].op != "weight":
        return None
    w, start, end = node.inputs[0], node.attrs.get("start", 0), node.attrs.get("end")
    if w.type.rank != 2 or not isinstance(start, int) or not isinstance(end, int) or \
            w.attrs.get("layout", "dense") != "dense":
        return None
    rows = slice(*slice(start, end).indices(w.shape[0])[:2])
    if rows.stop - rows.start < 2 or (rows.start, rows.stop) == (0, w.shape[0]):
        return None  # one row: an expert's bias of a batched [E, n] (the expert-weight rule's, named .e<e>)
    return {"w": w, "rows": rows}


def _build_weight_rows(node: Node, b: dict) -> Node:
    w, rows = b["w"], b["rows"]
    return derived_weight(f"{w.attrs['name']}.rows{rows.start}_{rows.stop}_1", lambda: weight_array(w)[rows])


def _build_expert_weight(node: Node, b: dict) -> Node:
    w, e = b["w"], b["e"]
    return derived_weight(f"{w.attrs['name']}.e{e}", lambda: weight_array(w)[e])


def _strided_output_slice(node: Node):
    """slice(linear(x, @W[, @b]), last axis, step k > 1): the rows s::k of W compute exactly those outputs."""
    if node.op != "slice" or node.attrs.get("step", 1) == 1 or node.inputs[0].op != "linear":
        return None
    lin = node.inputs[0]
    if node.attrs["axis"] not in (-1, lin.type.rank - 1) or not all(
            i.op == "weight" and i.attrs.get("layout", "dense") == "dense" for i in lin.inputs[1:]):
        return None  # (a quantized layout's rows are not the array's rows)
    if not isinstance(node.attrs.get("end"), (int, type(None))):
        return None
    return {"lin": lin, "rows": slice(node.attrs.get("start", 0), node.attrs.get("end"), node.attrs["step"])}


def _build_strided(node: Node, b: dict) -> Node:
    rows = b["rows"]
    tag = f"rows{rows.start}_{'' if rows.stop is None else rows.stop}_{rows.step}"
    picked = [derived_weight(f"{w.attrs['name']}.{tag}", (lambda w: lambda: weight_array(w)[rows])(w))
              for w in b["lin"].inputs[1:]]
    return Node("linear", (b["lin"].inputs[0], *picked), {}, node.type, node.loc)


PROJECTION_RULES = [
    Rule("linear-from-matmul", "matmul(x, permute(@w, (1, 0))) -> linear(x, @w)", _matmul_transposed_weight,
         lambda n, b: Node("linear", (b["x"], b["w"]), {}, n.type, n.loc)),
    Rule("linear-transposed-weight", "matmul(x, @w[k, n]) -> linear(x, @w.t[n, k])", _matmul_weight_in_out,
         _build_transposed),
    Rule("linear-bias", "add(linear(x, @w), @b) -> linear(x, @w, @b)", _bias_add,
         lambda n, b: Node("linear", (*b["lin"].inputs, b["b"]), {}, n.type, b["lin"].loc)),
    Rule("linear-flatten", "reshape(linear(reshape(x, [M, k]), @w..), [..., n]) -> linear(x, @w..)",
         _flattened_linear, lambda n, b: Node("linear", (b["x"], *b["lin"].inputs[1:]), {}, n.type, b["lin"].loc)),
    Rule("expert-weight", "reshape(slice(@W[E, n, d], 0, e:e+1), [n, d]) -> @W.e<e>", _expert_slice,
         _build_expert_weight),
    Rule("weight-rows", "slice(@W[E·n, d], 0, s:e) -> @W.rows<s_e_1>", _weight_rows, _build_weight_rows),
    Rule("linear-strided-rows", "slice(linear(x, @W, @b), -1, s:e:k) -> linear(x, @W[s:e:k], @b[s:e:k])",
         _strided_output_slice, _build_strided),
]
