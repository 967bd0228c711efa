"""Budget pooled across blocks by the loss's sensitivity (passes/sensitivity_allocation.py): the knapsack keeps the
mean budget and moves sparsity to the block whose errors cost the loss less; calibration with sensitivities uses
the weighted curves and rotates where it pays."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from actsparse.passes.block_weights import BlockWeights
from actsparse.passes.sensitivity_allocation import SPAN, STEP, choose_one_each, pooled_budgets
from actsparse.passes.sparsity_methods import calibrate_blocks, error_curves, method


def test_pooled_budgets_keep_the_mean_and_favour_the_cheap_block():
    costs = (0.1, 10.0, 1.0)
    budgets = pooled_budgets([lambda s, c=c: c * s * s for c in costs], 0.5)
    assert np.mean(budgets) == pytest.approx(0.5)
    assert budgets[0] > budgets[2] > budgets[1]          # cheapest block sparsified most
    assert max(budgets) <= 0.5 + SPAN + 1e-9 and min(budgets) >= 0.5 - SPAN - 1e-9
    # a block that cannot go beyond its budget (inf) keeps the others' pooled mean at the budget
    capped = pooled_budgets([lambda s: 0.1 * s if s <= 0.5 else np.inf, lambda s: s * s], 0.5)
    assert capped[0] <= 0.5 + 1e-9 and np.mean(capped) == pytest.approx(0.5)


def _blocks(rng, d=16, n=32):
    blocks, rows = [], []
    for _ in range(2):
        wg, wu = (rng.standard_normal((n, d)).astype(np.float32) / 4 for _ in range(2))
        blocks.append(BlockWeights(wg, wu, rng.standard_normal((d, n)).astype(np.float32), "silu"))
        rows.append(rng.standard_normal((256, d)).astype(np.float32))
    return blocks, rows


def test_weighted_curves_are_the_weighted_output_error():
    rng = np.random.default_rng(0)
    (block, _), (rows, _) = _blocks(rng)
    weights = rng.random((len(rows), block.w_down.shape[0])).astype(np.float32)
    levels = np.array([0.0, 0.5])
    x_curve, h_curve = error_curves(block, rows, method("wina-greedy"), levels, weights)
    assert x_curve[0] == pytest.approx(0.0, abs=1e-6) and h_curve[0] == pytest.approx(0.0, abs=1e-6)
    doubled = error_curves(block, rows, method("wina-greedy"), levels, 2 * weights)
    assert doubled[0][1] == pytest.approx(2 * x_curve[1], rel=1e-5) and x_curve[1] > 0


@pytest.mark.parametrize("name", ["wina-greedy", "rotated-wina-greedy"])
def test_sensitivity_moves_sparsity_to_the_insensitive_block(name):
    rng = np.random.default_rng(1)
    blocks, rows = _blocks(rng)
    d = blocks[0].w_down.shape[0]
    sensitivity = [np.full((256, d), 1e-3, np.float32), np.full((256, d), 1e3, np.float32)]
    plans = calibrate_blocks(blocks, rows, name, 0.4, progress=False, sensitivity=sensitivity)
    effective = [p.effective for p in plans]
    assert effective[0] >= effective[1] + 2 * STEP                 # block 0's errors cost the loss little
    assert np.mean(effective) == pytest.approx(0.4, abs=0.03)      # the model still skips the budget
    with pytest.raises(ValueError, match="not greedy"):
        calibrate_blocks(blocks, rows, "wina", 0.4, progress=False, sensitivity=sensitivity)


def _tiny_llama():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, vocab_size=128,
                                      max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    windows = [torch.randint(3, 128, (1, 24), generator=torch.Generator().manual_seed(s)).numpy() for s in range(4)]
    return model, windows


def test_guard_keeps_the_largest_sparsity_within_the_tolerance():
    from actsparse.passes.quality_guard import LossGuard, QualityGuardError

    rng = np.random.default_rng(1)
    blocks, rows = _blocks(rng)
    seen = []

    def increase(plans):   # a loss that grows with the plans' sparsity: 0.2 per unit of effective sparsity
        seen.append(np.mean([p.effective for p in plans]))
        return 0.2 * seen[-1]
    guard = LossGuard(increase, tolerance=0.05)
    plans = calibrate_blocks(blocks, rows, "wina-greedy", 0.4, progress=False, loss_guard=guard)
    asked, kept, measured, probes = guard.outcome
    assert asked == 0.4 and kept < 0.4 and measured <= 0.05          # the guard fired and holds
    assert np.mean([p.effective for p in plans]) == pytest.approx(kept, abs=0.02)
    assert 0.2 * (kept + guard.step) > 0.05 - 1e-3                   # the next sparsity up would not hold
    assert probes == len(seen) < 8 and "kept" in guard.describe() and "max_loss_increase=None" in guard.describe()
    loose = LossGuard(increase, tolerance=0.5)
    calibrate_blocks(blocks, rows, "wina-greedy", 0.4, progress=False, loss_guard=loose)
    assert loose.outcome[:2] == (0.4, 0.4) and loose.outcome[3] == 1   # within the tolerance: one probe
    with pytest.raises(QualityGuardError, match="max_loss_increase"):
        calibrate_blocks(blocks, rows, "wina-greedy", 0.4, progress=False, loss_guard=LossGuard(lambda p: 1.0))


def test_torch_loss_guard_measures_the_held_out_perplexity_ratio():
    from actsparse.benchmarks.threshold_frontier import block_weights, collect_rows, install
    from actsparse.passes.loss_sensitivity import mean_loss
    from actsparse.passes.torch_plans import torch_loss_guard

    model, windows = _tiny_llama()
    plans = calibrate_blocks(block_weights(model), collect_rows(model, windows[:2]), "wina-greedy", 0.5,
                             progress=False)
    guard = torch_loss_guard(model, windows[2:], lambda p: install(model, p))
    dense = mean_loss(model, windows[2:])
    increase = guard.increase(plans)
    install(model, plans)
    assert increase == pytest.approx(np.expm1(mean_loss(model, windows[2:]) - dense), rel=1e-6) and increase != 0
    install(model, None)
    assert mean_loss(model, windows[2:]) == dense      # the guard leaves the model dense



@pytest.mark.parametrize("bad", [-0.01, "0.05", float("nan"), True])
def test_a_bad_max_loss_increase_is_one_clear_error(bad):
    from actsparse.passes.input_thresholds import CalibrationError
    from actsparse.passes.torch_plans import held_out_guard

    with pytest.raises(CalibrationError, match="max_loss_increase must be a number >= 0"):
        held_out_guard(object(), [], bad)


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
