"""route-moe: a mixture-of-experts layer whose every expert runs on every token, weighted, becomes one `routed_moe`
(ir/moe.py), whose kernel runs each expert only on the tokens routed to it.

Matches, by what it computes (after detection and the sparsify passes), a sum with one term per expert:

    add(... mul(B_e, R_e) ...)      B_e = gated_mlp(x, ...) | sparse_gated_mlp{mode=exact}(x, ...)
                                          | sparse_gated_mlp{mode=threshold, criterion=gate}(x, ...)
                                          | sparse_gated_mlp{mode=neuron-threshold}(x, ..., @neuron_thr, R_e)
                                          | sparse_gated_mlp{mode=input}(x, @Wg.t, @Wu.t, @Wd.t, @x_thr, @h_thr)
                                          (| add(gated_mlp, @b_down_e): gpt-oss adds its down bias after the block)
                                    R_e = sum(mul(V, cast(eq(I, e))), axes=[-1], keepdim=True)     for e = 0..E-1
                                    I = topk{output=indices}(scores[..., E]) | argmax(scores[..., E])
                                        | concat(such, last axis),  V [..., k]
    -> add(routed_moe(x, @Wg.routed, @Wu.routed, @Wd.t.routed, V, I[, @bg, @bu, @bd | @thr | @x_thr, @h_thr])
           {experts=E, mode, bias}, the other terms)

(either operand order of each mul / eq; casts of R_e or of the mask are looked through). This is the form
frontends/moe.py exports transformers' MoE layers in, and the one a hand-written "weight each expert by its
routing weight" module has. An exact block whose gate / up biases sparsify-exact folded into its weights
(homogeneous coordinates: biased plain relu / relu² MLPs; Nemotron-H's unbiased ones need none) is
B_e = slice(sparse_gated_mlp(concat(x, 1), ...), 0:d); those experts route on concat(x, 1), the routed output sliced
back to d (`routed-augmented`). Why it is the same value: I comes from a top-k (or argmaxes) over E scores, so every
index lies in [0, E), and the terms cover every e exactly once; then Σ_e B_e(x)·R_e = Σ_j V[:, j]·B_{I[:, j]}(x),
which is what `routed_moe` computes (wherever the experts' outputs are finite: the sum multiplies an unchosen
expert by 0).

The experts' weights are stacked along the rows in the sparse kernels' layout (gate / up [E·n, d], down transposed
[E·n, d_out]; a fused gate_up is split). Only blocks of one kind route: all dense `gated_mlp` (mode dense), all
`sparse_gated_mlp{mode=exact}` (mode exact) or all threshold experts, `sparse_gated_mlp{mode=neuron-threshold}` or
`{mode=threshold, criterion=gate}` (mode threshold: each expert's neurons' cuts stacked as the thresholds input, [2,
E·n], one t repeated for an expert of one t (no cut on h); a neuron-threshold expert's scale must be its own R_e, which
the routed kernel applies as the token's routing weight; a FATReLU gate at its t is relu there, as |relu(g)| > t iff
fatrelu(g, t) is kept) or all input-sparse experts without top-k, `sparse_gated_mlp{mode=input}` (mode input: each
expert's gate / up [d, n] stacked [E·d, n], its x_thr and h_thr stacked; their x one node, a rotated method's turn
shared by the layer, passes/routed_input.py), same activations, width and d_out = d. Biased experts (gpt-oss: gate and
up biases inside the block, a down bias added after it) route in mode dense with their biases stacked the same way
(`bias=True`; an expert without one of them gets zeros); other sparse variants (threshold by |act(g)·u|, predictor,
top-k input), exact experts with a down bias and a mix stay in the all-experts form, and the pass says so in its
statistics (`kept-all-experts`) and a note that names the cause.

Statistics: `routed-moe` (layers rewritten), `routed-experts` (experts in them), `routed-biased` (biased layers among
them), `routed-thresholds` (layers of threshold experts among them), `routed-input` (layers of input experts),
`routed-augmented` (layers of experts in homogeneous coordinates), `kept-all-experts`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..ir import Graph, Node, TensorType
from ..ir.activations import reads_input
from ..ir.mlp import has_hidden_norm, is_exactly_sparse, pattern_name, split_fused
from ..ir.moe import BIASED_MODES, ROUTED_MODES, routed_kernel_takes, routed_reason
from ..ir.ops import op_def
from .base import Pass, Rule, apply_rules, derived_weight, note, record, weight_array
from .match import strip_casts

BLOCKS = ("gated_mlp", "sparse_gated_mlp")


def _expert_id(eq: Node, index: Node) -> int | None:
    """e when `eq` compares the top-k indices `index` with the integer constant e."""
    if eq.op != "eq":
        return None
    a, b = eq.inputs
    const = b if a is index else a if b is index else None
    value = None if const is None or const.op != "constant" else const.attrs["value"]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _routing(r: Node) -> tuple[Node, Node, int] | None:
    """(V, I, e) when r = sum(mul(V, cast(eq(I, e))), axes=[last], keepdim=True) with I a top-k's indices."""
    r = strip_casts(r)
    if r.op != "sum" or not r.attrs.get("keepdim") or len(r.attrs["axes"]) != 1:
        return None
    product = r.inputs[0]
    if r.attrs["axes"][0] not in (-1, product.type.rank - 1) or product.op != "mul":
        return None
    for v, mask in (product.inputs, product.inputs[::-1]):
        mask = strip_casts(mask)
        if mask.op != "eq":
            continue
        for index in mask.inputs:
            if _experts(index) is not None and v is not index:
                e = _expert_id(mask, index)
                if e is not None and v.shape == index.shape and v.dtype.startswith("f"):
                    return v, index, e
    return None


