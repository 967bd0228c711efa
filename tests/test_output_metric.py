"""The block output's metric (passes/block_weights.py) and the method that measures in it, rotated-glu-wina-greedy:
its column norms are the first-order output error of a channel's error, its metric basis makes the turned weight
columns orthonormal in that metric, and the method compiles and runs as the IR says."""

from __future__ import annotations

import numpy as np
import pytest

import actsparse
from actsparse.ir import evaluate
from actsparse.ir.activations import apply
from actsparse.passes.block_weights import BlockWeights
from actsparse.passes.rotation import metric_rotation, rotated, weight_turn

from .helpers import few_direction_inputs, gated_mlp_graph, paying_x86, x_as_dots_see


def _block(act: str, seed: int = 0, d: int = 12, n: int = 8):
    """A block whose down projection has orthogonal columns (n <= d): the metric's one approximation, that the
    output errors of different neurons do not overlap, then holds exactly."""
    rng = np.random.default_rng(seed)
    w_gate, w_up = (rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d) for _ in range(2))
    q, _ = np.linalg.qr(rng.standard_normal((d, n)))
    w_down = (q * rng.uniform(0.5, 2.0, n)).astype(np.float32)   # orthogonal columns of different lengths
    rows = (rng.standard_normal((512, d)) * rng.uniform(0.2, 2.0, d)).astype(np.float32)
    return BlockWeights(w_gate, w_up, w_down, act), rows


def _output(bw: BlockWeights, x: np.ndarray) -> np.ndarray:
    g, u = x.astype(np.float64) @ bw.w_gate.T.astype(np.float64), x.astype(np.float64) @ bw.w_up.T.astype(np.float64)
    return (apply(bw.gate_act, g) * apply(bw.up_act, u)) @ bw.w_down.T.astype(np.float64)


@pytest.mark.parametrize("act", ["silu", "gelu_tanh", "relu"])
def test_output_metric_norms_are_the_output_error_of_a_channel_s_error(act):
    """x_norm_i² in the output metric = E over the rows of ‖Δout‖² / δ² for x_i moved by a small δ (central
    differences), where plain WINA norms are not."""
    bw, rows = _block(act)
    weighted = bw.with_output_metric(rows)
    assert weighted.neuron_metric is not None and bw.neuron_metric is None
    delta = 1e-3
    for i in range(rows.shape[1]):
        step = np.zeros(rows.shape[1], np.float64)
        step[i] = delta
        moved = (_output(bw, rows + step) - _output(bw, rows - step)) / (2 * delta)
        want = np.mean(np.square(moved).sum(1))
        assert weighted.x_norm[i] ** 2 == pytest.approx(want, rel=2e-2), i
    plain = np.sqrt(np.square(bw.w_gate).sum(0) + np.square(bw.w_up).sum(0))
    np.testing.assert_allclose(bw.x_norm, plain, rtol=1e-6)
    assert not np.allclose(weighted.x_norm / weighted.x_norm.max(), plain / plain.max(), rtol=0.05)


def test_the_metric_basis_in_the_output_metric_turns_columns_orthonormal_in_it():
    """T = M^½·V with M the output metric: T⁻¹·M·T⁻ᵀ = I, the turned block keeps the per-neuron metric (it does not
    depend on the input basis), so its column norms are all 1; the pre-activations are unchanged."""
    bw, rows = _block("gelu_tanh", seed=3)
    weighted = bw.with_output_metric(rows)
    t = metric_rotation(rows, weighted, rows.shape[1])
    turned, turned_rows = rotated(weighted, rows, t, weight_turn(t))
    inverse = np.linalg.inv(t.astype(np.float64))
    np.testing.assert_allclose(inverse @ weighted.input_metric(rows.shape[1]) @ inverse.T, np.eye(rows.shape[1]),
                               atol=1e-3)
    assert turned.neuron_metric is weighted.neuron_metric
    np.testing.assert_allclose(turned.x_norm, 1.0, atol=1e-3)
    np.testing.assert_allclose(turned_rows @ turned.w_gate.T, rows @ bw.w_gate.T, rtol=1e-3, atol=1e-3)
    # without an output metric the same function is the weights' metric, as before
    plain = np.concatenate([bw.w_gate, bw.w_up]).astype(np.float64)
    np.testing.assert_allclose(bw.input_metric(rows.shape[1]), plain.T @ plain)


def test_rotated_glu_wina_greedy_compiles_to_its_calibrated_sparsity_and_runs_as_the_ir():
    graph = gated_mlp_graph(d=48, n=96, act="gelu")
    calibration = few_direction_inputs(samples=4)   # energy in a few directions: the rotation pays
    x = calibration[0][0][:, :16]
    cm = actsparse.compile(graph, (x,), mode="threshold", calibration=calibration, sparsity=0.4,
                           method="rotated-glu-wina-greedy", target=paying_x86())
    node = next(n for n in cm.graph.nodes if n.op == "sparse_gated_mlp")
    assert node.attrs["mode"] == "input" and node.attrs.get("rotation_share", 0) > 0   # rotated: the basis paid
    assert cm.report.blocks[0].effective_calibrated == pytest.approx(0.4, abs=0.03)
    np.testing.assert_allclose(cm(x), evaluate(cm.graph, [x_as_dots_see(x, "q8_0")])[0], rtol=1e-3, atol=1e-4)


def test_every_rotated_method_has_the_unrotated_method_routed_experts_calibrate_with():
    """Routed experts calibrate a rotated-* method's experts, already turned by the layer's basis, with the method
    of the name without the rotation (routed_input.unrotated): each must be a method, and keep the output metric."""
    from actsparse.passes.routed_input import unrotated
    from actsparse.passes.sparsity_methods import METHODS

    for name, m in METHODS.items():
        if m.rotate:
            assert unrotated(name) in METHODS, name
            assert bool(METHODS[unrotated(name)].output_metric) == bool(m.output_metric), name
