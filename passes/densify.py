"""densify: the inverse of the sparsify passes, for building a sparse artifact's dense twin (`actsparse bench`).

    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t, *extra){mode=v} -> gated_mlp(x, @Wg, @Wu, @Wd){v.dense_attrs(attrs)}
                                                             (@Wd = @Wd.t transposed back, extra inputs dropped;
                                                              a "columns" variant's @Wg.t / @Wu.t too)

The gated_mlp attrs are the variant's (`dense_attrs` of its entry in ir/sparse_variants.py): the same
activations, every neuron computed (exact mode: the same math; lossy modes: their dense original).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Node, rewrite, weight_node
from ..ir.sparse_variants import variant_of
from .base import Pass, record


@dataclass(frozen=True)
class Densify(Pass):
    name = "densify"

    def run(self, graph: Graph) -> Graph:
        new_weights: dict[str, np.ndarray] = {}

        def visit(node: Node) -> Node | None:
            if node.op != "sparse_gated_mlp":
                return None
            x, w_gate, w_up, w_down_t = node.inputs[:4]
            variant = variant_of(node.attrs)
            if variant.gate_up_layout == "columns":   # gate/up stored [d, n_ff]: back to a neuron per row
                w_gate, w_up = (transposed(w) for w in (w_gate, w_up))
            attrs = variant.dense_attrs(dict(node.attrs))
            record(node.attrs.get("pattern", "gated-mlp"))
            return Node("gated_mlp", (x, w_gate, w_up, transposed(w_down_t)), attrs, node.type, node.loc)

        def transposed(w: Node) -> Node:
            name = w.attrs["name"]
            name = name[:-2] if name.endswith(".t") else f"{name}.t"
            array = new_weights.setdefault(name, np.ascontiguousarray(graph.weights[w.attrs["name"]].T))
            return weight_node(name, array)

        return rewrite(graph, visit, new_weights)
