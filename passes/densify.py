"""densify: the inverse of the sparsify passes, for building a sparse artifact's dense twin (`actsparse bench`).

    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t, *extra){mode=v} -> gated_mlp(x, @Wg, @Wu, @Wd){v.dense_attrs(attrs)}
                                                             (@Wd = @Wd.t transposed back, extra inputs dropped;
                                                              a "columns" variant's @Wg.t / @Wu.t too)
    routed_moe(...){mode=exact}                          -> routed_moe(...){mode=dense}   (still routed: the twin
                                                             differs in the neuron sparsity only)

The gated_mlp attrs are the variant's (`dense_attrs` of its entry in ir/sparse_variants.py): the same
activations, every neuron computed (exact mode: the same math; lossy modes: their dense original). A quantized
@Wd.t (passes/quantize.py) is transposed back through its values and quantized again in its layout (groups now
along n_ff): the twin is then close, not equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Node, rewrite, weight_node, weight_value
from ..ir.arrays import aligned_contiguous
from ..ir.graph import quantized_weight_node
from ..ir.quant import quantize
from ..ir.sparse_variants import variant_of
from .base import Pass, record


@dataclass(frozen=True)
class Densify(Pass):
    name = "densify"

    def run(self, graph: Graph) -> Graph:
        new_weights: dict[str, np.ndarray] = {}

        def visit(node: Node) -> Node | None:
            if node.op == "routed_moe" and node.attrs["mode"] != "dense":
                record("routed-moe")
                return node.replace(attrs={**node.attrs, "mode": "dense"})
            if node.op != "sparse_gated_mlp":
                return None
            x, w_gate, w_up, w_down_t = node.inputs[:4]
            variant = variant_of(node.attrs)
            if variant.gate_up_layout == "columns":   # gate/up stored [d, n_ff]: back to a neuron per row
                w_gate, w_up = (transposed(w) for w in (w_gate, w_up))
            name = w_down_t.attrs["name"]
            layout = w_down_t.attrs.get("layout", "dense")
            if layout != "dense":
                qw = quantize(weight_value(graph, w_down_t).T, layout)
                new_weights.setdefault(f"{name}.back", qw.blob)
                down = quantized_weight_node(f"{name}.back", qw)
            else:
                down = transposed(w_down_t)
            attrs = variant.dense_attrs(dict(node.attrs))
            record(node.attrs.get("pattern", "gated-mlp"))
            return Node("gated_mlp", (x, w_gate, w_up, down), attrs, node.type, node.loc)

        def transposed(w: Node) -> Node:
            name = w.attrs["name"]
            name = name[:-2] if name.endswith(".t") else f"{name}.t"  # transposed back
            return weight_node(name, new_weights.setdefault(name, aligned_contiguous(graph.weights[w.attrs["name"]].T)))

        return rewrite(graph, visit, new_weights)
