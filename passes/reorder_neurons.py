"""reorder-neurons: permute each sparse gated MLP's intermediate neurons by calibrated firing frequency.

Matches every `sparse_gated_mlp` whose weights hold one neuron per row (exact, threshold, predictor: the "rows"
layout) and produces the same node on permuted weights, most frequent neuron first:

    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t[, s]){mode=m}
        -> sparse_gated_mlp(x, @Wg.ordered, @Wu.ordered, @Wd.t.ordered[, s']){mode=m, group_frequency=(f0, ...)}

with @W.ordered = @W[order] (order = neurons by descending frequency on the calibration data) and, in predictor
mode, the scores' last producer permuted alike: linear(..., @B, @b) -> linear(..., @B.ordered, @b.ordered),
sign_score(x, @bits) -> sign_score(x, @bits.ordered), so score j still belongs to neuron j.

Why it is right: h = act(x·Wgᵀ) ⊙ act(x·Wuᵀ) and y = h·Wd.t sum over neurons; permuting the rows of all three
matrices (and the scores) permutes the terms of that sum, nothing else. The hot neurons are then a contiguous
prefix, which the hot/cold split (`hot_cold.py`) cuts without gathering. `group_frequency` (mean frequency of
each group of NEURON_GROUP neurons, in the new order) is what the split's cost model reads.

Options: `calibration` (input tuples; the frequencies come from one reference run, `activation_stats.py`),
`max_tokens`, `progress`. Statistics: `reordered` per block, `kept` for a block already in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ir import Graph, Node, rewrite, weight_node
from ..ir.arrays import aligned_contiguous
from ..ir.sparse_variants import NEURON_GROUP, dense_intermediate, variant_of
from .base import Pass, coerce_options, note, record
from .calibrate import calibration_samples, collect_inputs
from .sparsity_methods import CalibrationError

# the op that produces a predictor's scores -> its inputs whose rows (axis 0) are one per neuron
SCORE_ROWS = {"linear": (1, 2), "sign_score": (1,), "add": (1,), "mul": (1,)}
# ... and its inputs that are per-neuron scores themselves (an AND predictor's minimum(s_gate, add(s_up, shift)); the
# bound's add(linear(x, W8), mul(‖x‖, coef)), whose second term is a product, not a weight)
SCORE_INPUTS = {"minimum": (0, 1), "add": (0, 1)}


@dataclass(frozen=True)
class ReorderNeurons(Pass):
    name = "reorder-neurons"
    data_options = ("calibration",)
    max_tokens: int = 4096
    progress: bool = True
    calibration: tuple = field(default=(), repr=False, compare=False)

    def __post_init__(self):
        coerce_options(self)

    def run(self, graph: Graph) -> Graph:
        blocks = [n for n in graph.nodes if reorderable(n)]
        if not blocks:
            return graph
        if not self.calibration:
            raise CalibrationError("reorder-neurons needs calibration data (input tuples like example_inputs) to "
                                   "count how often each neuron fires")
        samples = calibration_samples(self.calibration, len(graph.inputs))
        rows = collect_inputs(graph, blocks, samples, self.max_tokens, progress=self.progress)
        frequency = {id(b): neuron_frequency(b, graph.weights, r) for b, r in zip(blocks, rows)}
        new_weights: dict[str, np.ndarray] = {}
        in_order = iter(blocks)  # rewrite visits nodes in graph order, as `blocks` lists them

        def visit(node: Node) -> Node | None:
            if not reorderable(node):
                return None
            freq = frequency[id(next(in_order))]
            order = np.argsort(-freq, kind="stable")
            groups = group_frequency(freq[order])
            if np.array_equal(order, np.arange(len(order))):
                record("kept")
                return node.replace(attrs={**node.attrs, "group_frequency": groups})
            record("reordered")
            note({"kind": "neuron-order", "location": node.loc, "hot_share_top_10pct":
                  float(freq[order][: max(1, len(order) // 10)].sum() / max(freq.sum(), 1e-12))})
            inputs = [node.inputs[0], *(_permuted(w, order, graph, new_weights) for w in node.inputs[1:4])]
            for extra in node.inputs[4:]:
                inputs.append(_permuted_scores(extra, order, graph, new_weights))
            return node.replace(inputs=tuple(inputs), attrs={**node.attrs, "group_frequency": groups})

        return rewrite(graph, visit, new_weights)


def reorderable(node: Node) -> bool:
    """A sparse gated MLP with one neuron per weight row, not yet split into hot and cold parts (nor a cutoff block:
    its activated gate comes in computed by ops in the neurons' original order)."""
    return node.op == "sparse_gated_mlp" and variant_of(node.attrs).gate_up_layout == "rows" \
        and not node.attrs.get("group_frequency") and node.attrs.get("mode") != "cutoff"


def neuron_frequency(block: Node, weights: dict, rows: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """[n_ff] share of the rows on which each neuron of a sparse_gated_mlp (rows layout) fires."""
    w_gate, w_up = (weights[block.inputs[i].attrs["name"]] for i in (1, 2))
    attrs = {"threshold": 0.0, **block.attrs}
    counts = np.zeros(w_gate.shape[0], np.int64)
    for i in range(0, len(rows), chunk):
        counts += (dense_intermediate(rows[i:i + chunk], w_gate, w_up, attrs) != 0).sum(0)
    return counts / max(len(rows), 1)


def group_frequency(ordered: np.ndarray, group: int = NEURON_GROUP) -> tuple[float, ...]:
    """Mean frequency of each run of `group` neurons (the last run may be shorter)."""
    return tuple(round(float(ordered[i:i + group].mean()), 5) for i in range(0, len(ordered), group))


def _permuted(w: Node, order: np.ndarray, graph: Graph, new_weights: dict) -> Node:
    if w.op != "weight":
        raise CalibrationError(f"reorder-neurons: expected a weight, got {w.op} (a sparse_gated_mlp's weights are "
                               "named constants)")
    name = f"{w.attrs['name']}.ordered"
    array = graph.weights[w.attrs["name"]]
    if w.attrs.get("layout") and array.shape[0] != w.type.shape[0]:
        raise CalibrationError(f"reorder-neurons: {w.attrs['name']} is stored as {w.attrs['layout']} without one "
                               "stored row per neuron; reorder before quantizing")
    if name not in new_weights:
        new_weights[name] = aligned_contiguous(array[order])
    if w.attrs.get("layout"):  # a quantized copy (the certified gate's q8_0 rows): one stored row per neuron
        return w.replace(attrs={**w.attrs, "name": name})
    return weight_node(name, new_weights[name])


def _permuted_scores(scores: Node, order: np.ndarray, graph: Graph, new_weights: dict) -> Node:
    """The scores' producer with its per-neuron rows permuted (see the module docstring)."""
    rows, nested = SCORE_ROWS.get(scores.op, ()), SCORE_INPUTS.get(scores.op, ())
    if not rows and not nested:
        raise CalibrationError(f"reorder-neurons: cannot permute scores made by {scores.op!r}; known producers: "
                               f"{', '.join({**SCORE_ROWS, **SCORE_INPUTS})}")
    inputs = tuple(_permuted(i, order, graph, new_weights) if k in rows and (i.op == "weight" or k not in nested) else
                   _permuted_scores(i, order, graph, new_weights) if k in nested else i
                   for k, i in enumerate(scores.inputs))
    return scores.replace(inputs=inputs)