def _term(node: Node) -> tuple[Node, Node, Node, int] | None:
    """(block, V, I, e) for a leaf mul(B_e, R_e)."""
    if node.op != "mul":
        return None
    for block, r in (node.inputs, node.inputs[::-1]):
        block = _augmented(block) or _unbiased(block)
        if block.op in BLOCKS and not has_hidden_norm(block):   # the routed kernel applies no hidden norm
            routing = _routing(r)
            if routing is not None:
                return block, *routing
    return None


def _routing_weight(leaf: Node) -> Node:
    """R_e of term `leaf` = mul(B_e, R_e)."""
    return next(r for r in leaf.inputs[::-1] if _routing(r) is not None)


def with_routing_scale(leaf: Node) -> Node | None:
    """A term mul(B_e, R_e) whose B_e is a `neuron-threshold` block still without its scale -> the same term with its
    R_e as B_e's scale (sparsify-threshold builds the block; the term, rebuilt after it, holds the R_e of the graph
    being built), else None."""
    term = _term(leaf)
    if term is None or not any(i is term[0] for i in leaf.inputs):
        return None
    block = term[0]
    if block.attrs.get("mode") != "neuron-threshold" or len(block.inputs) != 5:
        return None
    scaled = block.replace(inputs=(*block.inputs, _routing_weight(leaf)))
    return leaf.replace(inputs=tuple(scaled if i is block else i for i in leaf.inputs))


def _augmented(node: Node) -> Node | None:
    """The exact block of slice(sparse_gated_mlp{exact}(concat(x, 1), ...), last axis, 0:d): biases folded into its
    weights in homogeneous coordinates (sparsify-exact; a plain relu / relu² MLP with a bias is one). Its
    experts route as they are, on concat(x, 1), and the routed output is sliced back."""
    if node.op != "slice" or node.attrs.get("start", 0) != 0 or node.attrs.get("step", 1) != 1:
        return None
    block = node.inputs[0]
    if block.op != "sparse_gated_mlp" or block.attrs.get("mode") != "exact" or block.inputs[0].op != "concat":
        return None
    x, ones = block.inputs[0].inputs
    wide = block.inputs[0].type.rank - 1
    if node.attrs["axis"] % node.type.rank != wide or node.attrs["end"] != x.shape[-1] or ones.shape[-1] != 1:
        return None
    return block


