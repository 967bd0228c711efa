"""The hot/cold cost model and MILP (scipy.optimize.milp / HiGHS): budget respected, skew rewarded, edge budgets."""

import numpy as np
import pytest

from actsparse import targets
from actsparse.errors import MemoryBudgetError
from actsparse.passes.hot_cold_solver import LayerShape, group_sizes, solve


def _layer(name, frequency, d=256, n_ff=1024, resident=True):
    sizes = group_sizes(n_ff, len(frequency))
    return LayerShape(name, d, d, 4, sizes, tuple(frequency), resident)


def _layers():
    groups = 16
    flat = np.full(groups, 0.2)
    # the same mean firing rate (0.2), concentrated in three groups
    skewed = np.r_[np.full(3, 0.9), np.full(groups - 3, (0.2 * groups - 2.7) / (groups - 3))]
    return [_layer("flat", flat), _layer("skewed", skewed)]


def test_budget_respected_and_skewed_layer_gets_more_hot_neurons():
    layers = _layers()
    total = sum(lay.held_bytes(True).sum() for lay in layers)
    minimum = sum(lay.held_bytes(False).sum() for lay in layers)
    budget = int(minimum + (total - minimum) / 8)
    split = solve(layers, budget, targets.get("x86"))
    assert split.status == "optimal"
    assert sum(lay.held_bytes for lay in split.layers) <= budget
    by = {lay.location: lay for lay in split.layers}
    assert by["skewed"].hot > by["flat"].hot
    assert all(lay.hot % 64 == 0 and lay.hot + lay.cold == 1024 for lay in split.layers)
    # the objective is the sum of the layers' predicted times
    assert split.objective_s == pytest.approx(sum(lay.predicted_s for lay in split.layers), rel=1e-6)


def test_budget_at_the_minimum_is_all_cold_and_above_the_total_all_hot():
    layers = _layers()
    total = int(sum(lay.held_bytes(True).sum() for lay in layers))
    minimum = int(sum(lay.held_bytes(False).sum() for lay in layers))
    cold = solve(layers, minimum, targets.get("x86"))
    assert [lay.hot for lay in cold.layers] == [0, 0] and cold.minimum == minimum
    hot = solve(layers, 10 * total, targets.get("x86"))
    assert [lay.cold for lay in hot.layers] == [0, 0] and hot.total == total
    assert hot.objective_s < cold.objective_s


def test_predictor_layers_hold_nothing_when_cold_and_budget_zero_works():
    layers = [_layer("p", np.linspace(0.9, 0.01, 16), resident=False)]
    split = solve(layers, 0, targets.get("x86"))
    assert split.minimum == 0 and split.layers[0].hot == 0 and split.layers[0].held_bytes == 0


def test_a_unit_up_layer_holds_and_reads_no_up_rows_when_hot():
    """A non-gated MLP's block (`unit` up factor: no up rows in its kernels) holds gate and down rows when hot, a
    third less than a gated one; its cold path still bundles an up row per neuron (runtime/cold_store.py), so at a
    budget for one layer's hot rows the unit layer, cheaper to hold, gets more hot neurons."""
    from dataclasses import replace

    from actsparse.passes.hot_cold_solver import COSTS, layer_costs

    gated = _layer("gated", np.linspace(0.9, 0.05, 16))
    plain = replace(gated, location="plain", reads_up=False)
    assert plain.held_bytes(True).sum() == pytest.approx(gated.held_bytes(True).sum() * 2 / 3)
    assert plain.held_bytes(False).sum() == gated.held_bytes(False).sum()  # the resident gate rows
    (hot_g, cold_g), (hot_p, cold_p) = (layer_costs(lay, 1e11, 1e10, COSTS["llvm"])
                                        for lay in (gated, plain))
    assert (hot_p < hot_g).all() and np.array_equal(cold_p, cold_g)
    budget = int(gated.held_bytes(False).sum() * 2 + gated.held_bytes(True).sum() / 2)
    by = {lay.location: lay for lay in solve([gated, plain], budget, targets.get("x86")).layers}
    assert by["plain"].hot > by["gated"].hot


def test_infeasible_budgets_and_targets_are_one_clear_error():
    layers = _layers()
    with pytest.raises(MemoryBudgetError, match="feasible budgets"):
        solve(layers, -1, targets.get("x86"))
    with pytest.raises(MemoryBudgetError, match="feasible budgets"):
        solve(layers, 1000, targets.get("x86"))
    with pytest.raises(MemoryBudgetError, match="disk"):  # the arm target declares no disk level
        solve(layers, 1 << 30, targets.get("arm"))


def test_cuda_target_splits_between_vram_and_host():
    split = solve(_layers(), 3 << 20, targets.get("cuda"))
    assert sum(lay.held_bytes for lay in split.layers) <= 3 << 20 and 0 < split.layers[1].hot < 1024
