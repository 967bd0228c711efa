"""Error compensation of input-sparse blocks (passes/error_compensation.py): the closed-form fit recovers a known
affine map, it fires and lowers the calibration output error on a tiny block, and the benchmark's torch forward
with the compensation equals the numpy reference of the compensated block."""

from __future__ import annotations

import numpy as np
import pytest

from actsparse.passes.block_weights import BlockWeights
from actsparse.passes.error_compensation import (
    affine_fit,
    compensated_weights,
    fit_compensation,
    output_error,
)
from actsparse.passes.sparsity_methods import calibrate_blocks

torch = pytest.importorskip("torch")


def _block_and_rows(seed=0, d=16, d_ff=32, n=512):
    rng = np.random.default_rng(seed)
    block = BlockWeights(*((rng.standard_normal(s) / np.sqrt(s[1])).astype(np.float32)
                           for s in ((d_ff, d), (d_ff, d), (d, d_ff))), "silu")
    mix = rng.standard_normal((d, d)).astype(np.float32)   # correlated, not zero-mean: dropping biases the output
    rows = (rng.standard_normal((n, d)).astype(np.float32) @ mix + 0.5).astype(np.float32)
    return block, rows


def test_affine_fit_recovers_a_known_map():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((200, 3))
    a, b = affine_fit(z, 1.5 * z + np.array([0.2, -1.0, 3.0]), bias=True)
    np.testing.assert_allclose(a, 1.5, rtol=1e-5)
    np.testing.assert_allclose(b, [0.2, -1.0, 3.0], rtol=1e-5, atol=1e-6)
    a, b = affine_fit(np.zeros((10, 2)), np.ones((10, 2)), bias=False)   # nothing to scale: a stays 1
    assert (a == 1).all() and (b == 0).all()


@pytest.mark.parametrize("name", ["wina-greedy", "rotated-wina-greedy"])
@pytest.mark.parametrize("side", ["x", "h", "both"])
def test_compensation_fires_and_lowers_the_calibration_output_error(name, side):
    block, rows = _block_and_rows()
    plan = calibrate_blocks([block], [rows], name, 0.5, progress=False)[0]
    fitted = fit_compensation(block, plan, rows, side)
    comp = fitted.compensation
    assert (comp.gate_scale is not None) == (side != "h") and (comp.down_scale is not None) == (side != "x")
    scales = [s for s in (comp.gate_scale, comp.up_scale, comp.down_scale) if s is not None]
    assert all(np.abs(s - 1).max() > 1e-3 for s in scales)   # it fired
    if side == "x":   # least squares on the pre-activations: their error drops (the block output's need not)
        from actsparse.ir.input_sparse import keep_mask
        from actsparse.passes.error_compensation import _turned

        x, w_gate, _ = _turned(block, plan, rows)
        g_sparse = np.where(keep_mask(x, plan.x_thr, plan.x_keep), x, 0) @ w_gate.T
        g_dense = rows @ block.w_gate.T
        assert np.square(g_sparse * comp.gate_scale - g_dense).sum() < np.square(g_sparse - g_dense).sum()
    else:   # the down fit is the last step: the block output's error drops
        before = output_error(block, plan if side == "h" else fit_compensation(block, plan, rows, "x"), rows)
        assert output_error(block, fitted, rows) < before   # least squares: never above, lower when it fires


def test_install_with_compensation_equals_the_compensated_reference():
    from types import SimpleNamespace

    from actsparse.benchmarks.threshold_frontier import install
    from actsparse.ir.input_sparse import input_sparse_reference

    block, rows = _block_and_rows(2)
    plan = fit_compensation(block, calibrate_blocks([block], [rows], "wina-greedy", 0.5, progress=False)[0],
                            rows, "both")
    mlp = torch.nn.Module()
    mlp.act_fn = torch.nn.SiLU()
    for name, w in (("gate_proj", block.w_gate), ("up_proj", block.w_up), ("down_proj", block.w_down)):
        setattr(mlp, name, SimpleNamespace(weight=torch.from_numpy(w)))
    model = SimpleNamespace(model=SimpleNamespace(layers=[SimpleNamespace(mlp=mlp)]))
    install(model, [plan])
    with torch.no_grad():
        got = mlp.forward(torch.from_numpy(rows)).numpy()
    cb = compensated_weights(block, plan.compensation)
    want = input_sparse_reference(rows, cb.w_gate.T, cb.w_up.T, cb.w_down.T, plan.x_thr, plan.h_thr,
                                  {**block.attrs, **plan.attrs}) + plan.compensation.down_bias
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["wina-greedy", "rotated-wina-greedy"])
def test_lowrank_factors_capture_the_dropped_inputs_error_and_are_exact_at_full_rank(name):
    from actsparse.ir.input_sparse import keep_mask
    from actsparse.passes.error_compensation import _turned, fit_lowrank, lowrank_share

    block, rows = _block_and_rows(3)
    plan = calibrate_blocks([block], [rows], name, 0.5, progress=False)[0]
    x, w_gate, w_up = _turned(block, plan, rows)
    dropped = np.where(keep_mask(x, plan.x_thr, plan.x_keep), 0, x)
    error = dropped @ np.concatenate([w_gate, w_up]).T   # the gate/up pre-activations' error of the sparse x
    left = []
    for rank in (2, 8, 16):
        r, lo = fit_lowrank(block, plan, rows, rank)
        assert r.shape == (16, rank) and lo.shape == (rank, 64)
        left.append(np.square(error - dropped @ r @ lo).sum() / np.square(error).sum())
    assert left[0] < 0.9 and left[0] > left[1] > left[2] and left[2] < 1e-8   # rank d: exact
    assert lowrank_share(block, 8) == pytest.approx(8 * (16 + 64) / (3 * 16 * 32))


def test_lowrank_forward_at_full_rank_equals_the_block_with_dense_x():
    from dataclasses import replace
    from types import SimpleNamespace

    from actsparse.benchmarks.threshold_compensation import install_lowrank
    from actsparse.ir.input_sparse import input_sparse_reference
    from actsparse.passes.error_compensation import fit_lowrank

    block, rows = _block_and_rows(4)
    plan = calibrate_blocks([block], [rows], "rotated-wina-greedy", 0.5, progress=False)[0]
    mlp = torch.nn.Module()
    mlp.act_fn = torch.nn.SiLU()
    model = SimpleNamespace(model=SimpleNamespace(layers=[SimpleNamespace(mlp=mlp)]))
    kept = [[0, 0, 0]]
    install_lowrank(model, [block], [plan], [fit_lowrank(block, plan, rows, 16)], kept)
    with torch.no_grad():
        got = mlp.forward(torch.from_numpy(rows)).numpy()
    dense_x = replace(plan, x_thr=np.full_like(plan.x_thr, -1.0))   # every x entry kept
    want = input_sparse_reference(rows, block.w_gate.T, block.w_up.T, block.w_down.T, dense_x.x_thr, plan.h_thr,
                                  {**block.attrs, **plan.attrs})
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * np.abs(want).max())   # Q stored q8_0 in the hook
    assert kept[0][0] == len(rows) and 0 < kept[0][1] < kept[0][0] * 16