def _is_augmented(leaf: Node) -> bool:
    """Whether term `leaf` weights an augmented block (`_augmented`), not a block whose input merely is a concat."""
    return any(_augmented(i) is not None for i in leaf.inputs)


def _expert_input(leaf: Node, block: Node) -> Node:
    """What the expert of term `leaf` reads: its block's input, or x of an augmented block's concat(x, 1) (a concat
    per expert: the experts of one layer share x)."""
    return block.inputs[0].inputs[0] if _is_augmented(leaf) else block.inputs[0]


def _unbiased(node: Node) -> Node:
    """The block of add(block, bias weight): an expert's down-projection bias (gpt-oss's) is added after its block."""
    if node.op == "add":
        for block, bias in (node.inputs, node.inputs[::-1]):
            if block.op in BLOCKS and bias.op == "weight":
                return block
    return node


def _down_bias(leaf: Node) -> Node | None:
    """The down-bias weight added after the block of term `leaf`, if any."""
    block = next(i for i in leaf.inputs if (_augmented(i) or _unbiased(i)).op in BLOCKS)
    if block.op in BLOCKS or _augmented(block) is not None:
        return None
    return next(i for i in block.inputs if i.op == "weight")


def _biased(leaf: Node) -> bool:
    """Whether the expert of term `leaf` has a bias: inside its block, or added after it."""
    return _down_bias(leaf) is not None or bool(_term(leaf)[0].attrs.get("bias"))


def _leaves(root: Node) -> list[Node]:
    leaves, stack = [], [root]
    while stack:
        node = stack.pop()
        if node.op == "add" and node.shape == root.shape:
            stack.extend(node.inputs[::-1])
        else:
            leaves.append(node)
    return leaves


def _experts(index: Node) -> int | None:
    """E when every value of `index` is an expert id in [0, E): a top-k's indices or an argmax over E scores, or a
    concat of such along the last axis (PhiMoE's sparsemixer: its second choice an argmax of the scores with the
    first masked); None otherwise."""
    # (argmax with its axis kept: the choices' axis, which R_e sums over)
    if (index.op == "topk" and index.attrs["output"] == "indices") or (index.op == "argmax" and
                                                                        index.attrs["keepdim"]):
        axis = index.attrs["axis"] % index.inputs[0].type.rank
        size = index.inputs[0].shape[axis]
        return size if isinstance(size, int) else None
    if index.op == "concat" and index.attrs["axis"] % index.type.rank == index.type.rank - 1:
        counts = {_experts(part) for part in index.inputs}
        return counts.pop() if len(counts) == 1 else None
    return None


class RoutedExpert(NamedTuple):
    """An expert block this pass would route as it is (a layer `_match` takes)."""
    biased: bool    # its layer's experts have biases (routed exact experts take none: `BIASED_MODES`)
    weight: Node    # its routing weight R_e ([..., 1], 0 on the tokens not routed to it): what it calibrates on
    layer: int      # its MoE layer's number: the experts sharing a budget (passes/routed_thresholds.py)
    slots: int      # k, the experts a token is routed to (its router's slots)


def routed_experts(graph: Graph) -> dict[int, RoutedExpert]:
    """id of each expert block this pass would route -> its RoutedExpert (nothing recorded)."""
    layers = [found for node in graph.nodes if node.op == "add" and (found := _match(node, quiet=True))]
    return {id(block): RoutedExpert(found["biased"], weight, k, found["v"].shape[-1]) for k, found in enumerate(layers)
            for block, weight in zip(found["blocks"], found["routing"])}


# what a routed expert a lossy mode leaves lossless runs as -> its statistic in that mode's pass
LEFT_STATS = {"exact": "exact-routed-experts", "dense": "kept-dense-routed-experts"}


