"""densify: the inverse of the sparsify passes, for building a sparse artifact's dense twin (`actsparse bench`).

    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t, *extra){mode=v} -> sparse_gated_mlp(x, @Wg, @Wu, @Wd.t){mode='dense'}
                                                             (quantized: gated_mlp(x, @Wg, @Wu, @Wd), @Wd
                                                              quantized again from @Wd.t)
                                                             (extra inputs dropped; a "columns" variant's
                                                              @Wg.t / @Wu.t transposed back to a neuron per row;
                                                              quantized ones quantized again in their layout)
    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t, a){mode='cutoff'} -> sparse_gated_mlp(x, @Wg, @Wu, @Wd.t, a)
                                                             {mode='cutoff-dense'}   (a variant's `dense_twin`
                                                             with extra inputs keeps them: the given gate)
    routed_moe(...){mode=exact|threshold|input}          -> routed_moe(...){mode=dense}   (still routed: the twin
                                                             differs in the neuron sparsity only; the threshold
                                                             and input experts' thresholds dropped, input
                                                             experts' gate / up transposed back expert by expert)

The dense twin is what dense mode compiles to (passes/fuse_gated_mlp.py): the fused dense kernel on the same
weights, so the twin shares the artifact's arrays and computes every neuron with the same activations; with
quantized weights a `gated_mlp` (three linears, as dense mode keeps them under int8 / int4) whose down projection,
stored a neuron per row, is quantized again a row per output (a second rounding: the same bytes, not bit-identical
values) (`dense_attrs` of the variant's entry in ir/sparse_variants.py: exact mode the same math, lossy
modes their dense original).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Node, rewrite, weight_node
from ..ir.arrays import aligned_contiguous
from ..ir.graph import quantized_weight_node
from ..ir.mlp import GATED_MLP_ATTRS
from ..ir.moe import MODE_INPUTS, ROUTED_INPUTS, TRANSPOSED_MODES
from ..ir.quant import LAYOUTS, dequantize, quantize
from ..ir.sparse_variants import dense_variant_attrs, variant, variant_of
from .base import Pass, record


@dataclass(frozen=True)
class Densify(Pass):
    name = "densify"

    def run(self, graph: Graph) -> Graph:
        new_weights: dict[str, np.ndarray] = {}

        def visit(node: Node) -> Node | None:
            if node.op == "routed_moe" and node.attrs["mode"] != "dense":
                record("routed-moe")   # threshold / input experts drop their thresholds (inputs as ROUTED_INPUTS)
                inputs = node.inputs[:len(ROUTED_INPUTS)] if node.attrs["mode"] in MODE_INPUTS else node.inputs
                if node.attrs["mode"] in TRANSPOSED_MODES:   # each expert's gate / up back to a neuron per row
                    experts = node.attrs["experts"]
                    inputs = (inputs[0], *(transposed(w, experts) for w in inputs[1:3]), *inputs[3:])
                return node.replace(inputs=inputs, attrs={**node.attrs, "mode": "dense"})
            if node.op != "sparse_gated_mlp":
                return None
            own = variant_of(node.attrs)
            if own.dense_twin == own.name:   # a dense twin already
                return None
            x, w_gate, w_up, w_down_t = node.inputs[:4]
            twin = variant(own.dense_twin)
            if own.gate_up_layout == "columns":   # gate/up stored [d, n_ff]: back to a neuron per row
                w_gate, w_up = (transposed(w) for w in (w_gate, w_up))
            attrs = dense_variant_attrs(own.dense_attrs(dict(node.attrs)), node.attrs.get("pattern", "gated-mlp"))
            attrs["mode"] = twin.name
            record(attrs["pattern"])
            normed = node.attrs.get("hidden_rms_eps") is not None
            if twin.name == "dense" and (w_gate.attrs.get("layout", "dense") in LAYOUTS or normed) \
                    and attrs["up_act"] != "unit":
                # quantized or hidden-normed: three linears, as dense mode compiles such a block (fuse-gated-mlp),
                # down a row per output
                plain = {**GATED_MLP_ATTRS, "gate_act": attrs["gate_act"], "up_act": attrs["up_act"],
                         "threshold": attrs["threshold"], "expert": attrs.get("expert", -1),
                         "hidden_rms_eps": node.attrs.get("hidden_rms_eps")}
                return Node("gated_mlp", (x, w_gate, w_up, transposed(w_down_t)), plain, node.type, node.loc)
            kept = node.inputs[4:4 + len(twin.extra_inputs)]   # a twin with extra inputs takes its variant's
            return Node("sparse_gated_mlp", (x, w_gate, w_up, w_down_t, *kept), attrs, node.type, node.loc)

        def transposed(w: Node, experts: int = 1) -> Node:
            """w transposed (a stack of `experts` matrices: each, in place)."""
            name = w.attrs["name"]
            layout = w.attrs.get("layout", "dense")
            base = name.removesuffix(f".{layout}") if layout != "dense" else name
            back = base[:-2] if base.endswith(".t") else f"{base}.t"  # transposed back

            def flip(a: np.ndarray) -> np.ndarray:
                return a.reshape(experts, -1, a.shape[-1]).transpose(0, 2, 1).reshape(-1, a.shape[0] // experts)

            if layout == "dense":
                return weight_node(back, new_weights.setdefault(back, aligned_contiguous(flip(graph.weights[name]))))
            # a quantized [d, n_ff] blob: its values transposed and quantized again in its layout, a neuron per row
            # (a second rounding: the twin reads the same bytes per weight, not bit-identical values)
            qw = quantize(np.ascontiguousarray(flip(dequantize(graph.weights[name], layout, w.shape[-1]))), layout)
            qname = f"{back}.{layout}"
            new_weights.setdefault(qname, qw.blob)
            return quantized_weight_node(qname, qw)

        return rewrite(graph, visit, new_weights)
