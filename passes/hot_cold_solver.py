"""The hot/cold split's cost model and its solver: which neuron groups of each layer stay in fast memory.

Neurons are in frequency order (`reorder_neurons.py`), in groups of NEURON_GROUP, group g of a layer firing with
mean frequency f_g. Per token, a group of s neurons (widths d in, d_out out, b bytes a weight) costs

    hot:   (gate rows read by the exact kernel: s·d·b  +  f·s·(d + d_out)·b) / bw_fast
    cold:  (s·d·b gate rows, resident) / bw_fast  +  f·s·((d + d_out)·b / bw_slow + index)        (exact)
           predictor mode reads the gate row only of predicted neurons: f·s·(2d + d_out)·b on both sides
           (a hot up row counts 0 for the `unit` up factor of a non-gated MLP: its kernels read none; the cold
           store bundles one per neuron all the same)

plus, per layer, the hot kernel's fixed cost if any group is hot and the cold path's if any is cold (the "big-M"
indicators of PowerInfer's ILP, here as binaries z ≥ x_g and w ≥ 1 - x_g). Bytes held in fast memory: a hot group
s·(2d + d_out)·b, a cold one its resident gate rows (exact mode: the gate decides who fires). The MILP

    minimize   Σ_l Σ_g x_lg·(hot_lg - cold_lg) + fixed_hot·z_l + fixed_cold·w_l        (+ Σ cold_lg, constant)
    subject to Σ x_lg·(held_hot_lg - held_cold_lg) ≤ budget - Σ held_cold_lg,   x_lg ≥ x_l,g+1 (a hot prefix)

is solved by HiGHS through `scipy.optimize.milp`. Since the benefit of a hot group per byte grows with f, layers
whose firing is more skewed get more hot neurons. Memory levels (fast, slow) come from the target (`FAST_SLOW`, by
TVM target kind); the fixed and per-neuron costs are data too (`COSTS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MemoryBudgetError
from ..targets import Target

# TVM target kind -> (fast level, slow level): where hot and cold neurons live
FAST_SLOW = {"llvm": ("DRAM", "disk"), "cuda": ("VRAM", "host")}


@dataclass(frozen=True)
class SplitCosts:
    hot_fixed_s: float     # one hot kernel launch
    cold_fixed_s: float    # one call of the cold path (a host function; on a GPU target also the transfers of x, y)
    index_s: float         # per active cold neuron: its index bookkeeping and read request


COSTS = {"llvm": SplitCosts(4e-6, 30e-6, 0.5e-6), "cuda": SplitCosts(5e-6, 40e-6, 0.2e-6)}


@dataclass(frozen=True)
class LayerShape:
    location: str
    d: int
    d_out: int
    itemsize: int
    group_sizes: tuple[int, ...]
    group_frequency: tuple[float, ...]
    gate_resident: bool = True      # exact mode: every gate row stays in fast memory
    reads_up: bool = True           # False: the up factor is `unit` (a non-gated MLP): no up rows held or read

    @property
    def n_ff(self) -> int:
        return sum(self.group_sizes)

    @property
    def up_d(self) -> int:
        """The width of an up row as held and read: d, or 0 for a `unit` up factor."""
        return self.d if self.reads_up else 0

    def held_bytes(self, hot: bool) -> np.ndarray:
        s = np.asarray(self.group_sizes, np.float64)
        width = (self.d + self.up_d + self.d_out) if hot else (self.d if self.gate_resident else 0)
        return s * width * self.itemsize


@dataclass(frozen=True)
class LayerSplit:
    location: str
    hot: int                 # neurons in fast memory (a prefix of the frequency order)
    cold: int
    predicted_s: float       # predicted time of the layer per token
    held_bytes: int          # bytes of the layer in fast memory


@dataclass(frozen=True)
class Split:
    layers: tuple[LayerSplit, ...]
    objective_s: float       # the solver's objective: predicted MLP time per token
    budget: int
    minimum: int             # the least budget that is feasible (the resident bytes)
    total: int               # every neuron hot
    status: str


def levels(target: Target):
    """(fast, slow) MemoryLevels of the target; a target without them cannot split."""
    names = FAST_SLOW.get(target.kind)
    found = [target.level(n) for n in names] if names else [None]
    if names is None or None in found:
        have = ", ".join(lv.name for lv in target.memory) or "none"
        raise MemoryBudgetError(f"memory_budget needs the target's {' and '.join(names or ('fast', 'slow'))} memory "
                                f"levels; target {target.name!r} declares {have}. Leave memory_budget unset, or "
                                "give the target those levels (actsparse.targets.profile())")
    fast, slow = found
    if fast.read_bandwidth <= 0 or slow.read_bandwidth <= 0:
        raise MemoryBudgetError(f"memory_budget needs read bandwidths of {fast.name} and {slow.name}; target "
                                f"{target.name!r} has {fast.read_bandwidth:g} and {slow.read_bandwidth:g} B/s")
    return fast, slow


def layer_costs(layer: LayerShape, bw_fast: float, bw_slow: float, costs: SplitCosts):
    """Per group: (hot seconds, cold seconds) per token (see the module docstring)."""
    s, f = np.asarray(layer.group_sizes, np.float64), np.asarray(layer.group_frequency, np.float64)
    b, d, up_d, d_out = layer.itemsize, layer.d, layer.up_d, layer.d_out
    if layer.gate_resident:
        gate = s * d * b / bw_fast
        hot = gate + f * s * (up_d + d_out) * b / bw_fast
        cold = gate + f * s * ((d + d_out) * b / bw_slow + costs.index_s)  # the cold store bundles up rows still
    else:
        hot = f * s * (d + up_d + d_out) * b / bw_fast
        cold = f * s * ((2 * d + d_out) * b / bw_slow + costs.index_s)
    return hot, cold


def solve(layers: list[LayerShape], budget: int, target: Target, time_limit: float = 20.0) -> Split:
    """The hot prefix per layer that minimizes predicted decode time under `budget` bytes of fast memory."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    fast, slow = levels(target)
    costs = COSTS[target.kind]
    held_hot = [lay.held_bytes(True) for lay in layers]
    held_cold = [lay.held_bytes(False) for lay in layers]
    minimum = int(sum(h.sum() for h in held_cold))
    total = int(sum(h.sum() for h in held_hot))
    if budget < 0 or budget < minimum:
        raise MemoryBudgetError(f"memory_budget={budget} bytes is below what must stay resident ({minimum} bytes: "
                                f"{'the gate rows of every MLP, which decide who fires' if minimum else 'nothing'}); "
                                f"feasible budgets: {minimum} .. {total} bytes (≥ {total}: every neuron hot)")
    per_layer = [layer_costs(lay, fast.read_bandwidth, slow.read_bandwidth, costs) for lay in layers]
    # variables: per layer its G group binaries, then z (any hot) and w (any cold)
    offsets = np.cumsum([0] + [len(lay.group_sizes) + 2 for lay in layers])
    c = np.zeros(int(offsets[-1]))
    entries, lower, upper = [], [], []   # (row, column, value) of the constraint matrix, and each row's bounds

    def row(terms, lo, hi):
        entries.extend((len(lower), col, val) for col, val in terms)
        lower.append(lo)
        upper.append(hi)

    constant, budget_terms = 0.0, []
    for lay, (hot, cold), o, hh, hc in zip(layers, per_layer, offsets, held_hot, held_cold):
        g = len(lay.group_sizes)
        z, w = o + g, o + g + 1
        c[o:o + g] = hot - cold
        c[z], c[w] = costs.hot_fixed_s, costs.cold_fixed_s
        constant += float(cold.sum())
        for k in range(g):
            row([(o + k, 1), (z, -1)], -np.inf, 0)          # x_k ≤ z
            row([(o + k, 1), (w, 1)], 1, np.inf)            # x_k + w ≥ 1
            if k + 1 < g:
                row([(o + k, 1), (o + k + 1, -1)], 0, np.inf)   # x_k ≥ x_k+1: a hot prefix
        budget_terms += [(o + k, float(hh[k] - hc[k])) for k in range(g)]
    row(budget_terms, -np.inf, float(budget - minimum))
    r, col, val = zip(*entries)
    matrix = csr_matrix((val, (r, col)), shape=(len(lower), len(c)))
    result = milp(c, integrality=np.ones(len(c)), bounds=Bounds(0, 1),
                  constraints=LinearConstraint(matrix, lower, upper), options={"time_limit": time_limit})
    if result.x is None:
        raise MemoryBudgetError(f"the hot/cold solver found no split within memory_budget={budget} bytes "
                                f"({result.message}); feasible budgets: {minimum} .. {total} bytes")
    x = np.round(result.x).astype(int)
    splits = []
    for lay, (hot, cold), o, hh, hc in zip(layers, per_layer, offsets, held_hot, held_cold):
        g = len(lay.group_sizes)
        chosen = x[o:o + g].astype(bool)
        n_hot = int(np.asarray(lay.group_sizes)[chosen].sum())
        predicted = float(np.where(chosen, hot, cold).sum() + costs.hot_fixed_s * chosen.any()
                          + costs.cold_fixed_s * (~chosen).any())
        splits.append(LayerSplit(lay.location, n_hot, lay.n_ff - n_hot, predicted,
                                 int(np.where(chosen, hh, hc).sum())))
    return Split(tuple(splits), float(result.fun + constant), int(budget), minimum, total,
                 "optimal" if result.status == 0 else str(result.message))


def group_sizes(n_ff: int, groups: int) -> tuple[int, ...]:
    """Sizes of `groups` consecutive runs covering n_ff neurons, all NEURON_GROUP but the last."""
    size = -(-n_ff // max(groups, 1))
    return tuple(min(size, n_ff - i * size) for i in range(groups))
