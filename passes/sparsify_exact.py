"""sparsify-exact: rewrite ReLU-family `gated_mlp`s into `sparse_gated_mlp` with compile-time weight layouts.

Matches `gated_mlp` whose gate activation is exactly zero on inactive neurons — ReGLU relu(g)·u, dReLU
relu(g)·relu(u), FATReLU where(g > t, g, 0)·u — and produces

    gated_mlp(x, @Wg, @Wu, @Wd) -> sparse_gated_mlp(x, @Wg, @Wu, @Wd.t){mode='exact'}

where `@Wd.t` is the down projection stored transposed, [n_ff, d]: one neuron's output weights are one
contiguous row, so the kernel streams only active rows (ProSparse's fused gate + sparse up/down). A fused
gate_up weight is split into `@W.gate` and `@W.up`. The result is lossless: a neuron with act(g) = 0 adds 0.

Gate/up biases (`bias=True`) have no place in the kernel, so they ride in the weights, in homogeneous
coordinates: x·Wᵀ + b = [x, 1]·[W | b]ᵀ. The kernel reads x and its output at one width, so the down rows get
a zero column too and the extra output column (always 0) is cut off:

    gated_mlp(x, @Wg, @Wu, @Wd, @bg, @bu)
        -> slice(sparse_gated_mlp(concat(x, 1), @Wg.aug, @Wu.aug, @Wd.t.aug), last axis, 0:d)

with @W.aug = [W | b] and @Wd.t.aug = [Wdᵀ | 0] ([n_ff, d+1]): the same activations, so the same zeros (exact).

Blocks that are not ReLU-family (SwiGLU, GeGLU) cannot be made exactly sparse. With `on_unsupported="error"`
(mode "exact") that is an error naming the layer and the ways out; with "keep-dense" (mode "auto") they stay
`gated_mlp` and the report says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModeError
from ..ir import Graph, Node, TensorType, rewrite, weight_node
from ..ir.mlp import is_exactly_sparse, pattern_name, split_fused
from .base import Pass, note, record


@dataclass(frozen=True)
class SparsifyExact(Pass):
    name = "sparsify-exact"
    on_unsupported: str = "error"  # "error" | "keep-dense"

    def __post_init__(self):
        if self.on_unsupported not in ("error", "keep-dense"):
            raise ValueError(f"on_unsupported must be 'error' or 'keep-dense', not {self.on_unsupported!r}")

    def run(self, graph: Graph) -> Graph:
        new_weights: dict[str, np.ndarray] = {}

        def visit(node: Node) -> Node | None:
            if node.op != "gated_mlp":
                return None
            pattern = pattern_name(node.attrs["gate_act"], node.attrs["up_act"])
            if not is_exactly_sparse(node.attrs["gate_act"]):
                return self._unsupported(node, pattern)
            record(pattern)
            return _sparsify(node, pattern, graph, new_weights)

        return rewrite(graph, visit, new_weights)

    def _unsupported(self, node: Node, pattern: str) -> None:
        if self.on_unsupported == "error":
            raise ModeError(
                f"mode='exact' needs a ReLU-family MLP, but {node.loc or 'a gated MLP'} is {pattern} "
                f"(act={node.attrs['gate_act']}), whose inactive neurons are not exactly zero. Ways out: "
                "actsparse.relufy(model) then a recovery fine-tune (actsparse.recipes), mode='threshold' with "
                "calibration data, mode='predictor', or mode='auto' to keep it dense.")
        record("kept-dense")
        note({"location": node.loc, "pattern": pattern, "mode": "dense",
              "reason": f"{pattern} is not exactly sparse (act={node.attrs['gate_act']}); "
                        "exact mode needs ReLU-family"})
        return None


def _sparsify(node: Node, pattern: str, graph: Graph, new_weights: dict) -> Node:
    attrs = node.attrs
    if attrs["fused"]:
        x, w_gate_up, w_down = node.inputs[:3]
        base = w_gate_up.attrs["name"]
        gate, up = split_fused(graph.weights[base], attrs["gate_first"])
        w_gate = _new_weight(f"{base}.gate", gate, new_weights)
        w_up = _new_weight(f"{base}.up", up, new_weights)
    else:
        x, w_gate, w_up, w_down = node.inputs[:4]
    down_name = w_down.attrs["name"]
    w_down_t = _new_weight(f"{down_name}.t", graph.weights[down_name].T, new_weights)
    sparse_attrs = {"gate_act": attrs["gate_act"], "up_act": attrs["up_act"], "mode": "exact", "pattern": pattern}
    if attrs["gate_act"] == "fatrelu":
        sparse_attrs["threshold"] = attrs["threshold"]
    if attrs.get("expert", -1) >= 0:
        sparse_attrs["expert"] = attrs["expert"]
    if not attrs.get("bias"):
        return Node("sparse_gated_mlp", (x, w_gate, w_up, w_down_t), sparse_attrs, node.type, node.loc)
    inputs = _homogeneous(node, x, w_gate, w_up, w_down_t, graph, new_weights)
    last, d = node.type.rank - 1, node.shape[-1]
    wide = Node("sparse_gated_mlp", inputs, sparse_attrs, TensorType((*node.shape[:-1], d + 1), node.dtype), node.loc)
    return Node("slice", (wide,), {"axis": last, "start": 0, "end": d, "step": 1}, node.type, node.loc)


def _homogeneous(node: Node, x: Node, w_gate: Node, w_up: Node, w_down_t: Node, graph: Graph, new_weights: dict):
    """Fold the gate/up biases into the weights: [x, 1], [W | b] for gate and up, [Wdᵀ | 0] for down."""
    arrays = {**graph.weights, **new_weights}
    if node.attrs["fused"]:
        b_gate, b_up = split_fused(arrays[node.inputs[3].attrs["name"]], node.attrs["gate_first"])
    else:
        b_gate, b_up = (arrays[b.attrs["name"]] for b in node.inputs[4:6])
    down_t = arrays[w_down_t.attrs["name"]]
    columns = ((w_gate, b_gate), (w_up, b_up), (w_down_t, np.zeros(down_t.shape[0], down_t.dtype)))
    augmented = [_new_weight(f"{w.attrs['name']}.aug", np.concatenate([arrays[w.attrs["name"]], b[:, None]], 1),
                             new_weights) for w, b in columns]
    ones = Node("full", (), {"shape": (*x.shape[:-1], 1), "value": 1.0}, TensorType((*x.shape[:-1], 1), x.dtype),
                node.loc)
    x_aug = Node("concat", (x, ones), {"axis": x.type.rank - 1},
                 TensorType((*x.shape[:-1], x.shape[-1] + 1), x.dtype), node.loc)
    return (x_aug, *augmented)


def _new_weight(name: str, array: np.ndarray, new_weights: dict) -> Node:
    array = new_weights.setdefault(name, np.ascontiguousarray(array))
    return weight_node(name, array)
