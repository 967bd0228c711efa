"""fuse-attention: each layer's scaled dot-product attention, as the model spells it, onto one `attention` op.

Matches (rules as data, `RULES`) the chain transformers' eager attention exports, from its last matmul up:

    matmul(softmax(mask(cap(scale(matmul(q, permute(kv_heads(K), 0,1,3,2)))))), kv_heads(V))
        kv_heads(X) = reshape(expand(reshape(X, [B,Hk,1,kv,D]), [B,Hk,G,kv,D]), [B,Hk*G,kv,D])  (grouped-query)
                    | X                                                                          (G = 1)
        scale(s)    = mul(s, c) | div(s, c) | s           cap(s) = mul(tanh(div(s, c)), c) | s  (Gemma 2)
        mask(s)     = where(m, s, fill) | add(s, m)
    -> attention(q, K, V, m){scale, softcap, mask_kind, fill}

K and V that are a cache's filled prefix, `slice(cache){axis 2, 0:kv}` with kv the mask's last dim, become the
cache itself: the op reads the first kv slots (the mask's), so the prefix is never copied.

(semantics: ir/attention.py). Why: lowered op by op, a decode step's attention is Relax's legalized matmuls,
softmax and the copies that repeat each KV head for its query heads, a dozen launches and allocations per layer;
`attention` lowers to one kernel that indexes the KV head as h // G (codegen/lower_attention.py). Attention
without a mask (none of the decoders we import) or with heads repeated another way is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import Graph, Node
from .base import Pass, Rule, apply_rules
from .match import commuted, scalar_value


def kv_heads(node: Node) -> tuple[Node, int] | None:
    """(K, G) when `node` is K[B, Hk, kv, D] with each KV head repeated G times along the head axis."""
    if node.type.rank != 4:
        return None
    if node.op == "reshape" and node.inputs[0].op == "expand" and node.inputs[0].inputs[0].op == "reshape":
        expanded, inner = node.inputs[0], node.inputs[0].inputs[0]
        base = inner.inputs[0]
        if base.type.rank == 4:
            b, hk, kv, d = base.shape
            g = expanded.shape[2]
            if (inner.shape == (b, hk, 1, kv, d) and expanded.shape == (b, hk, g, kv, d) and isinstance(g, int)
                    and node.shape == (b, hk * g, kv, d)):
                return base, g
    return node, 1


def _scores(node: Node) -> dict | None:
    """scale(cap(matmul(q, permute(kv_heads(K))))) -> {q, K, G, scale, softcap}."""
    bound = {"scale": 1.0, "softcap": 0.0}
    if node.op == "mul" and node.inputs[1].op == "constant" and node.inputs[0].op == "tanh":
        inner, cap = node.inputs[0].inputs[0], scalar_value(node.inputs[1])
        if inner.op == "div" and cap and cap > 0 and scalar_value(inner.inputs[1]) == cap:
            bound["softcap"], node = cap, inner.inputs[0]
    if node.op in ("mul", "div"):
        for a, c in commuted(node) if node.op == "mul" else [node.inputs]:
            value = scalar_value(c)
            if value:
                bound["scale"], node = (value if node.op == "mul" else 1.0 / value), a
                break
    if node.op != "matmul" or node.inputs[1].op != "permute" or node.inputs[1].attrs["axes"] != (0, 1, 3, 2):
        return None
    heads = kv_heads(node.inputs[1].inputs[0])
    if heads is None or node.inputs[0].type.rank != 4:
        return None
    return {**bound, "q": node.inputs[0], "k": heads[0], "group": heads[1]}


def _attention(node: Node) -> dict | None:
    if node.op != "matmul" or node.inputs[0].op != "softmax" or node.dtype != "f32":
        return None
    probs, v_heads = node.inputs[0], kv_heads(node.inputs[1])
    if probs.attrs["axis"] not in (-1, 3) or v_heads is None:
        return None
    s = probs.inputs[0]
    if s.op == "where" and s.inputs[0].dtype == "bool" and scalar_value(s.inputs[2]) is not None:
        scores, mask = _scores(s.inputs[1]), {"mask": s.inputs[0], "mask_kind": "select",
                                              "fill": scalar_value(s.inputs[2])}
    elif s.op == "add":
        found = [(_scores(a), m) for a, m in commuted(s) if m.dtype == s.dtype]
        found = [(sc, m) for sc, m in found if sc is not None][:1]
        if not found:
            return None
        scores, mask = found[0][0], {"mask": found[0][1], "mask_kind": "add"}
    else:
        return None  # no mask: left to the op-by-op lowering (the kernel reads kv from the mask's shape)
    if scores is None or scores["group"] != v_heads[1] or v_heads[0].shape != scores["k"].shape:
        return None
    kv = mask["mask"].shape[-1] if mask["mask"].type.rank else None
    k, v = _read_in_place(scores["k"], kv), _read_in_place(v_heads[0], kv)
    if k.shape != v.shape:  # one is a cache's filled prefix, the other computed from it (DiffLlama's V halves)
        k, v = scores["k"], v_heads[0]
    return {**scores, **mask, "k": k, "v": v}


def _read_in_place(node: Node, kv) -> Node:
    """The cache under a filled-prefix slice of the mask's kv slots, else the node."""
    a = node.attrs
    if node.op == "slice" and a["axis"] in (2, -2) and a["start"] == 0 and a["step"] == 1 and a["end"] == kv:
        return node.inputs[0]
    return node


def _build(node: Node, b: dict) -> Node:
    attrs = {"scale": b["scale"], "softcap": b["softcap"], "mask_kind": b["mask_kind"]}
    if b["mask_kind"] == "select":
        attrs["fill"] = b["fill"]
    return Node("attention", (b["q"], b["k"], b["v"], b["mask"]), attrs, node.type, node.loc)


RULES = [Rule("attention", "matmul(softmax(mask(cap(scale(q @ kv_heads(K)^T)))), kv_heads(V)) -> attention(q, K, V, "
              "mask)", _attention, _build)]


@dataclass(frozen=True)
class FuseAttention(Pass):
    name = "fuse-attention"

    def run(self, graph: Graph) -> Graph:
        return apply_rules(graph, RULES)
