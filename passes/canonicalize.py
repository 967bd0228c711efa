"""canonicalize: fold decomposed activations and projections into the canonical ops detection matches on.

Exporters spell the same math in many ways; folding them here keeps `detect-gated-mlp` one rule set.

Activation rules (before -> after):
    mul(x, sigmoid(x))                                  -> silu(x)
    mul(mul(x, 0.5), add(erf(mul(x, 0.7071..)), 1))     -> gelu(x)
    mul(mul(x, 0.5), add(tanh(..x + 0.044715·x³..), 1)) -> gelu(x){approximate='tanh'}
    f(x) exactly zero below t, in any spelling          -> relu | fatrelu{threshold=t} | relu2 | relu6 (x)
        (decided by what f computes: activation_analysis.py probes the elementwise subgraph; e.g.
         maximum(x, 0), where(gt(x, t), x, 0), mul(x, cast(gt(x, t))), mul(relu(x), relu(x)), clamp(x, 0, 6))

Empty-operand rules (an operand with a 0-sized dim adds nothing; Phi-3's rotary concatenates an empty pass-through
slice, which Relax folds into an empty constant that a saved executable cannot load, "Invalid DLTensor file format"):
    concat(x, e[..,0,..], y)                            -> concat(x, y)        (one operand left: that operand)
    concat(e1, e2) with every operand empty             -> full(shape, 0)      (no values to read)

Weight rule: add | sub | mul of a rank-1 weight and a scalar constant (Gemma's RMSNorm weight, 1 + w) -> a derived
weight holding the result (computed once at compile time).

Projection rules (`canonicalize_layout.py`): matmul with a transposed or [in, out] weight, bias adds, the
flatten/unflatten around a projection and per-expert slices of batched weights all become `linear(x, @W)`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Node
from .activation_analysis import classify
from .base import Pass, Rule, apply_rules, derived_weight, weight_array
from .canonicalize_layout import PROJECTION_RULES
from .match import commuted, is_scalar, scalar_value


def _silu(node: Node):
    if node.op == "mul":
        for a, b in commuted(node):
            if b.op == "sigmoid" and b.inputs[0] is a:
                return {"x": a}
    return None


def _erf_arg(node: Node, x: Node) -> bool:
    """erf's argument is x/√2, written as a multiply or a divide."""
    if node.op == "mul":
        return any(a is x and is_scalar(c, 1 / math.sqrt(2), 1e-4) for a, c in commuted(node))
    return node.op == "div" and node.inputs[0] is x and is_scalar(node.inputs[1], math.sqrt(2), 1e-4)


def _tanh_arg(node: Node, x: Node) -> bool:
    """tanh's argument is √(2/π)·(x + 0.044715·x³) in any operand order; checked by its constants."""
    consts = [scalar_value(n) for n in _subtree(node, depth=4) if n.op == "constant"]
    has_x = any(n is x for n in _subtree(node, depth=4))
    return has_x and any(c and abs(c - 0.044715) < 1e-5 for c in consts) and any(
        c and abs(c - math.sqrt(2 / math.pi)) < 1e-4 for c in consts)


def _subtree(node: Node, depth: int):
    yield node
    if depth:
        for i in node.inputs:
            yield from _subtree(i, depth - 1)


def _gelu(node: Node):
    """0.5·x·(1 + f(x)) with the three factors grouped in any order (exporters differ)."""
    if node.op != "mul":
        return None
    for a, b in commuted(node):
        if b.op != "mul":
            continue
        for x, half, one_plus in itertools.permutations((a, *b.inputs)):
            if not is_scalar(half, 0.5) or one_plus.op != "add":
                continue
            for f, one in commuted(one_plus):
                if not is_scalar(one, 1.0) or f.op not in ("erf", "tanh"):
                    continue
                if f.op == "erf" and _erf_arg(f.inputs[0], x):
                    return {"x": x, "approximate": "none"}
                if f.op == "tanh" and _tanh_arg(f.inputs[0], x):
                    return {"x": x, "approximate": "tanh"}
    return None


