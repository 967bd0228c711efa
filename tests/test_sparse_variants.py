"""The sparse gated-MLP op family (ir/sparse_variants.py): a variant is one table entry, and the verifier, the
interpreter, densify and the report read the entry — a new variant with an extra input works through all of them
without editing them. The report's fields come from the node (a ReGLU block in threshold mode is 'reglu')."""

from __future__ import annotations

import numpy as np
import pytest

from actsparse.ir import evaluate, parse_graph, verify
from actsparse.ir.sparse_variants import VARIANTS, SparseVariant, dense_intermediate, variant
from actsparse.ir.verify import VerifyError
from actsparse.passes import run_pipeline
from actsparse.passes.densify import Densify
from actsparse.runtime.report import measure_blocks

from .helpers import gated_mlp_graph, mlp_input

ATTRS = "{{'gate_act': 'silu', 'mode': '{mode}', 'pattern': 'swiglu', 'up_act': 'identity'}}"
TEXT = ("graph @main(%x: f32[2,8]) {{\n  @keep : f32[16]\n  @wdt : f32[16,8]\n  @wg : f32[16,8]\n  @wu : f32[16,8]\n"
        "  %0 = sparse_gated_mlp(%x, @wg, @wu, @wdt{extra}) " + ATTRS + " : f32[2,8]  # mlp\n  return %0\n}}\n")


def _masked(x, w_gate, w_up, extras, attrs, b_gate=None, b_up=None):
    return dense_intermediate(x, w_gate, w_up, attrs, b_gate, b_up) * extras["keep"]


MASKED = SparseVariant("masked", attrs={}, extra_inputs=("keep",), intermediate=_masked,
                       kernels={}, kernel_options=lambda attrs: {},
                       dense_attrs=lambda attrs: {"gate_act": attrs["gate_act"], "up_act": attrs["up_act"],
                                                  "fused": False},
                       report=lambda attrs: {"reason": "a fixed neuron mask"}, doc="a toy variant for this test")


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    keep = (rng.random(16) > 0.5).astype(np.float32)
    return {"keep": keep, **{n: rng.standard_normal(s).astype(np.float32)
                             for n, s in (("wg", (16, 8)), ("wu", (16, 8)), ("wdt", (16, 8)))}}


def test_a_new_variant_with_an_extra_input_is_one_entry(monkeypatch):
    monkeypatch.setitem(VARIANTS, "masked", MASKED)
    weights = _weights()
    graph = verify(parse_graph(TEXT.format(extra=", @keep", mode="masked"), weights))
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    g, u = x @ weights["wg"].T, x @ weights["wu"].T
    want = (g / (1 + np.exp(-g)) * u * weights["keep"]) @ weights["wdt"]
    np.testing.assert_allclose(evaluate(graph, [x])[0], want, rtol=1e-5, atol=1e-6)
    (row,) = measure_blocks(graph, [x], mode="masked")
    assert (row.location, row.pattern, row.mode, row.n_ff, row.reason) == ("mlp", "swiglu", "masked", 16,
                                                                           "a fixed neuron mask")
    assert row.sparsity == pytest.approx(np.mean(np.broadcast_to(weights["keep"], (2, 16)) == 0))
    dense = run_pipeline(graph, [Densify()])
    node = next(n for n in dense.graph.nodes if n.op == "sparse_gated_mlp")
    assert node.attrs["mode"] == "dense" and dense.stats["densify"] == {"swiglu": 1}
    assert len(node.inputs) == 4  # the extra input is dropped
    np.testing.assert_allclose(evaluate(dense.graph, [x])[0], (g / (1 + np.exp(-g)) * u) @ weights["wdt"],
                               rtol=1e-5, atol=1e-6)


def test_the_verifier_checks_a_variants_extra_inputs(monkeypatch):
    monkeypatch.setitem(VARIANTS, "masked", MASKED)
    with pytest.raises(VerifyError, match=r"mode='masked'\} takes 5 inputs \(x, w_gate, w_up, w_down_t, keep\), got 4"):
        verify(parse_graph(TEXT.format(extra="", mode="masked"), _weights()))
    with pytest.raises(VerifyError, match="takes 4 inputs"):
        verify(parse_graph(TEXT.format(extra=", @keep", mode="exact"), _weights()))
    with pytest.raises(ValueError, match="unknown sparse_gated_mlp mode 'nope'; known: exact, threshold"):
        variant("nope")


