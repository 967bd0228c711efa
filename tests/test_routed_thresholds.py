"""Routed experts' thresholds (passes/routed_thresholds.py): weighted CATS, a threshold per neuron on the layer's
output scale (|act(g_i)|·c_i·|r| against one cut τ per layer, t_i = τ / c_i), the cut pooled over the layer's
experts weighed by the tokens routed to each."""

import numpy as np
import pytest

from actsparse.ir.activations import apply
from actsparse.passes.block_weights import BlockWeights
from actsparse.passes.routed_thresholds import NEVER_KEPT, _plan, expert_scores, shared_cut

D, N = 24, 40


def _expert(rng, down_scale=1.0):
    return BlockWeights(rng.standard_normal((N, D)).astype(np.float32) / D**0.5,
                        rng.standard_normal((N, D)).astype(np.float32) / D**0.5,
                        down_scale * rng.standard_normal((D, N)).astype(np.float32) / N**0.5, "silu")


class _Block:
    def __init__(self, gate_act="silu", threshold=0.0):
        self.attrs, self.loc = {"gate_act": gate_act, "threshold": threshold}, "e0"


def test_expert_scores_are_the_gate_times_the_neurons_weight_times_the_routing_weight():
    """Golden: c_i = ‖W_down[:, i]‖·mean|u_i| over the expert's rows, score = |silu(g_i)|·c_i·|r| per row."""
    rng = np.random.default_rng(1)
    bw, rows = _expert(rng), rng.standard_normal((50, D)).astype(np.float32)
    r = rng.uniform(-1, 1, 50).astype(np.float32)
    scored = expert_scores(bw, rows, r)
    u = rows @ bw.w_up.T
    c = np.linalg.norm(bw.w_down, axis=0) * np.abs(u).mean(0)
    np.testing.assert_allclose(scored.weights, c, rtol=1e-5)
    np.testing.assert_allclose(scored.scores, np.abs(apply("silu", rows @ bw.w_gate.T)) * c * np.abs(r)[:, None],
                               rtol=1e-5)


def test_an_experts_thresholds_are_the_cut_over_each_neurons_weight():
    """t_i = τ / c_i: a neuron whose down column is 10x the others' passes at a tenth of their gate value; a
    neuron of zero down column (c_i = 0) is never kept; a FATReLU's own t floors them (its gate becomes relu in the
    pass); on the calibration rows the share dropped is the cut's quantile, and a row of half the routing weight
    keeps fewer neurons."""
    rng = np.random.default_rng(4)
    bw = _expert(rng)
    bw.w_down[:, 3] *= 10
    bw.w_down[:, 5] = 0
    rows = rng.standard_normal((400, D)).astype(np.float32)
    r = np.where(np.arange(400) % 2 == 0, 0.6, 0.3).astype(np.float32)
    scored = expert_scores(bw, rows, r)
    cut = float(np.quantile(scored.scores, 0.5))
    plan = _plan(_Block(), bw, 400, scored, cut, 0.5)
    assert plan.thresholds[5] == NEVER_KEPT and plan.thresholds.dtype == np.float32
    np.testing.assert_allclose(plan.thresholds[:3] * scored.weights[:3], cut, rtol=1e-5)
    kept = np.abs(apply("silu", rows @ bw.w_gate.T)) * r[:, None] > plan.thresholds
    assert np.mean(~kept) == pytest.approx(0.5, abs=0.01) and plan.sparsity == pytest.approx(0.5, abs=0.01)
    assert kept[:, 3].mean() > kept[:, :3].mean()          # the heavy neuron kept more often
    assert kept[0::2].mean() > kept[1::2].mean()           # the rows of the larger routing weight keep more
    assert (_plan(_Block("fatrelu", 0.7), bw, 400, scored, cut, 0.5).thresholds >= 0.7).all()
    lossless = _plan(_Block(), bw, 3, None, None, 0.5)     # too few tokens: t = 0, nothing calibrated
    assert (lossless.thresholds == 0).all() and np.isnan(lossless.sparsity)


def test_the_shared_cut_is_the_quantile_of_the_experts_scores_weighed_by_their_tokens():
    """Golden against np.quantile over each expert's scores repeated in proportion to its tokens / rows: an expert
    of few rows standing for many tokens weighs as those tokens; the tokens' dropped share is the asked one, the
    experts' shares differing (the scores of one are larger)."""
    rng = np.random.default_rng(6)
    scores = [rng.exponential(1.0, (20, 8)), 3 * rng.exponential(1.0, (10, 8))]
    tokens = [20, 40]   # the second expert's 10 rows stand for 40 tokens
    cut = shared_cut(scores, tokens, 0.5)
    repeated = np.concatenate([scores[0].ravel(), np.repeat(scores[1].ravel(), 4)])
    assert cut == pytest.approx(np.quantile(repeated, 0.5, method="inverted_cdf"))
    dropped = [float(np.mean(s <= cut)) for s in scores]
    assert (20 * dropped[0] + 40 * dropped[1]) / 60 == pytest.approx(0.5, abs=0.02)
    assert dropped[0] > 0.6 > 0.4 > dropped[1]
