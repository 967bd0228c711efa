"""split-hot-cold: cut each reordered sparse gated MLP into a hot prefix (fast memory) and a cold rest (slow memory).

Matches `sparse_gated_mlp{mode='exact' | 'predictor'}` nodes whose neurons are in frequency order
(`group_frequency` set by `reorder-neurons`) and produces, with H hot neurons chosen per layer by the cost model
(`hot_cold_solver.py`, HiGHS) under `memory_budget` bytes of fast memory for the MLP weights:

    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t){mode='exact'}
        -> add(sparse_gated_mlp(x, @Wg.hot, @Wu.hot, @Wd.t.hot){mode='exact'},                   rows [0, H)
               sparse_gated_mlp(x, @Wg.cold, @Wu.cold, @Wd.t.cold){mode='cold', store=..., window=k})   rows [H, n_ff)
    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t, s){mode='predictor'}
        -> add(sparse_gated_mlp(x, @Wg.hot, @Wu.hot, @Wd.t.hot, s[..., :H]){mode='predictor'},
               sparse_gated_mlp(x, @Wg.cold, @Wu.cold, @Wd.t.cold, s[..., H:]){mode='cold-predictor', store=...})

(only the cold node when H = 0; the node unchanged when H = n_ff). Why it is right: y = Σ_j h_j·Wd.t[j] splits
into a sum over the two row ranges; the cold variant keeps exact semantics. Where the cold rows live is the
runtime's business (CPU: a file of per-neuron bundles, GPU: host memory), named by `store`; in exact mode the gate
rows stay resident (they decide who fires), in predictor mode the scores decide and the cold gate rows go to slow
memory with the rest (the predictor's own weights stay resident and are not counted in the budget). The budget left
after the split buys an LRU `window` of recently active cold neurons per layer.

Blocks that cannot split (left dense, other variants) count as resident: the budget must hold them. A budget below
the resident bytes is a MemoryBudgetError naming the feasible range.

Options: `memory_budget` (bytes), `target` (a Target: its fast/slow memory levels), `time_limit` (solver seconds).
Statistics: `split`, `all-hot`, `all-cold` per block. Notes: `hot-cold` per block (split, predicted time, the
solver's objective) for the report.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import MemoryBudgetError
from ..ir import Graph, Node, TensorType, rewrite, weight_node
from ..ir.activations import reads_input
from ..ir.arrays import aligned_contiguous
from ..ir.mlp import has_hidden_norm
from ..ir.sparse_variants import NEURON_GROUP
from ..targets import Target
from .base import Pass, note, record
from .hot_cold_solver import LayerShape, group_sizes, solve

WINDOW_SHARE = 0.1   # of the budget beyond the resident gate rows, kept for the windows of recently active neurons
# mode that splits -> mode of its cold part; the cold part of exact keeps its gate rows resident, predictor's not
COLD_OF = {"exact": "cold", "predictor": "cold-predictor"}


def splittable(node: Node) -> bool:
    attrs = node.attrs
    # a hidden norm spans every neuron: a hot part and a cold part summed would each normalise their own share
    return (node.op == "sparse_gated_mlp" and attrs.get("mode") in COLD_OF and bool(attrs.get("group_frequency"))
            and not has_hidden_norm(node))


def gate_resident(node: Node) -> bool:
    """Whether the block's cold part keeps its gate rows in fast memory (exact: they decide who fires)."""
    return len(node.inputs) == 4