def test_report_of_a_reglu_block_in_threshold_mode_says_reglu():
    import actsparse

    graph = gated_mlp_graph(act="relu")
    cm_graph = run_pipeline(graph, actsparse.passes.pipeline_for(
        "threshold", calibration=[(mlp_input(seq=32, seed=s),) for s in range(3)], sparsity=0.8)).graph
    node = next(n for n in cm_graph.nodes if n.op == "sparse_gated_mlp")
    assert (node.attrs["gate_act"], node.attrs["pattern"]) == ("fatrelu", "reglu")
    (row,) = measure_blocks(cm_graph, [mlp_input(seq=16, seed=9)], mode="threshold")
    assert (row.pattern, row.mode, row.method) == ("reglu", "threshold", "cats")
    assert row.threshold == node.attrs["threshold"] and row.calibrated_sparsity == node.attrs["calibrated_sparsity"]


def test_neuron_threshold_keeps_each_neuron_above_its_own_cuts_and_has_no_per_block_kernel():
    """`neuron-threshold` (a routed expert's form before route-moe stacks it): neuron i kept where |silu(g_i)|·|r| >
    thr[0, i], then h = a·u kept where |h_i|·|r| > thr[1, i] (r the token's scale: its routing weight; NaN kept);
    the report shows it as threshold mode with the up rows of a neuron the gate cut dropped and the down rows of a
    dropped h not read; lowered on its own (no route-moe) it is one error naming the variant."""
    from actsparse import targets
    from actsparse.codegen.context import LoweringError
    from actsparse.codegen.lower import lower_graph

    weights = _weights(3)
    rng = np.random.default_rng(4)
    weights["keep"] = np.stack([rng.uniform(0.0, 0.3, 16), rng.uniform(0.0, 0.05, 16)]).astype(np.float32)
    text = TEXT.format(extra=", @keep, %r", mode="neuron-threshold").replace(
        "graph @main(%x: f32[2,8])", "graph @main(%x: f32[2,8], %r: f32[2,1])").replace("f32[16]", "f32[2,16]")
    graph = verify(parse_graph(text, weights))
    x = rng.standard_normal((2, 8)).astype(np.float32)
    r = np.array([[1.0], [-0.25]], np.float32)   # the second token's |r| is a quarter: it keeps fewer neurons
    g, u = x @ weights["wg"].T, x @ weights["wu"].T
    a = g / (1 + np.exp(-g))
    keep = np.abs(a) * np.abs(r) > weights["keep"][0]
    h = np.where(keep, a, 0) * u
    keep_h = np.abs(h) * np.abs(r) > weights["keep"][1]
    assert 0 < keep.mean() < 1 and 0 < (keep & ~keep_h).sum()   # each cut drops something
    np.testing.assert_allclose(evaluate(graph, [x, r])[0], np.where(keep_h, h, 0) @ weights["wdt"], rtol=1e-5,
                               atol=1e-6)
    x[0, 0] = np.nan
    assert np.isnan(evaluate(graph, [x, r])[0][0]).all()   # NaN reaches the output, as in the kernels
    x[0, 0] = 0.5
    (row,) = measure_blocks(graph, [x, r], mode="threshold")
    g, u = x @ weights["wg"].T, x @ weights["wu"].T
    a = g / (1 + np.exp(-g))
    kept = np.abs(a) * np.abs(r) > weights["keep"][0]
    h = np.where(kept, a, 0) * u
    dropped = ~(kept & (np.abs(h) * np.abs(r) > weights["keep"][1]))
    assert row.mode == "threshold" and row.sparsity == pytest.approx(dropped.mean())
    assert row.effective_sparsity == pytest.approx((np.mean(~kept) + dropped.mean()) / 3)
    with pytest.raises(LoweringError, match=r"mode='neuron-threshold'\} at mlp has no cpu kernel"):
        lower_graph(graph, targets.get("x86"))
