"""Routed experts' pooled budget (passes/routed_thresholds.py): each MoE layer's experts share its sparsity, the
token-weighted mean at least the asked one, at the least summed output error; the knapsack it solves."""

import itertools

import numpy as np
import pytest

from actsparse.ir.activations import apply
from actsparse.passes.block_weights import BlockWeights
from actsparse.passes.calibrate import RoutedRows
from actsparse.passes.routed_thresholds import EXPERT_SPAN, EXPERT_STEP, expert_errors, level_options, pooled_levels
from actsparse.passes.sensitivity_allocation import choose_one_each

D, N = 24, 40


def _pooled(experts, rows, routed, sparsity):
    options = level_options(sparsity)
    errors = np.array([expert_errors(bw, r, rr.weights, options) for bw, r, rr in zip(experts, rows, routed)])
    return pooled_levels(errors, [rr.tokens for rr in routed], options, sparsity)


def _expert(rng, down_scale=1.0):
    return BlockWeights(rng.standard_normal((N, D)).astype(np.float32) / D**0.5,
                        rng.standard_normal((N, D)).astype(np.float32) / D**0.5,
                        down_scale * rng.standard_normal((D, N)).astype(np.float32) / N**0.5, "silu")


def test_choose_one_each_is_the_least_cost_choice_within_the_bounds():
    """The knapsack against brute force over every choice, on random instances (some options out: inf)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        costs = rng.random((4, 3))
        costs[rng.random((4, 3)) < 0.15] = np.inf
        amounts = rng.integers(0, 5, (4, 3)).astype(float)
        low = float(rng.integers(4, 12))
        best = None
        for pick in itertools.product(range(3), repeat=4):
            total = sum(amounts[i, j] for i, j in enumerate(pick))
            cost = sum(costs[i, j] for i, j in enumerate(pick))
            if total >= low and np.isfinite(cost) and (best is None or cost < best):
                best = cost
        chosen = choose_one_each(costs, amounts, low, np.inf)
        if best is None:
            assert chosen is None
        else:
            assert sum(amounts[i, j] for i, j in enumerate(chosen)) >= low
            assert sum(costs[i, j] for i, j in enumerate(chosen)) == pytest.approx(best)


def test_expert_errors_are_the_routed_output_error_of_dropping_the_neurons_under_each_level():
    """Golden: Σ r² ‖W_down (h − h_kept)‖² with the level's quantile of |act(g)| over all the expert's rows; 0 at
    level 0, growing with the level."""
    rng = np.random.default_rng(1)
    bw, rows = _expert(rng), rng.standard_normal((50, D)).astype(np.float32)
    r = rng.random(50).astype(np.float32)
    levels = np.array([0.0, 0.3, 0.5, 0.7])
    errors = expert_errors(bw, rows, r, levels)
    a = apply("silu", rows @ bw.w_gate.T)
    h = a * (rows @ bw.w_up.T)
    for lv, err in zip(levels[1:], errors[1:]):
        dropped = np.where(np.abs(a) <= np.quantile(np.abs(a), lv), h, 0)
        assert err == pytest.approx(float(np.square(r[:, None] * (dropped @ bw.w_down.T)).sum()), rel=1e-4)
    assert errors[0] == 0 and (np.diff(errors) > 0).all()


def test_pooled_levels_spare_the_expert_whose_output_weighs_most_and_keep_the_layers_reads():
    """Four experts, one whose down projection is 10x the others': it keeps more neurons (a lower sparsity), the
    others take more, the token-weighted mean stays at least the asked 0.5, every level on the grid within
    0.5 ± EXPERT_SPAN; the summed error is below uniform's (which the knapsack could have chosen)."""
    rng = np.random.default_rng(2)
    experts = [_expert(rng, 10.0 if e == 1 else 1.0) for e in range(4)]
    rows = [rng.standard_normal((80, D)).astype(np.float32) for _ in experts]
    routed = [RoutedRows(rng.random(80).astype(np.float32), 80) for _ in experts]
    levels = _pooled(experts, rows, routed, 0.5)
    assert levels[1] < 0.5 and min(levels[0], levels[2], levels[3]) >= 0.5
    assert np.mean(levels) >= 0.5 - 1e-9
    assert all(abs(lv - 0.5) <= EXPERT_SPAN + 1e-9 and abs(lv / EXPERT_STEP - round(lv / EXPERT_STEP)) < 1e-6
               for lv in levels)

    def summed(chosen):
        return sum(float(expert_errors(bw, r, rr.weights, np.array([lv]))[0])
                   for bw, r, rr, lv in zip(experts, rows, routed, chosen))

    assert summed(levels) < summed([0.5] * 4)


def test_pooled_levels_weigh_each_expert_by_the_tokens_routed_to_it():
    """The budget is the layer's reads: an expert the router sends 10x the tokens counts 10x (Σ n_e s_e >= s Σ n_e),
    so with identical experts it cannot drop below the asked sparsity while the others make up for it."""
    rng = np.random.default_rng(3)
    bw = _expert(rng)
    rows = [rng.standard_normal((60, D)).astype(np.float32) for _ in range(3)]
    routed = [RoutedRows(np.ones(60, np.float32), n) for n in (600, 60, 60)]
    levels = _pooled([bw] * 3, rows, routed, 0.5)
    assert np.dot(levels, [600, 60, 60]) >= 0.5 * 720 - 1e-6
