"""Small structural matching helpers shared by the passes and codegen (commutative operands, constant values, the
factors of a product, an RMS norm)."""

from __future__ import annotations

import numpy as np

from ..ir import Node


def scalar_value(node: Node) -> float | None:
    """The value of a scalar constant (any rank whose elements are all equal), else None."""
    if node.op != "constant":
        return None
    values = np.unique(np.asarray(node.attrs["value"], dtype=np.float64))
    return float(values[0]) if values.size == 1 else None


def is_scalar(node: Node, value: float, tol: float = 1e-6) -> bool:
    v = scalar_value(node)
    return v is not None and abs(v - value) <= tol * max(1.0, abs(value))


def commuted(node: Node):
    """Both operand orders of a binary node: (a, b) and (b, a)."""
    a, b = node.inputs
    return ((a, b), (b, a))


def strip_casts(node: Node) -> Node:
    """The value under any casts (the same tensor, as a matcher sees it)."""
    while node.op == "cast":
        node = node.inputs[0]
    return node


def module_path(loc: str) -> str:
    return loc.split(" (", 1)[0].strip()


def common_module(*locs: str) -> str:
    """The deepest module path shared by several node locations (e.g. `model.layers.0.mlp`)."""
    paths = [module_path(loc).split(".") for loc in locs if loc]
    if not paths:
        return ""
    prefix = []
    for parts in zip(*paths):
        if len(set(parts)) != 1:
            break
        prefix.append(parts[0])
    return ".".join(prefix)


def mul_leaves(node: Node, depth: int = 3, stop: Node | None = None, through_casts: bool = True) -> list:
    """The factors of a tree of `mul`s (depth levels at most, not below `stop`), casts looked through (or, with
    through_casts=False, a cast is a factor); a div(a, sqrt(v)) gives a's factors (none for a = 1) and the pair
    ("1/", sqrt(v))."""
    if node.op == "cast" and through_casts:
        return mul_leaves(node.inputs[0], depth, stop)
    if node is stop or depth == 0:
        return [node]
    if node.op == "div" and node.inputs[1].op == "sqrt":
        numerator = node.inputs[0]
        one = is_scalar(numerator, 1.0)
        return [*([] if one else mul_leaves(numerator, depth - 1, stop, through_casts)),
                ("1/", node.inputs[1])]   # ONNX: 1/√v
    if node.op != "mul":
        return [node]
    return [leaf for i in node.inputs for leaf in mul_leaves(i, depth - 1, stop, through_casts)]


def inverse_rms(factor):
    """1 / sqrt(mean(h², last axis, keepdim) + eps) as rsqrt(v), reciprocal(sqrt(v)) or ("1/", sqrt(v)) (h² as
    pow(h, 2) or h·h) -> (h, eps), else None."""
    if isinstance(factor, tuple):
        v = factor[1].inputs[0]
    elif factor.op == "rsqrt":
        v = factor.inputs[0]
    elif factor.op == "reciprocal" and factor.inputs[0].op == "sqrt":   # ONNX has no rsqrt
        v = factor.inputs[0].inputs[0]
    else:
        return None
    if v.op != "add":
        return None
    for mean, eps in commuted(v):
        if (mean.op != "mean" or scalar_value(eps) is None
                or tuple(mean.attrs.get("axes", ())) not in ((-1,), (mean.type.rank - 1,))):
            continue
        square = mean.inputs[0]
        if (square.op == "pow" and is_scalar(square.inputs[1], 2.0)) or \
                (square.op == "mul" and strip_casts(square.inputs[0]) is strip_casts(square.inputs[1])):
            return strip_casts(square.inputs[0]), scalar_value(eps)
    return None


def input_rms_norm(node: Node) -> tuple[Node, Node | None, float] | None:
    """An RMS norm over the last axis, x · rsqrt(mean(x², last axis) + eps) [· @γ], the factors in any order (the
    inverse root as `inverse_rms` reads it), every value float32 with no cast -> (x, γ's weight node or None, eps),
    else None. What a kernel can compute in its prologue from x (codegen/kernels/norm_prologue.py)."""
    if node.op not in ("mul", "div") or node.dtype != "f32":
        return None
    for r in mul_leaves(node):
        found = inverse_rms(r)
        if found is None or found[0].dtype != "f32" or found[0].op == "cast":
            continue
        x, eps = found
        root = r[1] if isinstance(r, tuple) else r
        if tuple(root.shape) != (*x.shape[:-1], 1):   # one inverse root per row (the mean kept its axis)
            continue
        # no cast between (a norm computed at another precision): a cast is then a factor, neither x nor a weight
        rest = [leaf for leaf in mul_leaves(node, stop=x, through_casts=False) if leaf is not r]
        if isinstance(r, tuple):   # ("1/", sqrt(v)): the same pair object is not kept by a second walk
            rest = [leaf for leaf in rest if not isinstance(leaf, tuple)]
        weights = [leaf for leaf in rest if leaf is not x]
        if (len(rest) - len(weights) == 1 and len(weights) <= 1
                and all(w.op == "weight" and w.shape == (x.shape[-1],) and w.dtype == "f32" for w in weights)):
            return x, (weights[0] if weights else None), eps
    return None
