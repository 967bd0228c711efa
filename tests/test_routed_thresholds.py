"""Routed experts' thresholds (passes/routed_thresholds.py): weighted CATS, a threshold per neuron on the layer's
output scale (|act(g_i)|·c_i·|r| against a gate cut τ_g per layer, t_i = τ_g / c_i), then a cut on h
(|h_i|·‖W_down[:, i]‖·|r| against τ_h), the cuts pooled over the layer's experts weighed by the tokens routed to
each, their split the least-error one."""

import numpy as np
import pytest

from actsparse.ir.activations import apply
from actsparse.ir.sparse_variants import neuron_threshold_parts
from actsparse.passes.block_weights import BlockWeights
from actsparse.passes.routed_thresholds import (
    NEVER_KEPT,
    SHIFTS,
    Cuts,
    _plan,
    expert_scores,
    least_error_cuts,
    pooled_quantile,
)

D, N = 24, 40


def _expert(rng, down_scale=1.0):
    return BlockWeights(rng.standard_normal((N, D)).astype(np.float32) / D**0.5,
                        rng.standard_normal((N, D)).astype(np.float32) / D**0.5,
                        down_scale * rng.standard_normal((D, N)).astype(np.float32) / N**0.5, "silu")


class _Block:
    def __init__(self, gate_act="silu", threshold=0.0):
        self.attrs, self.loc = {"gate_act": gate_act, "threshold": threshold}, "e0"


def test_expert_scores_are_the_gate_times_the_neurons_weight_and_the_contribution_times_the_routing_weight():
    """Golden: c_i = ‖W_down[:, i]‖·mean|u_i| over the expert's rows, score = |silu(g_i)|·c_i·|r| per row, the
    contribution |silu(g_i)·u_i|·‖W_down[:, i]‖·|r|; a row stands for tokens / rows of its layer's pool."""
    rng = np.random.default_rng(1)
    bw, rows = _expert(rng), rng.standard_normal((50, D)).astype(np.float32)
    r = rng.uniform(-1, 1, 50).astype(np.float32)
    scored = expert_scores(bw, rows, r, tokens=200)
    u = rows @ bw.w_up.T
    norms = np.linalg.norm(bw.w_down, axis=0)
    c = norms * np.abs(u).mean(0)
    a = apply("silu", rows @ bw.w_gate.T)
    np.testing.assert_allclose(scored.weights, c, rtol=1e-5)
    np.testing.assert_allclose(scored.scores, np.abs(a) * c * np.abs(r)[:, None], rtol=1e-5)
    np.testing.assert_allclose(scored.contributions, np.abs(a * u) * norms * np.abs(r)[:, None], rtol=1e-5)
    assert scored.weight == 4.0


def test_an_experts_thresholds_are_the_cuts_over_each_neurons_weight_and_down_norm():
    """t_i = τ_g / c_i, t'_i = τ_h / ‖W_down[:, i]‖: a neuron whose down column is 10x the others' passes the gate at a
    tenth of their gate value; a neuron of zero down column is never kept; a FATReLU's own t floors the gate cut (its
    gate becomes relu in the pass); on the calibration rows the shares dropped are the cuts' quantiles (the h share
    counting the gate's), a row of half the routing weight keeps fewer neurons, and the effective sparsity is the up
    rows the gate cut skips plus the down rows the h cut skips."""
    rng = np.random.default_rng(4)
    bw = _expert(rng)
    bw.w_down[:, 3] *= 10
    bw.w_down[:, 5] = 0
    rows = rng.standard_normal((400, D)).astype(np.float32)
    r = np.where(np.arange(400) % 2 == 0, 0.6, 0.3).astype(np.float32)
    scored = expert_scores(bw, rows, r)
    gate = float(np.quantile(scored.scores, 0.4))
    h = float(np.quantile(np.where(scored.scores > gate, scored.contributions, 0), 0.6))
    plan = _plan(_Block(), bw, 400, scored, Cuts(gate, h, 0.1), 0.5)
    t = plan.thresholds
    assert t.shape == (2, N) and t.dtype == np.float32 and t[0, 5] == t[1, 5] == NEVER_KEPT
    np.testing.assert_allclose(t[0, :3] * scored.weights[:3], gate, rtol=1e-5)
    np.testing.assert_allclose(t[1, :3] * scored.down_norms[:3], h, rtol=1e-5)
    kept, out = neuron_threshold_parts(rows, bw.w_gate, bw.w_up, {"gate_act": "silu", "up_act": "identity"},
                                       t[0], t[1], scale=r[:, None])
    assert np.mean(~kept) == pytest.approx(0.4, abs=0.01) and np.mean(out == 0) == pytest.approx(0.6, abs=0.01)
    assert plan.sparsity == pytest.approx(0.6, abs=0.01)
    assert plan.effective == pytest.approx((0.4 + 0.6) / 3, abs=0.01)
    assert kept[:, 3].mean() > kept[:, :3].mean()          # the heavy neuron kept more often
    assert kept[0::2].mean() > kept[1::2].mean()           # the rows of the larger routing weight keep more
    assert (_plan(_Block("fatrelu", 0.7), bw, 400, scored, Cuts(gate, h, 0.1), 0.5).thresholds[0] >= 0.7).all()
    lossless = _plan(_Block(), bw, 3, None, None, 0.5)     # too few tokens: t = 0, nothing calibrated
    assert (lossless.thresholds == 0).all() and np.isnan(lossless.sparsity)


