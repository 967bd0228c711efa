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

A block whose weights hold NaN or Inf stays dense (in every mode, with a note): torch computes 0 · Inf = NaN for
an inactive neuron with an infinite up or down weight, which skipping that neuron would hide.
Non-gated ReLU-family MLPs (OPT/Falcon relu, relu² of Primer/Nemotron/Persimmon, any `ZERO_BELOW` activation)
are exact too: the first projection plays the gate (computed densely: it decides which neurons are active) and
the "up" factor is the constant 1, `up_act="unit"` (ir/activations.py), whose weight input is the gate's own
(no second matrix stored; the exact, dense and routed kernels read no up rows for it, on CPUs and CUDA):

    linear(act(linear(x, @W1, @b1)), @W2, @b2)
        -> add(slice(sparse_gated_mlp(concat(x, 1), @W1.aug, @W1.aug, @W2.t.aug){up_act='unit'}, 0:d), @b2)
    linear(act(linear(x, @W1)), @W2) -> sparse_gated_mlp(x, @W1, @W1, @W2.t){up_act='unit'}

so only the down rows of active neurons are read.

A gate cut at a per-token cutoff (Gemma 3n: gelu_tanh(relu(P - mean(P) - z·std(P))), detect-gated-mlp's
`cutoff_block`) is exactly zero wherever P <= c, but which neurons those are is known only once all of P is: the
gate projection, the cutoff and the activation stay the graph's own ops (dense; bit for bit what torch computes)
and the activated gate a becomes an input of the sparse node, which reads the up and down rows of a's nonzero
neurons only:

    linear(mul(a, linear(x, @Wu)), @Wd), a = act(linear(x, @Wg) - c)
        -> sparse_gated_mlp(x, @Wg, @Wu, @Wd.t, a){mode='cutoff'}     (a still computed from linear(x, @Wg))

A target whose kernel family the `cutoff` variant has no kernel for (`kernel_family`, from the target's data;
none today: CPUs and CUDA have one) keeps such a block's ops, with a report row saying so.

Blocks that are not ReLU-family (SwiGLU, GeGLU) cannot be made exactly sparse. With `on_unsupported="error"`
(mode "exact") that is an error naming the layer and the ways out; with "keep-dense" (mode "auto") they stay
`gated_mlp` and the report says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModeError
from ..ir import Graph, Node, rewrite
from ..ir.activations import ZERO_BELOW
from ..ir.mlp import has_hidden_norm, is_exactly_sparse, pattern_name
from ..ir.sparse_variants import VARIANTS
from .base import Pass, note, record
from .detect_gated_mlp import cutoff_block, plain_as_gated
from .sparse_layout import to_sparse_layout


@dataclass(frozen=True)
class SparsifyExact(Pass):
    name = "sparsify-exact"
    on_unsupported: str = "error"  # "error" | "keep-dense"
    kernel_family: str = "cpu"     # the target's (Target.kernel_family): whether the cutoff variant has a kernel

    def __post_init__(self):
        if self.on_unsupported not in ("error", "keep-dense"):
            raise ValueError(f"on_unsupported must be 'error' or 'keep-dense', not {self.on_unsupported!r}")

    def run(self, graph: Graph) -> Graph:
        new_weights: dict[str, np.ndarray] = {}

        def visit(node: Node) -> Node | None:
            plain = plain_as_gated(node) if node.op == "linear" and node.inputs[0].op in ZERO_BELOW else None
            if plain is not None and _finite_weights(node, graph) and _finite_weights(plain[0], graph):
                return _sparse_plain(node, *plain, graph, new_weights)
            cutoff = cutoff_block(node)
            if cutoff is not None:
                return self._cutoff(node, cutoff, graph, new_weights)
            if node.op != "gated_mlp":
                return None
            pattern = pattern_name(node.attrs["gate_act"], node.attrs["up_act"])
            if not is_exactly_sparse(node.attrs["gate_act"]):
                return self._unsupported(node, pattern)
            return exact_block(node, graph, new_weights, self.kernel_family)

        return rewrite(graph, visit, new_weights)

    def _cutoff(self, node: Node, b: dict, graph: Graph, new_weights: dict) -> Node | None:
        """The cut-gate block as sparse_gated_mlp{mode='cutoff'} taking its activated gate (module docstring)."""
        pattern, variant = b["pattern"], VARIANTS["cutoff"]
        reason = ""
        if self.kernel_family not in variant.kernels:
            reason = (f"no {self.kernel_family} kernel for a per-token cutoff gate (the cutoff variant's kernels: "
                      f"{', '.join(variant.kernels)}); its ops run dense")
        elif not all(np.isfinite(graph.weights[w.attrs["name"]]).all() for w in (b["w_up"], b["w_down"])):
            reason = ("its weights hold NaN/Inf: skipping inactive neurons would hide the NaN that 0 * Inf gives (as "
                      "torch computes it)")
        if reason:
            record("kept-dense")
            note({"kind": "row", "location": b["location"], "pattern": pattern, "mode": "dense",
                  "n_ff": int(b["w_gate"].shape[0]), "reason": reason})
            return None
        record(pattern)
        gated = Node("gated_mlp", (b["x"], b["w_gate"], b["w_up"], b["w_down"]),
                     {"gate_act": b["gate_act"], "up_act": b["up_act"], "fused": False}, node.type, b["location"])
        attrs = {"gate_act": b["gate_act"], "up_act": b["up_act"], "mode": "cutoff", "pattern": pattern,
                 "threshold": b["threshold"]}
        sparse = to_sparse_layout(gated, attrs, graph, new_weights)
        out = sparse.replace(inputs=(*sparse.inputs, b["gate"]))
        return out if b["b_down"] is None else Node("add", (out, b["b_down"]), {}, node.type, node.loc)

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


