"""detect-gated-mlp: find gated MLPs by dataflow and canonicalize each into one `gated_mlp` op.

Matches (after `canonicalize`), whatever the modules are called:

    down(act(P(x, @Wg)) ⊙ up_act(P(x, @Wu)))                        separate gate / up projections
    down(act(slice(L, 0:n)) ⊙ up_act(slice(L, n:2n))), L = P(x, @Wgu)   fused gate_up (either order)

with P(x, @W) = linear(x, @W) or linear(x, @W, @b), act ∈ {silu, gelu, relu, fatrelu, relu2, relu6} or a
table activation without an op of its own found by probing its subgraph (the clamped SwiGLUs of gpt-oss and
DeepSeek-V4, see `activation_analysis.classify_probed`), up_act ∈ {identity, relu, probed: clip(u, ±L) (+ 1)}
(dReLU puts relu on both; which side is the "gate" is then a convention — the product is symmetric),
⊙ in either operand order, and down = P(·, @Wd). Produces `gated_mlp(x, @Wg, @Wu, @Wd)` or, fused,
`gated_mlp(x, @Wgu, @Wd){fused=True, gate_first=...}`; gate/up biases become inputs (`bias=True`, a missing one
a zero vector), a down bias an `add` after the block:

    linear(h, @Wd, @bd)  ->  add(gated_mlp(x, ..){bias=..}, @bd)

An expert of an MoE layer — weights `@W.e<i>` (batched expert weights, see `canonicalize_layout.py`) or a module
path `...experts.<i>...` — gets `expert=i`, and its location names the expert (`model.layers.0.mlp.experts.3`).
A block whose product is RMS-normalised before the down projection, down(rms_norm(g ⊙ u) ⊙ @w) (BitNet's
ffn_sub_norm), becomes `gated_mlp(x, @Wg, @Wu, @Wd.normed){hidden_rms_eps=eps}` with @Wd.normed = Wd·diag(w):
the norm keeps zeros zero, so the block stays exactly sparse (pattern `<name>-normed`).
Plain MLPs, down(act(P(x, @W1))), are recorded as `plain-mlp`, noted for the report and left alone: nothing
to gate on.

A block whose gate is an exactly-zero-below activation of P(x, @Wg) - c, c one number per token (Gemma-3n's
gelu_tanh(relu(P - mean(P) - z·std(P))), found by `activation_analysis.classify_shifted`), is recorded under its
pattern (`geglu-cutoff`) and left as it is: sparsify-exact rewrites it (`cutoff_block`), dense mode keeps its ops.
Any other block down(g ⊙ P(x)) whose gate g reads a projection of x but is no known activation is recorded as
`unmatched-gate`, with its gate spelled out in a note and a report row: what is missing; likewise a plain MLP
down(f(P(x))) whose pointwise f is no known activation (Apertus's xIELU), as `unmatched-activation`.

Statistics: `gated-mlp` (all blocks), one count per pattern (`swiglu`, `reglu-fused`, ...), `moe-expert` (blocks
that are experts), `biased` (blocks with a bias anywhere), `plain-mlp`, the cutoff patterns (`geglu-cutoff`),
`unmatched-gate`, `unmatched-activation`.

Why it is correct: the replacement computes the same expression (see `ir/mlp.py`); nodes of the old block that
other code still reads stay in the graph for those readers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Node
from ..ir.activations import PROBED, UP_ACTS, ZERO_BELOW
from ..ir.mlp import pattern_name
from .activation_analysis import classify_probed, classify_shifted
from .base import Pass, Rule, apply_rules, derived_weight, note, record, weight_array
from .match import common_module, commuted, inverse_rms, mul_leaves

GATE_ACT_OPS = {"silu": "silu", "relu": "relu", "fatrelu": "fatrelu", "gelu": "gelu", "relu2": "relu2",
                "relu6": "relu6"}
PROBED_GATE = tuple(n for n in PROBED if n not in UP_ACTS)  # activations without an op: found by probing
PROBED_UP = tuple(n for n in PROBED if n in UP_ACTS)
_EXPERT_WEIGHT = re.compile(r"\.e(\d+)(?:\.t)?$")
_EXPERT_MODULE = re.compile(r"(?:^|\.)experts\.(\d+)(?:\.|$)")


def _projection(node: Node):
    """linear(x, @W) or linear(x, @W, @b) -> (x, W, b or None)."""
    if node.op == "linear" and node.inputs[1].op == "weight" and all(b.op == "weight" for b in node.inputs[2:]):
        x, w, *b = node.inputs
        return x, w, (b[0] if b else None)
    return None


def _fused_half(node: Node):
    """slice(P(x, @Wgu), last axis) -> (linear node, start)."""
    if node.op == "slice" and node.inputs[0].op == "linear" and node.attrs.get("step", 1) == 1:
        lin = node.inputs[0]
        if node.attrs["axis"] in (-1, lin.type.rank - 1) and _projection(lin):
            return lin, node.attrs.get("start", 0)
    return None


def _gate_side(node: Node):
    """act(P) -> (act kind, threshold, P); a probed activation first (DeepSeek-V4's silu(min(P, 10)) ends in a
    silu op whose input is not P)."""
    probed = classify_probed(node, PROBED_GATE)
    if probed:
        return probed[0], 0.0, probed[1]
    if node.op in GATE_ACT_OPS:
        kind = node.op
        if kind == "gelu" and node.attrs.get("approximate", "none") == "tanh":
            kind = "gelu_tanh"
        return kind, float(node.attrs.get("threshold", 0.0)), node.inputs[0]
    return None


def _up_side(node: Node):
    """P, relu(P) or a probed up activation of P (gpt-oss's clip(P, ±7) + 1) -> (up act, P)."""
    if node.op == "relu":
        return "relu", node.inputs[0]
    probed = classify_probed(node, PROBED_UP)
    return probed if probed else ("identity", node)


def _hidden_rms(node: Node):
    """An RMS norm of the product before the down projection (BitNet's ffn_sub_norm): h · rsqrt(mean(h²) + eps)
    [· @w], the factors in any order, the inverse root as rsqrt, reciprocal(sqrt) or a division by sqrt -> (h, w
    weight node or None, eps), else None."""
    for r in mul_leaves(node):
        found = inverse_rms(r)
        if found is None:
            continue
        h, eps = found
        leaves = mul_leaves(node, stop=h)   # the product h is a mul itself: a factor here, not flattened
        if len(leaves) not in (2, 3) or not any(_same(leaf, r) for leaf in leaves):
            continue
        rest = [leaf for leaf in leaves if not _same(leaf, r)]
        if not any(leaf is h for leaf in rest) or h.op != "mul":
            continue
        weights = [leaf for leaf in rest if leaf is not h]
        if len(weights) == len(rest) - 1 and all(not isinstance(w, tuple) and w.op == "weight"
                                                 and w.shape == (h.shape[-1],) for w in weights):
            return h, (weights[0] if weights else None), eps
    return None


def _same(a, b) -> bool:
    """One factor of `match.mul_leaves` (a node, or a ("1/", node) pair) is the other."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        return isinstance(a, tuple) and isinstance(b, tuple) and a[1] is b[1]
    return a is b


def _sides(node: Node, gate_side):
    """For down(g ⊙ u, @Wd[, @bd]) or down(rms_norm(g ⊙ u), ...), each operand order whose g `gate_side`
    recognises: (g, what gate_side gave, u, u's activation, u's projection, Wd, bd or None, the hidden norm
    (`_hidden_rms`) or None)."""
    down = _projection(node)
    if down is None:
        return
    product, w_down, b_down = down
    norm = _hidden_rms(product) if product.op in ("mul", "div", "cast") else None
    product = norm[0] if norm else product
    if product.op != "mul":
        return
    for gate_node, up_node in commuted(product):
        gate = gate_side(gate_node)
        if gate is not None:
            yield (gate_node, gate, up_node, *_up_side(up_node), w_down, b_down, norm)


def _match(node: Node):
    for gate_node, gate, up_node, up_act, up_proj, w_down, b_down, norm in _sides(node, _gate_side):
        gate_act, threshold, gate_proj = gate
        base = {"gate_act": gate_act, "threshold": threshold, "up_act": up_act, "w_down": w_down, "b_down": b_down,
                "locs": (gate_node.loc, up_node.loc, node.loc), "hidden_rms": norm}
        separate = _projection(gate_proj), _projection(up_proj)
        if all(separate) and separate[0][0] is separate[1][0]:
            (x, w_gate, b_gate), (_, w_up, b_up) = separate
            if w_gate.shape == w_up.shape and w_down.shape[1] == w_gate.shape[0]:
                return {**base, "x": x, "weights": (w_gate, w_up), "biases": (b_gate, b_up), "fused": False}
        halves = _fused_half(gate_proj), _fused_half(up_proj)
        if all(halves) and halves[0][0] is halves[1][0]:
            x, w_gate_up, b_gate_up = _projection(halves[0][0])
            n = w_gate_up.shape[0] // 2
            starts = {halves[0][1], halves[1][1]}
            if starts == {0, n} and gate_proj.shape[-1] == n == w_down.shape[1]:
                return {**base, "x": x, "weights": (w_gate_up,), "biases": (b_gate_up,), "fused": True,
                        "gate_first": halves[0][1] == 0}
    return None


def _expert(b: dict) -> int:
    """The expert index of a block: from a per-expert weight name (@W.e3) or module path (experts.3), else -1."""
    for w in (*b["weights"], b["w_down"]):
        found = _EXPERT_WEIGHT.search(w.attrs["name"])
        if found:
            return int(found.group(1))
    found = _EXPERT_MODULE.search(common_module(*b["locs"]))
    return int(found.group(1)) if found else -1


def _location(b: dict, fallback: str) -> str:
    loc = common_module(*b["locs"]) or fallback
    expert = _expert(b)
    if expert >= 0 and not _EXPERT_MODULE.search(loc):
        loc = f"{loc}.{expert}"  # batched expert weights: one module for all experts, name this one
    return loc


def _zero_bias(w: Node) -> Node:
    return derived_weight(f"{w.attrs['name']}.zero_bias", lambda: np.zeros(w.shape[0], dtype=np.float32))


def _build(node: Node, b: dict) -> Node:
    attrs = {"gate_act": b["gate_act"], "up_act": b["up_act"], "fused": b["fused"]}
    if b["gate_act"] == "fatrelu":
        attrs["threshold"] = b["threshold"]
    if b["fused"]:
        attrs["gate_first"] = b["gate_first"]
    expert = _expert(b)
    if expert >= 0:
        attrs["expert"] = expert
    biases = ()
    if any(bias is not None for bias in b["biases"]):
        attrs["bias"] = True
        biases = tuple(bias if bias is not None else _zero_bias(w) for bias, w in zip(b["biases"], b["weights"]))
    loc = _location(b, node.loc)
    w_down = b["w_down"]
    if b["hidden_rms"] is not None:   # the norm's eps an attribute, its weight folded into Wd's columns
        _, w_norm, attrs["hidden_rms_eps"] = b["hidden_rms"]
        if w_norm is not None:
            w_down = derived_weight(f"{w_down.attrs['name']}.normed", lambda: weight_array(b["w_down"])
                                    * weight_array(w_norm)[None, :].astype(np.float32))
    block = Node("gated_mlp", (b["x"], *b["weights"], w_down, *biases), attrs, node.type, loc)
    if b["b_down"] is None:
        return block
    return Node("add", (block, b["b_down"]), {}, node.type, loc)


def _pattern_of(b: dict) -> str:
    return pattern_name(b["gate_act"], b["up_act"]) + ("-fused" if b["fused"] else "") + \
        ("-normed" if b["hidden_rms"] is not None else "")


RULES = [Rule("gated-mlp", "linear(act(linear(x,@Wg)) ⊙ up_act(linear(x,@Wu)), @Wd) -> gated_mlp(x,@Wg,@Wu,@Wd)",
              _match, _build)]


def _plain_mlp(node: Node) -> Node | None:
    """down(act(P(x, @W1)), @W2) with a pointwise activation: a non-gated (GPT-2 style) MLP -> its first linear."""
    down = _projection(node)
    if down and down[0].op in GATE_ACT_OPS:
        first = down[0].inputs[0]
        return first if _projection(first) else None
    return None


def plain_as_gated(node: Node) -> tuple[Node, Node | None] | None:
    """down(act(P(x, @W1[, @b1])), @W2[, @b2]) with a gate activation of the table (GPT-2's GELU, Falcon's, OPT's
    ReLU) -> the same block as a gated_mlp whose up factor is the constant 1 (`unit`, its weight input the gate's
    own rows, nothing more stored), and the down bias to add after it (None without one); None for anything else.
    Threshold mode calibrates and skips such a block like a gated one; exact mode takes the ReLU-family ones
    (sparsify_exact.py)."""
    down = _projection(node)
    gate = _gate_side(down[0]) if down else None
    first = _projection(gate[2]) if gate else None
    if first is None:
        return None
    (x, w1, b1), (kind, threshold, _) = first, gate
    biases = (b1, b1) if b1 is not None else ()   # the up's bias too: the same [W1 | b1] rows
    attrs = {"gate_act": kind, "up_act": "unit", "fused": False, "bias": bool(biases),
             **({"threshold": threshold} if kind == "fatrelu" else {})}
    gated = Node("gated_mlp", (x, w1, w1, down[1], *biases), attrs, node.type,
                 common_module(gate[2].loc, node.loc) or node.loc)
    return gated, down[2]


def _spell(node: Node, depth: int = 4) -> str:
    """A short spelling of a subgraph for the report: P a projection, x another value, … what lies deeper."""
    if node.op == "linear":
        return "P"
    if node.op == "constant" and np.asarray(node.attrs["value"]).size == 1:
        return f"{float(np.asarray(node.attrs['value']).reshape(-1)[0]):g}"
    if node.op in ("input", "weight") or not node.inputs:
        return "x"
    if depth == 0:
        return "…"
    return f"{node.op}({', '.join(_spell(i, depth - 1) for i in node.inputs)})"


AFFINE_OPS = ("mul", "add", "sub", "div", "neg", "cast")   # f of only these and numbers is linear: no activation


def _unmatched_activation(node: Node) -> Node | None:
    """down(f(P(x))) where f is a nonlinear pointwise function of P alone (every value it reads is P, a number — a
    constant or size-1 weight, or one computed from them — or another value of f's own shape built the same way) but
    no activation of the table (Apertus's xIELU, with its learned scalars), P widening its input as an MLP's first
    projection does (Gemma 3n's AltUp router, tanh(P(x)) of 4 values, is no MLP): a plain MLP whose activation was
    not recognised -> f's output."""
    down = _projection(node)
    if down is None or down[0].op in GATE_ACT_OPS or _projection(down[0]):
        return None
    h = down[0]
    projections, ops = {}, set()

    def number(n: Node, depth: int) -> bool:
        if not all(isinstance(dim, int) and dim == 1 for dim in n.shape):   # a symbolic dim: not one value
            return False
        return n.op in ("constant", "weight") or depth > 0 and bool(n.inputs) and all(
            number(i, depth - 1) for i in n.inputs)

    def pointwise(n: Node, depth: int) -> bool:
        if _projection(n) and n.shape == h.shape:
            projections[id(n)] = n
            return True
        if number(n, 8):
            return True
        ops.add(n.op)
        return depth > 0 and n.shape == h.shape and bool(n.inputs) and all(pointwise(i, depth - 1) for i in n.inputs)

    if not pointwise(h, 8) or len(projections) != 1 or ops <= set(AFFINE_OPS):
        return None
    (first,) = projections.values()
    width, inputs = h.shape[-1], first.inputs[0].shape[-1]
    return h if isinstance(width, int) and isinstance(inputs, int) and width > inputs else None


def _reaches(node: Node, target: Node, depth: int = 6) -> bool:
    """A projection of `target` lies within `depth` ops above node."""
    if node.op == "linear" and node.inputs[0] is target:
        return True
    return depth > 0 and any(_reaches(i, target, depth - 1) for i in node.inputs)


CUTOFF_BASES = {"gelu_tanh_relu": "geglu"}  # the pattern a cut gate's activation names (others: `pattern_name`'s)


def cutoff_pattern(gate_act: str, up_act: str) -> str:
    """`geglu-cutoff` for Gemma 3n's gelu_tanh(relu(P - c)) ⊙ u, `reglu-cutoff` for relu(P - c) ⊙ u, ..."""
    return f"{CUTOFF_BASES.get(gate_act) or pattern_name(gate_act, up_act)}-cutoff"


def cutoff_block(node: Node):
    """down(act(P(x, @Wg) - c) ⊙ up_act(P(x, @Wu))[, @bd]) with c per token and act exactly zero below
    (`classify_shifted`), no gate/up bias -> bindings (x, gate: the activated gate node, weights, activations,
    pattern), else None."""
    for gate_node, shifted, up_node, up_act, up_proj, w_down, b_down, norm in _sides(node, classify_shifted):
        gate_act, threshold, p, _ = shifted
        gate, up = _projection(p), _projection(up_proj)
        if (norm is None and gate and up and gate[0] is up[0] and gate[2] is None and up[2] is None
                and gate[1].shape == up[1].shape and w_down.shape[1] == gate[1].shape[0]):
            return {"x": gate[0], "gate": gate_node, "w_gate": gate[1], "w_up": up[1], "w_down": w_down,
                    "b_down": b_down, "gate_act": gate_act, "threshold": threshold, "up_act": up_act,
                    "pattern": cutoff_pattern(gate_act, up_act),
                    "location": common_module(gate_node.loc, up_node.loc, node.loc) or node.loc}
    return None


def _unmatched_gate(node: Node) -> Node | None:
    """down(g ⊙ P(x)) where g also reads a projection of x but is no activation the table knows (Gemma-3n's
    per-token statistical cutoff gelu(relu(P - mean - z·std))): a gated MLP whose gate was not recognised."""
    down = _projection(node)
    if down is None or down[0].op != "mul":
        return None
    for gate, up in commuted(down[0]):
        up_proj = _up_side(up)[1]
        half = _fused_half(up_proj)
        up_proj = half[0] if half else up_proj
        known = _gate_side(gate)  # an activation of a projection: recognised (the block failed on shapes)
        if known and (_projection(known[2]) or _fused_half(known[2])):
            continue
        if _projection(up_proj) and _reaches(gate, up_proj.inputs[0]):
            return gate
    return None


@dataclass(frozen=True)
class DetectGatedMLP(Pass):
    name = "detect-gated-mlp"

    def run(self, graph: Graph) -> Graph:
        for node in graph.nodes:
            bound = _match(node)
            if bound is not None:
                # per-pattern counts (the rule itself records the total as "gated-mlp")
                record(_pattern_of(bound))
                if _expert(bound) >= 0:
                    record("moe-expert")
                if bound["b_down"] is not None or any(b is not None for b in bound["biases"]):
                    record("biased")
                continue
            cutoff = cutoff_block(node)
            if cutoff is not None:
                record(cutoff["pattern"])  # sparsify-exact rewrites it and gives its report row
                continue
            gate = _unmatched_gate(node)
            if gate is not None:
                record("unmatched-gate")
                note({"kind": "row", "location": common_module(node.loc, gate.loc) or node.loc,
                      "pattern": "unmatched-gate", "mode": "dense", "n_ff": int(gate.shape[-1]), "gate": _spell(gate),
                      "reason": f"the gate {_spell(gate)} is no activation of the table (ir/activations.py)"})
                continue
            activation = _unmatched_activation(node)
            if activation is not None:
                record("unmatched-activation")
                note({"kind": "row", "location": common_module(node.loc, activation.loc) or node.loc,
                      "pattern": "unmatched-activation", "mode": "dense", "n_ff": int(activation.shape[-1]),
                      "activation": _spell(activation), "reason": f"non-gated MLP whose activation "
                      f"{_spell(activation)} is no activation of the table (ir/activations.py): it runs dense"})
                continue
            first = _plain_mlp(node)
            if first is not None:
                record("plain-mlp")
                if node.inputs[0].op in ZERO_BELOW:
                    continue  # non-gated but exactly sparse: sparsify-exact takes it (and its report row)
                note({"kind": "row", "location": common_module(node.loc, node.inputs[0].loc) or node.loc,
                      "pattern": "plain-mlp", "mode": "dense", "n_ff": int(first.shape[-1]),
                      "reason": f"non-gated {node.inputs[0].op} MLP, not exactly sparse: mode='threshold' "
                                "(calibrated) skips its rows"})
        return apply_rules(graph, RULES)