def _zero_below(node: Node):
    found = classify(node)
    if found is None or (node.op == found[0] and node.inputs[0] is found[2]
                         and node.attrs.get("threshold", 0.0) == found[1]):
        return None  # not a ReLU-family activation, or already its canonical op
    name, threshold, x = found
    return {"x": x, "name": name, "threshold": threshold}


def _build_zero_below(node: Node, b: dict) -> Node:
    attrs = {"threshold": b["threshold"]} if b["name"] == "fatrelu" else {}
    return Node(b["name"], (b["x"],), attrs, node.type, node.loc)


ACTIVATION_RULES = [
    Rule("silu", "mul(x, sigmoid(x)) -> silu(x)", _silu,
         lambda n, b: Node("silu", (b["x"],), {}, n.type, n.loc)),
    Rule("gelu", "0.5·x·(1 + erf(x/√2) | tanh(...)) -> gelu(x)", _gelu,
         lambda n, b: Node("gelu", (b["x"],), {"approximate": b["approximate"]}, n.type, n.loc)),
    Rule("zero-below", "f(x) == 0 for x <= t, by probing f -> relu | fatrelu{threshold=t} | relu2 | relu6 (x)",
         _zero_below, _build_zero_below),
]

def _is_empty(node: Node) -> bool:
    return any(d == 0 for d in node.type.shape)  # a symbolic dim is never taken as 0


def _empty_operand(node: Node):
    if node.op == "concat" and any(map(_is_empty, node.inputs)):
        kept = tuple(i for i in node.inputs if not _is_empty(i))
        return {"kept": kept} if kept else None
    return None


def _build_without_empty(node: Node, b: dict) -> Node:
    # the operands' other dims equal the output's, so one operand left has the concat's type
    return b["kept"][0] if len(b["kept"]) == 1 else node.replace(inputs=b["kept"])


def _all_empty(node: Node):
    return {} if node.op == "concat" and all(map(_is_empty, node.inputs)) else None


EMPTY_RULES = [
    Rule("concat-empty-operand", "concat(x, e[..,0,..], y) -> concat(x, y) | x", _empty_operand, _build_without_empty),
    Rule("concat-all-empty", "concat(e1[..,0,..], e2) -> full(shape, 0)", _all_empty,
         lambda n, b: Node("full", (), {"shape": n.type.shape, "value": 0}, n.type, n.loc)),
]

def _vector_weight_and_scalar(node: Node):
    """add / sub / mul of a rank-1 weight and a scalar constant (Gemma's RMSNorm weight as 1 + w), same dtype."""
    if node.op not in _SCALAR_OPS or len(node.inputs) != 2:
        return None
    for w, c in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
        if (w.op == "weight" and w.type.rank == 1 and scalar_value(c) is not None and c.type.rank == 0
                and node.type == w.type):
            return {"w": w, "c": scalar_value(c), "w_first": w is node.inputs[0]}
    return None


def _folded_weight(node: Node, b: dict) -> Node:
    op, w, c = node.op, b["w"], b["c"]
    name = f"{w.attrs['name']}.{op}{'' if b['w_first'] else 'r'}{c:g}"

    def make() -> np.ndarray:
        a = weight_array(w).astype(np.float64)
        value = _SCALAR_OPS[op](a, c) if b["w_first"] else _SCALAR_OPS[op](np.full_like(a, c), a)
        return value.astype(weight_array(w).dtype)

    return derived_weight(name, make)


_SCALAR_OPS = {"add": np.add, "sub": np.subtract, "mul": np.multiply}

# a weight computed from one weight and a constant is a weight: computed once here, not every call (and Gemma's norms
# then read as RMS norms with a weight, which CPU kernels compute in their prologue: codegen/kernel_input.py)
WEIGHT_RULES = [
    Rule("fold-vector-weight", "add | sub | mul(@w[d], c) -> @w' (computed once)", _vector_weight_and_scalar,
         _folded_weight),
]

RULES = ACTIVATION_RULES + EMPTY_RULES + WEIGHT_RULES + PROJECTION_RULES


@dataclass(frozen=True)
class Canonicalize(Pass):
    name = "canonicalize"

    def run(self, graph: Graph) -> Graph:
        return apply_rules(graph, RULES)
