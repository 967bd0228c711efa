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
from ..ir import Graph, Node, rewrite
from ..ir.mlp import is_exactly_sparse, pattern_name
from .base import Pass, note, record
from .sparse_layout import to_sparse_layout


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
            attrs = {"gate_act": node.attrs["gate_act"], "up_act": node.attrs["up_act"], "mode": "exact",
                     "pattern": pattern}
            if node.attrs["gate_act"] == "fatrelu":
                attrs["threshold"] = node.attrs["threshold"]
            return to_sparse_layout(node, attrs, graph, new_weights)

        return rewrite(graph, visit, new_weights)

    def _unsupported(self, node: Node, pattern: str) -> None:
        if self.on_unsupported == "error":
            raise ModeError(
                f"mode='exact' needs a ReLU-family MLP, but {node.loc or 'a gated MLP'} is {pattern} "
                f"(act={node.attrs['gate_act']}), whose inactive neurons are not exactly zero. Ways out: "
                "actsparse.relufy(model) then a recovery fine-tune (actsparse.recipes), mode='threshold' with "
                "calibration data, or mode='auto' to keep it dense.")
        record("kept-dense")
        note({"kind": "kept-dense", "location": node.loc, "pattern": pattern, "mode": "dense",
              "reason": f"{pattern} is not exactly sparse (act={node.attrs['gate_act']}); "
                        "exact mode needs ReLU-family"})
        return None
