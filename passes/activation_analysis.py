"""Which exactly-zero-below activation a subgraph computes, decided by what it computes, not how it is spelled.

An activation subgraph is the elementwise nodes between one value x (the pre-activation: a projection, a
slice of one) and a node y, whose other inputs are scalar constants, so that y = f(x) elementwise. `classify(y)`
runs the subgraph through the ops' numpy references on chosen probe points and compares f with every entry of
`ir.activations.ZERO_BELOW` (relu, fatrelu, relu2, relu6) at every candidate threshold: 0 and each constant
of the subgraph. f must equal the entry exactly (bit for bit) on every probe. Any spelling is decided the same
way: where(a > t, a, 0), a · (a > t), clamp(a, min=0), threshold(a, t, 0), hardtanh(a, 0, 6), relu(a)², ...

Why probing decides it: every op of such a subgraph is smooth except at points set by its constants (a
comparison, maximum/minimum/clamp, where), so f is piecewise smooth with breakpoints among those constants.
The probes are each constant and its float32 neighbours on both sides (where a threshold could sit and where
`>` and `>=` differ), 0 and its neighbours, and a log-spaced grid over 1e-6..1e6 on both sides; two such
functions that agree exactly there and on the dense grid between are the same activation for exact mode's
purpose. Anything that differs anywhere (a leaky slope, an offset, a NaN) is not classified and stays dense.

`classify_shifted(y)` takes one step more: y = f(P - c) with c one number per token (a value whose last axis is 1),
as Gemma 3n's gate gelu_tanh(relu(P - mean(P) - z·std(P))). Which node is P - c is read off the subgraph (its add /
sub / neg nodes summed symbolically: P with coefficient +1, the rest per-token terms, in any order or sign), and f,
a function of that node alone, is probed as above — against every exactly-sparse entry, including those without an
op of their own (gelu_tanh_relu). c itself may be any per-token value: the block is exactly zero wherever P <= c.
"""

from __future__ import annotations

import numpy as np

from ..ir import Node, op_def
from ..ir.activations import ACTIVATIONS, THRESHOLDED, ZERO_BELOW
from ..ir.ops import OPS, REQUIRED
from ..ir.types import np_dtype

ZERO_BELOW_OPS = tuple(name for name in ZERO_BELOW if name in OPS)  # those canonicalize can name as an op
MAX_NODES = 16  # activation subgraphs are a few ops; bigger elementwise regions are not activations
# ops through which a subgraph can become exactly zero; without one of them f is not worth probing
ZEROING = {"maximum", "minimum", "where", "relu", "fatrelu", "relu2", "relu6", "gt", "ge", "lt", "le"}
GRID = np.concatenate([-np.logspace(6, -6, 97), [0.0], np.logspace(-6, 6, 97)]).astype(np.float32)


def activation_subgraph(y: Node, leaf: Node | None = None):
    """(x, nodes in evaluation order) when y = f(x) elementwise with scalar constants, else None. `leaf`: a node
    taken as x even if it is elementwise itself (the shifted value P - c of `classify_shifted`)."""
    leaves: dict[int, Node] = {}
    order: list[Node] = []
    seen: set[int] = set()

    def visit(n: Node) -> bool:
        if id(n) in seen:
            return True
        seen.add(id(n))
        if n is leaf:
            leaves[id(n)] = n
            return True
        if n.op == "constant":
            return np.asarray(n.attrs["value"]).size == 1
        pointwise = n.op not in ("input", "weight") and op_def(n.op).elementwise
        if not pointwise:
            leaves[id(n)] = n
            return n is not y and len(leaves) == 1
        if len(order) >= MAX_NODES or not all(visit(i) for i in n.inputs):
            return False
        order.append(n)
        return True

    if not visit(y) or len(leaves) != 1:
        return None
    (x,) = leaves.values()
    if x.dtype not in ("f32", "f16", "f64") or y.dtype != x.dtype or y.shape != x.shape:
        return None
    return x, order


def probe_points(nodes: list[Node]) -> np.ndarray:
    """The grid, plus every scalar constant of the subgraph and 0 with their float32 neighbours."""
    consts = [0.0] + [v for v in (_value(n) for n in _constants(nodes)) if v is not None and np.isfinite(v)]
    points = [GRID]
    for c in np.float32(consts):
        points.append(np.array([np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf))],
                               np.float32))
    return np.unique(np.concatenate(points))


def evaluate_on(x: Node, nodes: list[Node], points: np.ndarray) -> np.ndarray:
    """f(points): the subgraph's ops run by their numpy references, x bound to the probe points."""
    with np.errstate(all="ignore"):
        values = {id(x): points.astype(np_dtype(x.dtype))}
        for n in _constants(nodes):
            values[id(n)] = np.asarray(n.attrs["value"], dtype=np_dtype(n.dtype)).reshape(())
        for n in nodes:
            opdef = op_def(n.op)
            attrs = {**{k: v for k, v in opdef.attrs.items() if v is not REQUIRED}, **n.attrs}
            out = opdef.reference(*(values[id(i)] for i in n.inputs), attrs, {})
            values[id(n)] = np.asarray(out).astype(np_dtype(n.dtype), copy=False)  # as the interpreter does
    return np.broadcast_to(values[id(nodes[-1])], points.shape)


def classify(y: Node):
    """(activation name, threshold, x) when y computes an exactly-zero-below activation of x, else None."""
    found = activation_subgraph(y) if y.op in ZEROING or y.op in ("mul", "pow") else None   # pow: relu(a)**2
    if found is None:
        return None
    x, nodes = found
    if not any(n.op in ZEROING for n in nodes):
        return None
    found = _zero_below(x, nodes, ZERO_BELOW_OPS)
    return None if found is None else (*found, x)