def lossless_routed_experts(graph: Graph, blocks: list[Node], mode: str, exempt: list[bool] | None = None,
                            family: str | None = None, routed: dict[int, RoutedExpert] | None = None
                            ) -> list[str | None]:
    """Per block of `blocks`: what lossy `mode`'s pass leaves it to run as because this pass will route it (a lossy
    variant's experts would run all-experts: E/k times the routed reads; `ir.moe.routed_reason`): "exact" where its
    gate is exactly sparse and its layer's experts have no biases (lossless, its zero neurons skipped), else "dense";
    None where it is not left. Each left block counts in `LEFT_STATS` and gets a report note; `exempt` blocks (e.g.
    explicit thresholds) are not left, nor unbiased ones where kernel family `family`'s routed kernel takes `mode`
    (ir/moe.py's ROUTED_MODES); `routed`: `routed_experts(graph)` where the caller has it."""
    routed = routed_experts(graph) if routed is None else routed
    takes = family is not None and routed_kernel_takes(mode, family)
    left = [None if id(b) not in routed or (exempt and exempt[i]) or (takes and not routed[id(b)].biased) else
            "exact" if is_exactly_sparse(b.attrs["gate_act"]) and not routed[id(b)].biased else "dense"
            for i, b in enumerate(blocks)]
    for block, runs_as in ((b, r) for b, r in zip(blocks, left) if r):
        record(LEFT_STATS[runs_as])
        reason = (f"a routed expert with biases: {mode} mode runs it {runs_as} (the routed kernel takes biases in mode "
                  f"{', '.join(BIASED_MODES)} only)" if takes else
                  routed_reason(mode, runs_as, family if mode in ROUTED_MODES else None))
        note({"kind": f"kept-{runs_as}", "location": block.loc, "mode": runs_as, "reason": reason,
              "pattern": pattern_name(block.attrs["gate_act"], block.attrs["up_act"])})
    return left


def _match(node: Node, quiet: bool = False) -> dict | None:
    if node.op != "add":
        return None
    leaves = _leaves(node)
    groups: dict[tuple, dict[int, Node]] = {}
    for leaf in leaves:
        term = _term(leaf)
        if term is not None:
            block, v, index, e = term
            key = (id(_expert_input(leaf, block)), id(v), id(index), _is_augmented(leaf))
            groups.setdefault(key, {}).setdefault(e, leaf)
    for (_, _, _, augmented), terms in groups.items():
        block, v, index, _ = _term(next(iter(terms.values())))
        experts = _experts(index)
        if experts is not None and experts >= 2 and sorted(terms) == list(range(experts)):
            blocks = [_term(terms[e])[0] for e in range(experts)]
            kinds = {_kind(block) for block in blocks}
            biased = any(_biased(terms[e]) for e in range(experts))
            biased_exact = biased and any(kind and kind[0] not in BIASED_MODES for kind in kinds)
            # a neuron-threshold expert's scale is its own routing weight (what the routed kernel applies)
            foreign = any(b.attrs.get("mode") == "neuron-threshold" and b.inputs[5] is not _routing_weight(terms[e])
                          for e, b in enumerate(blocks))
            if (biased_exact or foreign or None in kinds or len(kinds) != 1
                    or blocks[0].shape[-1] != block.inputs[0].shape[-1]):
                if quiet:
                    return None
                record("kept-all-experts")
                why = (f"exact experts with biases: routed_moe takes biases in mode {', '.join(BIASED_MODES)} only"
                       if biased_exact else "experts of different kinds, quantized or of a sparse variant without a "
                       "routed kernel")
                note({"kind": "moe", "location": blocks[0].loc, "reason": f"{why}: every expert runs on every token"})
                return None
            return {"blocks": blocks, "kind": kinds.pop(), "x": block.inputs[0], "v": v, "index": index,
                    "experts": experts, "biased": biased, "augmented": augmented,
                    "down_biases": [_down_bias(terms[e]) for e in range(experts)],
                    "routing": [_routing_weight(terms[e]) for e in range(experts)],
                    "others": [leaf for leaf in leaves if all(leaf is not t for t in terms.values())]}
    return None


