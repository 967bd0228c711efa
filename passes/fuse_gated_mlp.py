"""fuse-gated-mlp: dense mode's gated MLPs onto the one fused dense kernel, on the sparse kernels' weight layout.

Matches every `gated_mlp` (any gate activation, fused gate_up or not, biases or not, routed experts) and produces

    gated_mlp(x, @Wg, @Wu, @Wd)               -> sparse_gated_mlp(x, @Wg, @Wu, @Wd.t){mode='dense'}
    gated_mlp(x, @Wgu, @Wd){fused}            -> sparse_gated_mlp(x, @Wgu.gate, @Wgu.up, @Wd.t){mode='dense'}
    gated_mlp(x, @Wg, @Wu, @Wd, @bg, @bu)     -> slice(sparse_gated_mlp(concat(x, 1), @Wg.aug, @Wu.aug,
                                                                        @Wd.t.aug){mode='dense'}, last axis, 0:d)

(the layouts of passes/sparse_layout.py, shared with sparsify-exact). Why: lowered as it stands, a `gated_mlp` is
three linear kernels plus Relax's activation and product, three parallel launches and two round trips of the
intermediate through memory; the `dense` variant (ir/sparse_variants.py) is one kernel that computes gate and up
per block of neurons and streams the down rows once — the kernel benchmarks/ffn.py times as "actsparse dense".
Every neuron is computed, so outputs are those of the dense block (float32 summation order aside). The price is
the one layout copy exact mode also makes, @Wd.t.

Not fused: a block whose down projection is stored as it is (`stored_downs`: a GGUF's Q4_1 / Q8_0 / ... blocks the
quantize pass keeps). Its groups run along n_ff; @Wd.t would be quantized again along d, a second rounding. Kept as
three linears, every matrix reads the file's blocks losslessly: SmolLM2-135M's Q4_1 GGUF under quantize="int4",
perplexity 17.90 fused -> 16.55 (fp32: 16.48) at 159 -> 162 tokens/s (BENCHMARKS.md, session 31). Statistic
`kept-stored-down`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ir import Graph, Node, rewrite
from ..ir.mlp import pattern_name
from ..ir.sparse_variants import dense_variant_attrs
from .base import Pass, record
from .sparse_layout import to_sparse_layout


@dataclass(frozen=True)
class FuseGatedMLP(Pass):
    name = "fuse-gated-mlp"
    data_options = ("stored_downs",)
    stored_downs: frozenset = field(default_factory=frozenset, compare=False, hash=False)

    def run(self, graph: Graph) -> Graph:
        new_weights: dict[str, np.ndarray] = {}

        def visit(node: Node) -> Node | None:
            if node.op != "gated_mlp":
                return None
            a = node.attrs
            down = node.inputs[2 if a["fused"] else 3]
            if down.op == "weight" and down.attrs["name"] in self.stored_downs:
                record("kept-stored-down")   # its three linears read the stored blocks as they are
                return None
            pattern = pattern_name(a["gate_act"], a["up_act"]) + ("-fused" if a["fused"] else "")
            record(pattern)
            return to_sparse_layout(node, dense_variant_attrs(a, pattern), graph, new_weights)

        return rewrite(graph, visit, new_weights)