def exact_block(node: Node, graph: Graph, new_weights: dict, kernel_family: str, count: bool = True) -> Node | None:
    """ReLU-family gated block `node` as sparse_gated_mlp{mode=exact}, or None (kept dense, with a report note) where
    skipping is not lossless or no kernel of `kernel_family` takes it: weights with NaN / Inf, or a hidden norm
    (BitNet's ffn_sub_norm) where the family's exact kernel has none. Also predictor mode's routed experts (`count`
    False: that pass counts them as its own statistic)."""
    pattern = pattern_name(node.attrs["gate_act"], node.attrs["up_act"])
    reason = None
    if not _finite_weights(node, graph):
        reason = "its weights hold NaN/Inf: skipping inactive neurons would hide the NaN that 0 * Inf gives (as " \
                 "torch computes it)"
    elif has_hidden_norm(node):
        pattern += "-normed"
        if kernel_family not in VARIANTS["exact"].hidden_norm_families:
            reason = (f"no {kernel_family} kernel normalises a block's hidden vector (BitNet's ffn_sub_norm; exact's "
                      f"kernels that do: {', '.join(VARIANTS['exact'].hidden_norm_families)}); its ops run dense")
    if reason:
        record("kept-dense")
        note({"kind": "kept-dense", "location": node.loc, "pattern": pattern, "mode": "dense", "reason": reason})
        return None
    attrs = exact_attrs(node, pattern)
    if has_hidden_norm(node):
        attrs["hidden_rms_eps"] = node.attrs["hidden_rms_eps"]
    if count:
        record(pattern)
    return to_sparse_layout(node, attrs, graph, new_weights)


def exact_attrs(node: Node, pattern: str) -> dict:
    """The sparse_gated_mlp{mode=exact} attributes of gated block `node` (FATReLU keeps its threshold)."""
    attrs = {"gate_act": node.attrs["gate_act"], "up_act": node.attrs["up_act"], "mode": "exact", "pattern": pattern}
    if node.attrs["gate_act"] == "fatrelu":
        attrs["threshold"] = node.attrs["threshold"]
    return attrs


def _finite_weights(node: Node, graph: Graph) -> bool:
    return all(bool(np.isfinite(graph.weights[i.attrs["name"]]).all()) for i in node.inputs[1:] if i.op == "weight")


def _sparse_plain(node: Node, gated: Node, b_down: Node | None, graph: Graph, new_weights: dict) -> Node:
    """The non-gated block as a gated one whose up factor is the constant 1 (detect_gated_mlp.plain_as_gated; see
    the module docstring), then sparse layout."""
    pattern = f"{gated.attrs['gate_act']}-mlp"
    record(pattern)
    out = to_sparse_layout(gated, {**exact_attrs(gated, pattern), "up_act": "unit"}, graph, new_weights)
    return out if b_down is None else Node("add", (out, b_down), {}, node.type, node.loc)