def _kind(block: Node) -> tuple | None:
    """What must agree across the experts, or None for a block no routed kernel runs."""
    a = block.attrs
    weights = block.inputs[1:5] if a.get("mode") == "neuron-threshold" else block.inputs[1:]   # (its scale: R_e)
    if any(w.op != "weight" or w.attrs.get("layout", "dense") != "dense" for w in weights):
        return None
    if block.op == "sparse_gated_mlp":
        if a.get("bias") or a.get("hidden_rms_eps") is not None:
            return None
        if (a.get("mode") == "threshold" and a.get("criterion", "gate") == "gate" and len(block.inputs) == 4
                or a.get("mode") == "neuron-threshold" and len(block.inputs) == 6):
            # the expert's thresholds go to the thresholds input (`_neuron_thresholds`); FATReLU at t is relu kept
            # above t
            gate_act = "relu" if a["gate_act"] == "fatrelu" else a["gate_act"]
            return "threshold", gate_act, a["up_act"], 0.0, a["pattern"], block.inputs[1].shape
        if a.get("mode") == "input" and len(block.inputs) == 6 and not (a.get("x_keep") or a.get("h_keep")):
            # each expert's x_thr / h_thr go to the thresholds inputs; x is the layer's (turned) x: one node
            return "input", a["gate_act"], a["up_act"], a.get("criterion", "product"), a["pattern"], \
                block.inputs[1].shape
        if a.get("mode") != "exact" or len(block.inputs) != 4:
            return None
        return "exact", a["gate_act"], a["up_act"], a.get("threshold", 0.0), a["pattern"], block.inputs[1].shape
    fused = a["fused"]
    n = (block.inputs[1].shape[0] // 2) if fused else block.inputs[1].shape[0]
    pattern = pattern_name(a["gate_act"], a["up_act"]) + ("-fused" if fused else "")
    return "dense", a["gate_act"], a["up_act"], a.get("threshold", 0.0), pattern, (n, block.inputs[1].shape[1])


def _arrays(block: Node, down_bias: Node | None) -> tuple[np.ndarray, ...]:
    """(gate [n, d], up [n, d], down transposed [n, d_out], b_gate [n], b_up [n], b_down [d_out]) of one expert;
    a bias it lacks is zeros."""
    w = [weight_array(i) for i in block.inputs[1:4 if block.op == "sparse_gated_mlp" else None]]
    if block.op == "sparse_gated_mlp":
        gate, up, down_t, biases = w[0], w[1], w[2], []
    elif block.attrs["fused"]:
        (gate, up), down_t = split_fused(w[0], block.attrs["gate_first"]), w[1].T
        biases = list(split_fused(w[2], block.attrs["gate_first"])) if block.attrs.get("bias") else []
    else:
        gate, up, down_t, biases = w[0], w[1], w[2].T, w[3:] if block.attrs.get("bias") else []
    b_gate, b_up = biases or (np.zeros(len(gate), np.float32),) * 2
    b_down = np.zeros(down_t.shape[1], np.float32) if down_bias is None else weight_array(down_bias)
    return gate, up, down_t, b_gate, b_up, b_down


def _neuron_thresholds(block: Node) -> np.ndarray:
    """A threshold expert's cuts per neuron [2, n] (float32, ir/moe.py): its neuron_thr (`neuron-threshold`; the
    gate's above a FATReLU's own t) or its one t (`threshold`, criterion gate: CATS's t, a FATReLU's t too) on the
    gate and 0 on h (no cut beyond the gate's)."""
    a, n = block.attrs, block.inputs[1].shape[0]
    own = a.get("threshold", 0.0) if a["gate_act"] == "fatrelu" or a["mode"] == "threshold" else 0.0
    if a["mode"] == "threshold":
        return np.stack([np.full(n, own, np.float32), np.zeros(n, np.float32)])
    cuts = np.array(weight_array(block.inputs[4]), np.float32)
    cuts[0] = np.maximum(cuts[0], np.float32(own))
    return cuts


def _threshold_provenance(blocks: list[Node]) -> dict:
    """What the report shows of threshold experts' calibration: their method, and per expert the sparsity each was
    calibrated to on its routed tokens (None: explicit thresholds or too few tokens, nothing calibrated)."""
    first = blocks[0].attrs
    calibrated = [b.attrs.get("calibrated_sparsity") for b in blocks]
    return {"method": first.get("method"), "expert_calibrated": tuple(
        None if c is None or c != c else round(float(c), 5) for c in calibrated),
        **({"reason": first["reason"]} if first.get("reason") else {})}


def _prefix(block: Node) -> str:
    """A name for the stacked weights: the expert's gate weight name without its expert index (`.e3` of batched
    expert weights, `experts.3` of a module per expert)."""
    name = block.inputs[1].attrs["name"]
    stripped = re.sub(r"\.e\d+(?=\.|$)", "", name)
    return stripped if stripped != name else re.sub(r"(experts)\.\d+(?=\.|$)", r"\1", name)


def _build(node: Node, b: dict) -> Node:
    blocks, x = b["blocks"], b["x"]
    mode, gate_act, up_act, threshold, pattern, _ = b["kind"]
    parts = [_arrays(block, bias) for block, bias in zip(blocks, b["down_biases"])]
    loc = re.sub(r"\.\d+$", "", blocks[0].loc)  # the experts' module (an expert's location ends in its index)
    prefix = f"{loc or _prefix(blocks[0])}.routed"
    roles = ("gate", "up", "down_t") + (("b_gate", "b_up", "b_down") if b["biased"] else ())
    stack = {"b_down": np.stack}  # one row per expert; the others are row ranges
    stacked = [derived_weight(f"{prefix}.{role}", lambda k=k, role=role: stack.get(role, np.concatenate)(
        [p[k].astype(np.float32) if k >= 3 else p[k] for p in parts])) for k, role in enumerate(roles)
        if role != "up" or reads_input(up_act)]
    if not reads_input(up_act):  # `unit` experts' up input is their gate's rows (sparsify-exact): stacked once
        stacked.insert(1, stacked[0])
    attrs = {"experts": b["experts"], "gate_act": gate_act, "up_act": up_act, "threshold": threshold, "mode": mode,
             "pattern": pattern, **({"bias": True} if b["biased"] else {})}  # unbiased: the golden IR unchanged
    if mode == "threshold":
        stacked.append(derived_weight(f"{prefix}.thresholds", lambda: np.concatenate(
            [_neuron_thresholds(block) for block in blocks], axis=1)))
        attrs.update(_threshold_provenance(blocks))
        record("routed-thresholds")
    if mode == "input":   # the kind's 4th field is the criterion (no gate threshold: input methods refuse FATReLU)
        stacked += [derived_weight(f"{prefix}.{role}", lambda k=k: np.concatenate(
            [weight_array(block.inputs[k]).astype(np.float32) for block in blocks])) for k, role in
            ((4, "x_thr"), (5, "h_thr"))]
        effective = [b.attrs.get("effective_calibrated") for b in blocks]
        attrs.update(_threshold_provenance(blocks), threshold=0.0, criterion=threshold,
                     rotation_share=blocks[0].attrs.get("rotation_share", 0.0),
                     expert_effective=tuple(None if v is None or v != v else round(float(v), 5) for v in effective))
        record("routed-input")
    routed = Node("routed_moe", (x, *stacked[:3], b["v"], b["index"], *stacked[3:]), attrs,
                  TensorType((*x.shape[:-1], blocks[0].shape[-1]), x.dtype), loc)
    record("routed-experts", b["experts"])
    if b["biased"]:
        record("routed-biased")
    out = routed
    if b["augmented"]:  # experts on concat(x, 1): their extra output column (always 0) cut off
        out = Node("slice", (routed,), {"axis": x.type.rank - 1, "start": 0, "end": x.shape[-1] - 1, "step": 1},
                   TensorType((*x.shape[:-1], x.shape[-1] - 1), x.dtype), loc)
        record("routed-augmented")
    for other in b["others"]:
        out = Node("add", (out, other), {}, op_def("add").infer([out.type, other.type], {}), node.loc)
    return out


RULES = [Rule("routed-moe", "add(mul(B_e(x), sum(mul(V, eq(topk_indices, e)))) for e < E) -> routed_moe(x, ..., V, I)",
              _match, _build)]


@dataclass(frozen=True)
class RouteMoE(Pass):
    name = "route-moe"

    def run(self, graph: Graph) -> Graph:
        return apply_rules(graph, RULES)
