"""detect-gated-mlp: find gated MLPs by dataflow and canonicalize each into one `gated_mlp` op.

Matches (after `canonicalize`), whatever the modules are called:

    down(act(linear(x, @Wg)) ⊙ up_act(linear(x, @Wu)))            separate gate / up projections
    down(act(slice(L, 0:n)) ⊙ up_act(slice(L, n:2n))), L = linear(x, @Wgu)   fused gate_up (either order)

with act ∈ {silu, gelu, relu, fatrelu}, up_act ∈ {identity, relu} (dReLU puts relu on both; which side is the
"gate" is then a convention — the product is symmetric), ⊙ in either operand order, and down = linear(·, @Wd).
Produces `gated_mlp(x, @Wg, @Wu, @Wd)` or, fused, `gated_mlp(x, @Wgu, @Wd){fused=True, gate_first=...}`.
Plain MLPs, down(act(linear(x, @W1))), are recorded as `plain-mlp` and left alone: nothing to gate on.

Why it is correct: the replacement computes the same expression (see `ir/mlp.py`); nodes of the old block that
other code still reads stay in the graph for those readers.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import Graph, Node
from ..ir.mlp import pattern_name
from .base import Pass, Rule, apply_rules, note, record
from .match import commuted, common_module

GATE_ACT_OPS = {"silu": "silu", "relu": "relu", "fatrelu": "fatrelu", "gelu": "gelu"}


def _projection(node: Node):
    """linear(x, @W) without bias -> (x, W)."""
    if node.op == "linear" and len(node.inputs) == 2 and node.inputs[1].op == "weight":
        return node.inputs
    return None


def _fused_half(node: Node):
    """slice(linear(x, @Wgu), last axis) -> (linear node, start)."""
    if node.op == "slice" and node.inputs[0].op == "linear" and node.attrs.get("step", 1) == 1:
        lin = node.inputs[0]
        if node.attrs["axis"] in (-1, lin.type.rank - 1) and _projection(lin):
            return lin, node.attrs.get("start", 0)
    return None


def _gate_side(node: Node):
    """act(P) -> (act kind, threshold, P)."""
    if node.op in GATE_ACT_OPS:
        kind = node.op
        if kind == "gelu" and node.attrs.get("approximate", "none") == "tanh":
            kind = "gelu_tanh"
        return kind, float(node.attrs.get("threshold", 0.0)), node.inputs[0]
    return None


def _up_side(node: Node):
    """P or relu(P) -> (up act, P)."""
    return ("relu", node.inputs[0]) if node.op == "relu" else ("identity", node)


def _match(node: Node):
    proj = _projection(node)
    if proj is None or proj[0].op != "mul":
        return None
    product, w_down = proj
    for gate_node, up_node in commuted(product):
        gate = _gate_side(gate_node)
        if gate is None:
            continue
        gate_act, threshold, gate_proj = gate
        up_act, up_proj = _up_side(up_node)
        base = {"gate_act": gate_act, "threshold": threshold, "up_act": up_act, "w_down": w_down,
                "locs": (gate_node.loc, up_node.loc, node.loc)}
        separate = _projection(gate_proj), _projection(up_proj)
        if all(separate) and separate[0][0] is separate[1][0]:
            (x, w_gate), (_, w_up) = separate
            if w_gate.shape == w_up.shape and w_down.shape[1] == w_gate.shape[0]:
                return {**base, "x": x, "weights": (w_gate, w_up), "fused": False}
        halves = _fused_half(gate_proj), _fused_half(up_proj)
        if all(halves) and halves[0][0] is halves[1][0]:
            lin = halves[0][0]
            x, w_gate_up = lin.inputs
            n = w_gate_up.shape[0] // 2
            starts = {halves[0][1], halves[1][1]}
            if starts == {0, n} and gate_proj.shape[-1] == n == w_down.shape[1]:
                return {**base, "x": x, "weights": (w_gate_up,), "fused": True, "gate_first": halves[0][1] == 0}
    return None


def _build(node: Node, b: dict) -> Node:
    attrs = {"gate_act": b["gate_act"], "up_act": b["up_act"], "fused": b["fused"]}
    if b["gate_act"] == "fatrelu":
        attrs["threshold"] = b["threshold"]
    if b["fused"]:
        attrs["gate_first"] = b["gate_first"]
    loc = common_module(*b["locs"]) or node.loc
    return Node("gated_mlp", (b["x"], *b["weights"], b["w_down"]), attrs, node.type, loc)


def _pattern_of(b: dict) -> str:
    return pattern_name(b["gate_act"], b["up_act"]) + ("-fused" if b["fused"] else "")


RULES = [Rule("gated-mlp", "linear(act(linear(x,@Wg)) ⊙ up_act(linear(x,@Wu)), @Wd) -> gated_mlp(x,@Wg,@Wu,@Wd)",
              _match, _build)]


def _plain_mlp(node: Node) -> bool:
    """down(act(linear(x, @W1)), @W2) with a pointwise activation: a non-gated (GPT-2 style) MLP."""
    proj = _projection(node)
    return bool(proj and proj[0].op in ("gelu", "relu", "silu") and _projection(proj[0].inputs[0]))


@dataclass(frozen=True)
class DetectGatedMLP(Pass):
    name = "detect-gated-mlp"

    def run(self, graph: Graph) -> Graph:
        for node in graph.nodes:
            bound = _match(node)
            if bound is not None:
                # per-pattern counts (the rule itself records the total as "gated-mlp")
                record(_pattern_of(bound))
            elif _plain_mlp(node):
                record("plain-mlp")
                note({"location": common_module(node.loc, node.inputs[0].loc) or node.loc,
                      "pattern": "plain-mlp", "mode": "dense",
                      "reason": "not gated: act(x·W1)·W2 has no gate to skip neurons on"})
        return apply_rules(graph, RULES)