def test_the_pooled_quantile_weighs_each_experts_rows_by_their_tokens():
    """Golden against np.quantile over each expert's scores repeated in proportion to its tokens / rows: an expert
    of few rows standing for many tokens weighs as those tokens; the tokens' dropped share is the asked one, the
    experts' shares differing (the scores of one are larger)."""
    rng = np.random.default_rng(6)
    scores = [rng.exponential(1.0, (20, 8)), 3 * rng.exponential(1.0, (10, 8))]
    cut = pooled_quantile(scores, [1.0, 4.0], 0.5)   # the second expert's 10 rows stand for 40 tokens
    repeated = np.concatenate([scores[0].ravel(), np.repeat(scores[1].ravel(), 4)])
    assert cut == pytest.approx(np.quantile(repeated, 0.5, method="inverted_cdf"))
    dropped = [float(np.mean(s <= cut)) for s in scores]
    assert (20 * dropped[0] + 40 * dropped[1]) / 60 == pytest.approx(0.5, abs=0.02)
    assert dropped[0] > 0.6 > 0.4 > dropped[1]


def test_the_split_of_the_cuts_is_the_least_error_one_and_reads_what_cats_alone_would():
    """Per shift in SHIFTS the gate cut drops sparsity - shift of the pooled scores and the h cut sparsity + shift
    of the h values (the gate's drops counted); the chosen one's squared dropped contributions are the least (brute
    force over the shifts); shift 0 has no cut on h. Two experts of one layer, the second's rows weighing twice."""
    rng = np.random.default_rng(8)
    experts = [expert_scores(_expert(rng, s), rng.standard_normal((300, D)).astype(np.float32),
                             rng.uniform(0.2, 1.0, 300), tokens) for s, tokens in ((1.0, 300), (2.0, 600))]
    weights = [e.weight for e in experts]
    chosen = least_error_cuts(experts, 0.5)
    errors = {}
    for shift in SHIFTS:
        gate = pooled_quantile([e.scores for e in experts], weights, 0.5 - shift)
        kept = [np.where(e.scores > gate, e.contributions, 0) for e in experts]
        h = pooled_quantile(kept, weights, 0.5 + shift) if shift else 0.0
        drop = [(e.scores <= gate) | (e.contributions <= h) for e in experts]
        share = sum(w * d.sum() for w, d in zip(weights, drop)) / sum(w * d.size for w, d in zip(weights, drop))
        assert share == pytest.approx(0.5 + shift, abs=0.01)
        errors[shift] = sum(w * np.square(e.contributions[d]).sum() for w, e, d in zip(weights, experts, drop))
        if shift == chosen.shift:
            assert (chosen.gate, chosen.h) == pytest.approx((gate, h))
    assert errors[chosen.shift] == min(errors.values())
    assert chosen.shift > 0 and errors[0.0] > errors[chosen.shift]   # the cut on h pays here
    assert least_error_cuts(experts, 0.95).shift <= 0.05             # no shift past a sparsity of 1
