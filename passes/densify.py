"""densify: the inverse of sparsify-exact, for building a sparse artifact's dense twin (`actsparse bench`).

    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t) -> gated_mlp(x, @Wg, @Wu, @Wd)     (@Wd = @Wd.t transposed back)

Lossless: the same math, computed for every neuron.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Node, rewrite, weight_node
from ..ir.arrays import aligned_contiguous
from .base import Pass, record


@dataclass(frozen=True)
class Densify(Pass):
    name = "densify"

    def run(self, graph: Graph) -> Graph:
        new_weights: dict[str, np.ndarray] = {}

        def visit(node: Node) -> Node | None:
            if node.op != "sparse_gated_mlp":
                return None
            x, w_gate, w_up, w_down_t = node.inputs
            name = w_down_t.attrs["name"]
            name = name[:-2] if name.endswith(".t") else f"{name}.t"  # transposed back
            array = new_weights.setdefault(name, aligned_contiguous(graph.weights[w_down_t.attrs["name"]].T))
            attrs = {"gate_act": node.attrs["gate_act"], "up_act": node.attrs["up_act"], "fused": False}
            if node.attrs["gate_act"] == "fatrelu":
                attrs["threshold"] = node.attrs["threshold"]
            if node.attrs.get("expert", -1) >= 0:
                attrs["expert"] = node.attrs["expert"]
            record(node.attrs.get("pattern", "gated-mlp"))
            return Node("gated_mlp", (x, w_gate, w_up, weight_node(name, array)), attrs, node.type, node.loc)

        return rewrite(graph, visit, new_weights)