def _zero_below(x: Node, nodes: list[Node], names: tuple[str, ...]):
    """(name, threshold) of the first entry of `names` that f (the subgraph from x) equals on every probe point."""
    points = probe_points(nodes)
    f = evaluate_on(x, nodes, points).astype(np.float32)
    dtype = np_dtype(x.dtype)
    with np.errstate(over="ignore"):  # the grid's ends are inf in float16, on both sides alike
        at = points.astype(dtype)  # the entry at x's own precision: a float16 gelu rounds as the graph's does
    candidates = sorted({0.0, *(float(v) for v in (_value(n) for n in _constants(nodes)) if v is not None)})
    for name in names:
        act = ACTIVATIONS[name]
        for t in candidates if name in THRESHOLDED else [0.0]:
            with np.errstate(all="ignore"):
                want = act.reference(at, dtype.type(t)).astype(np.float32)
            if np.array_equal(f, want, equal_nan=True):
                return name, t
    return None


def classify_shifted(y: Node):
    """(activation name, threshold, P, v) when y = act(v) with v = P - c: P a value of y's shape (a projection), c
    one number per token (a value whose last axis is 1, e.g. Gemma-3n's mean(P) + z·std(P), or a sum of such), and
    act an exactly-zero-below entry of the table (compared bit for bit on the probe points, as `classify`), else
    None. Then y is exactly 0 wherever P <= c (+ the threshold), whatever c is.

    v is read off the subgraph, not matched by spelling: the add / sub / neg nodes between P and the activation
    are summed symbolically (P - c, -c + P, (P - mean) - z·std, P + (-c) all give P with coefficient +1 and
    per-token terms); the rest, y as a function of v, is probed."""
    if y.type.rank == 0 or y.shape[-1] == 1 or y.dtype not in ("f32", "f16", "f64"):
        return None
    for v in _elementwise_nodes(y):
        terms = _affine_terms(v, y.shape)
        if terms is None:
            continue
        full, per_token = terms
        if len(full) != 1 or not per_token or next(iter(full.values()))[1] != 1:
            continue
        found = activation_subgraph(y, leaf=v)
        if found is None or not any(n.op in ZEROING for n in found[1]):
            continue
        match = _zero_below(v, found[1], ZERO_BELOW)
        if match is not None:
            return (*match, next(iter(full.values()))[0], v)
    return None


def _elementwise_nodes(y: Node):
    """The add / sub / neg nodes of y's shape below y through elementwise nodes of y's shape, nearest first."""
    order, seen, frontier = [], set(), [y]
    while frontier and len(seen) < MAX_NODES:
        n = frontier.pop(0)
        if id(n) in seen or n.shape != y.shape or n.op in ("input", "weight", "constant"):
            continue
        if not op_def(n.op).elementwise:
            continue
        seen.add(id(n))
        if n.op in ("add", "sub", "neg"):
            order.append(n)
        frontier.extend(n.inputs)
    return order


def _affine_terms(v: Node, shape: tuple):
    """v as a signed sum of add / sub / neg over its leaves -> ({id: (leaf, coef)} of y's shape, the same of
    per-token leaves (last axis 1)), or None when anything else (a scale, a scalar offset) takes part."""
    full: dict[int, list] = {}
    per_token: dict[int, list] = {}

    def walk(n: Node, sign: int) -> bool:
        if n.shape == shape and n.op in ("add", "sub"):
            return walk(n.inputs[0], sign) and walk(n.inputs[1], -sign if n.op == "sub" else sign)
        if n.shape == shape and n.op == "neg":
            return walk(n.inputs[0], -sign)
        if n.type.rank == len(shape) and n.shape[-1] == 1 and n.op != "constant":
            per_token.setdefault(id(n), [n, 0])[1] += sign
            return True
        if n.shape == shape and n.op != "constant":
            full.setdefault(id(n), [n, 0])[1] += sign
            return True
        return False

    if not walk(v, 1):
        return None
    return {k: tuple(e) for k, e in full.items() if e[1]}, {k: tuple(e) for k, e in per_token.items() if e[1]}


def classify_probed(y: Node, names: tuple[str, ...]):
    """(activation name, x) when y computes one of the table entries `names` (activations with no op of their
    own: the clamped SwiGLUs, ir/activations.py CLAMPED) of x on every probe point, to float32 rounding (rtol
    1e-5), else None."""
    found = activation_subgraph(y) if y.op in ("mul", "add", "minimum", "maximum", "silu") else None
    if found is None or not any(n.op in ZEROING for n in found[1]):
        return None  # the probed entries all clamp: a subgraph without a min/max/where cannot be one of them
    x, nodes = found
    points = probe_points(nodes)
    f = evaluate_on(x, nodes, points).astype(np.float64)
    for name in names:
        want = ACTIVATIONS[name].reference(points, 0.0).astype(np.float64)
        if np.allclose(f, want, rtol=1e-5, atol=1e-30, equal_nan=True):
            return name, x
    return None


def _constants(nodes: list[Node]):
    seen = set()
    for n in nodes:
        for i in n.inputs:
            if i.op == "constant" and id(i) not in seen:
                seen.add(id(i))
                yield i


def _value(n: Node):
    v = np.asarray(n.attrs["value"], dtype=np.float64)
    return float(v.reshape(-1)[0]) if v.size == 1 else None
