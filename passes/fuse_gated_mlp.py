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

Not fused under quantized storage (`storage` int8 / int4, the `quantize=` kind the weights will get): the block
stays `gated_mlp`, lowered as three linears (row dots over each matrix as it is stored) and the activation's product.
Measured on Zen 4, 2 threads (BENCHMARKS.md, session 31): the fused kernel was no faster with quantized weights and
often slower — one MLP at Mistral-7B dims from DRAM, q8_0 5.68 vs 4.80 ms, q4_0 4.13 vs 4.05; SmolLM2-135M decoding
153 vs 189 tokens/s (its GGUF's Q4_1) and 166 vs 190 (q4_0 from float), interleaved — while float weights ran the
same either way (fp32 21.0 vs 21.8 ms, fp16 10.9 vs 10.9). And a GGUF's stored down projection (groups along n_ff)
stays as stored: fused, @Wd.t was quantized a second time along d (SmolLM2's Q4_1 file under int4: perplexity
17.90 fused, 16.55 as three linears; fp32 16.48). Statistic `kept-linears`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Node, rewrite
from ..ir.mlp import has_hidden_norm, pattern_name
from ..ir.quant import QUANTIZE_KINDS
from ..ir.sparse_variants import dense_variant_attrs
from .base import Pass, record
from .sparse_layout import to_sparse_layout


@dataclass(frozen=True)
class FuseGatedMLP(Pass):
    name = "fuse-gated-mlp"
    storage: str | None = None   # the quantize= kind the weights will get (None: as they are)

    def run(self, graph: Graph) -> Graph:
        new_weights: dict[str, np.ndarray] = {}

        def visit(node: Node) -> Node | None:
            if node.op != "gated_mlp":
                return None
            if self.storage in QUANTIZE_KINDS:
                record("kept-linears")   # three linears on the quantized rows as stored (module docstring)
                return None
            if has_hidden_norm(node):
                record("kept-linears")   # the fused kernel applies no hidden norm; the linears and the norm do
                return None
            a = node.attrs
            pattern = pattern_name(a["gate_act"], a["up_act"]) + ("-fused" if a["fused"] else "")
            record(pattern)
            return to_sparse_layout(node, dense_variant_attrs(a, pattern), graph, new_weights)

        return rewrite(graph, visit, new_weights)
