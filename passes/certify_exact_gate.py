"""certify-exact-gate: exact mode reads an int8 copy of the gate first, where the target says it pays (issue 11).

Exact mode streams every gate row to learn which neurons fire. The `bound` predictor's certificate
(`certified_gate.py`: a q8_0 copy of W_gate and a per-neuron error bound) proves most inactive neurons inactive
from the int8 rows alone, so the kernel reads the float gate rows of the others only, and the output stays
exactly the dense one. On a target whose `exact_gate` is "certified" (data: x86 hosts with an int8 dot,
`targets/x86.py`) this pass rewrites each exact block into the lossless `certified` variant
(ir/sparse_variants.py), with the bound's scores as its 5th input, as predictor="bound" builds them:

    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t){mode='exact'}
        -> sparse_gated_mlp(x, @Wg, @Wu, @Wd.t,
                            add(linear(x, @Wg.certified.w8){float_x}, mul(sqrt(sum(mul(x, x))), @Wg.certified.coef))
                           ){mode='certified', predictor='bound', cutoff=t}

t is the gate's own cutoff (0; FATReLU's threshold). Biased blocks are rewritten inside their slice: their gate is
already augmented with the bias column, so the bound covers it. The CPU lowering gives the block the certified
kernel (codegen/kernels/scored_mlp.py), which scores the int8 rows itself.

Left as they are (counted in the pass statistics): blocks of a target whose `exact_gate` is "dense", gates stored
group-quantized (`quantize="int8"|"int4"`: the certified kernel reads float gate rows), gate weights not float32 /
float16, MoE experts (their routed kernel), and every block when a `memory_budget` is set: the budget is fast memory
for the MLP weights, which the hot/cold split fills with hot neurons; the int8 copy (~53% of an fp16 gate, 27% of
an fp32 one) would take bytes from them.

Statistics: one count per pattern rewritten (`reglu`, ...), and `kept-dense-gate` per block left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Node, rewrite
from ..ir.activations import ZERO_BELOW
from ..ir.quant import QUANTIZE_KINDS
from ..targets.base import EXACT_GATES
from .base import Pass, coerce_options, record
from .predictors import certified_block
from .sparsify_predictor import bound_scores

GATE_DTYPES = (np.float32, np.float16)  # gate rows the certified kernel reads


@dataclass(frozen=True)
class CertifyExactGate(Pass):
    name = "certify-exact-gate"
    exact_gate: str = "certified"     # the target's `exact_gate`: "dense" leaves every block as it is
    storage: str = ""                 # the `quantize=` kind the weights will be stored in ("": as they are)
    memory_budget: int = -1           # bytes of fast memory for the MLP weights (-1: none set)

    def __post_init__(self):
        coerce_options(self)
        if self.exact_gate not in EXACT_GATES:
            raise ValueError(f"certify-exact-gate: exact_gate must be one of {', '.join(EXACT_GATES)}, got "
                             f"{self.exact_gate!r}")

    def run(self, graph: Graph) -> Graph:
        skip_all = (self.exact_gate != "certified" or self.storage in QUANTIZE_KINDS or self.memory_budget >= 0)
        new_weights: dict = {}

        def visit(node: Node) -> Node | None:
            if node.op != "sparse_gated_mlp" or node.attrs.get("mode") != "exact":
                return None
            if skip_all or not _certifiable(node, graph):
                record("kept-dense-gate")
                return None
            return _certified(node, graph, new_weights)   # a biased block's slice around it is rebuilt on top

        return rewrite(graph, visit, new_weights)


def _certifiable(node: Node, graph: Graph) -> bool:
    gate = node.inputs[1]
    return (node.attrs["gate_act"] in ZERO_BELOW and node.attrs.get("expert", -1) < 0 and gate.op == "weight"
            and not gate.attrs.get("layout")
            and graph.weights[gate.attrs["name"]].dtype in GATE_DTYPES)


def _certified(node: Node, graph: Graph, new_weights: dict) -> Node:
    x, gate = node.inputs[0], node.inputs[1]
    w_gate = graph.weights[gate.attrs["name"]]
    cutoff = float(node.attrs.get("threshold", 0.0)) if node.attrs["gate_act"] == "fatrelu" else 0.0
    p = certified_block("bound", w_gate, cutoff)
    scores = bound_scores(x, p, f"{gate.attrs['name']}.certified", None, new_weights, node.loc)
    n_ff, d = w_gate.shape
    share = p.nbytes / (3 * n_ff * d * w_gate.dtype.itemsize)   # the int8 copy and coefficients, of the MLP bytes
    record(node.attrs["pattern"])
    attrs = {**node.attrs, "mode": "certified", "predictor": "bound", "cutoff": cutoff,
             "predictor_bytes_pct": round(100.0 * share, 3)}
    return node.replace(inputs=(*node.inputs, scores), attrs=attrs)
