"""Small structural matching helpers shared by the passes (commutative operands, constant values)."""

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