@dataclass(frozen=True)
class SplitHotCold(Pass):
    name = "split-hot-cold"
    data_options = ("target",)
    memory_budget: int = 0
    time_limit: float = 20.0
    target: Target | None = field(default=None, repr=False, compare=False)

    def run(self, graph: Graph) -> Graph:
        from .. import targets

        target = self.target or targets.get("x86")
        budget = int(self.memory_budget)
        blocks = [n for n in graph.nodes if splittable(n)]
        resident = _resident_mlp_bytes(graph, blocks)
        if budget < resident:
            raise MemoryBudgetError(f"memory_budget={budget} bytes cannot hold the {resident} bytes of MLP weights "
                                    "that cannot be split (blocks kept dense or in another mode); give at least that "
                                    "much more, or leave memory_budget unset")
        if not blocks:
            return graph
        shapes = [_shape(b, graph) for b in blocks]
        minimum = sum(int(s.held_bytes(False).sum()) for s in shapes)
        total = sum(int(s.held_bytes(True).sum()) for s in shapes)
        usable = budget - resident
        if minimum <= usable < total:  # a share of what is left over the resident gates buys the LRU windows
            usable = minimum + int((1 - WINDOW_SHARE) * (usable - minimum))
        try:
            split = solve(shapes, usable, target, self.time_limit)
        except MemoryBudgetError as err:
            if budget - resident >= 0 and resident:
                raise MemoryBudgetError(f"{err} (plus {resident} bytes of unsplit MLP weights)") from None
            raise
        spare = budget - resident - sum(s.held_bytes for s in split.layers)
        cold_layers = [i for i, s in enumerate(split.layers) if s.cold]
        plan = {}
        for i, (block, shape, s) in enumerate(zip(blocks, shapes, split.layers)):
            bundle = ((0 if shape.gate_resident else shape.d) + shape.d + shape.d_out) * shape.itemsize
            window = min(s.cold, int(spare // max(len(cold_layers), 1) // bundle)) if s.cold else 0
            plan[i] = (s, window)
            note({"kind": "hot-cold", "location": block.loc, "hot": s.hot, "cold": s.cold, "window": window,
                  "predicted_us": round(s.predicted_s * 1e6, 3), "held_bytes": s.held_bytes,
                  "objective_us": round(split.objective_s * 1e6, 3), "budget": budget, "status": split.status})
        new_weights: dict[str, np.ndarray] = {}
        in_order = iter(range(len(blocks)))

        def visit(node: Node) -> Node | None:
            if not splittable(node):
                return None
            s, window = plan[next(in_order)]
            if s.cold == 0:
                record("all-hot")
                return None
            parts = _parts(node, s.hot, graph, new_weights)
            cold = _cold_node(node, parts["cold"], s.hot, window, graph, new_weights)
            if s.hot == 0:
                record("all-cold")
                return cold
            record("split")
            groups = node.attrs["group_frequency"][: s.hot // NEURON_GROUP]
            hot = node.replace(inputs=(node.inputs[0], *parts["hot"]), attrs={**node.attrs, "group_frequency": groups})
            return Node("add", (hot, cold), {}, node.type, node.loc)

        return rewrite(graph, visit, new_weights)


def _shape(block: Node, graph: Graph) -> LayerShape:
    w_gate, w_down_t = block.inputs[1], block.inputs[3]
    n_ff, d = w_gate.shape
    freq = tuple(block.attrs["group_frequency"])
    return LayerShape(block.loc or "mlp", d, w_down_t.shape[1], graph.weights[w_gate.attrs["name"]].dtype.itemsize,
                      group_sizes(n_ff, len(freq)), freq, gate_resident=gate_resident(block),
                      reads_up=reads_input(block.attrs.get("up_act", "identity")))


def _resident_mlp_bytes(graph: Graph, blocks: list[Node]) -> int:
    """Bytes of the MLP weights of blocks that do not split (they stay in fast memory)."""
    split_weights = {w.attrs["name"] for b in blocks for w in b.inputs[1:4]}
    names = {w.attrs["name"] for n in graph.nodes if n.op in ("gated_mlp", "sparse_gated_mlp")
             for w in n.inputs[1:] if w.op == "weight"} - split_weights
    return int(sum(graph.weights[n].nbytes for n in names))


def _parts(node: Node, hot: int, graph: Graph, new_weights: dict) -> dict[str, list[Node]]:
    """Per part ("hot": neurons [0, hot), "cold": the rest) its weight rows and, in predictor mode, its scores."""
    out: dict[str, list[Node]] = {"hot": [], "cold": []}
    for w in node.inputs[1:4]:
        array = graph.weights[w.attrs["name"]]
        for part, rows in (("hot", slice(0, hot)), ("cold", slice(hot, None))):
            name = f"{w.attrs['name']}.{part}"
            new_weights.setdefault(name, aligned_contiguous(array[rows]))
            out[part].append(weight_node(name, new_weights[name]))
    for scores in node.inputs[4:5]:
        n_ff, axis = scores.shape[-1], scores.type.rank - 1
        for part, (start, end) in (("hot", (0, hot)), ("cold", (hot, n_ff))):
            if end - start == n_ff:   # all of them: no slice
                out[part].append(scores)
                continue
            sliced = TensorType((*scores.shape[:-1], end - start), scores.type.dtype)
            out[part].append(Node("slice", (scores,), {"axis": axis, "start": start, "end": end, "step": 1}, sliced,
                                  scores.loc))
    return out


def _cold_node(node: Node, weights: list[Node], hot: int, window: int, graph: Graph, new_weights: dict) -> Node:
    mode = COLD_OF[node.attrs["mode"]]
    bundled = weights[0:3] if mode == "cold-predictor" else weights[1:3]   # what the store holds per neuron
    arrays = [new_weights[w.attrs["name"]] for w in bundled]
    digest = hashlib.sha1()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8)[: 1 << 22].tobytes())
    digest.update(repr((*[a.shape for a in arrays], str(arrays[0].dtype))).encode())
    store = f"{weights[1].attrs['name']}:{digest.hexdigest()[:12]}"
    keep = ("gate_act", "up_act", "threshold", "pattern", "expert", "cutoff")
    attrs = {k: node.attrs[k] for k in keep if k in node.attrs}
    attrs.update(mode=mode, **({"base": "exact"} if mode == "cold" else {}), store=store, window=int(window),
                 group_frequency=node.attrs["group_frequency"][hot // NEURON_GROUP:])
    return Node("sparse_gated_mlp", (node.inputs[0], *weights), attrs, node.type, node.loc)
