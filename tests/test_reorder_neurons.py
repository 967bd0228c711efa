"""reorder-neurons: the neurons of each sparse gated MLP sorted by calibrated frequency, semantics unchanged."""

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from actsparse import targets
from actsparse.ir import evaluate, parse_graph, print_graph
from actsparse.passes import pipeline_for, run_pipeline
from actsparse.passes.reorder_neurons import ReorderNeurons, neuron_frequency
from tests.helpers import gated_mlp_graph, mlp_input

GOLDEN = Path(__file__).parent / "golden"


def _skewed_graph():
    """A gated MLP whose neurons fire at very different rates (gate row j shifted by a j-dependent bias)."""
    graph = gated_mlp_graph(d=16, n=40, seed=3)
    weights = dict(graph.weights)
    gate = weights["mlp.gate.weight"].copy()
    gate[:, 0] = np.linspace(-2.0, 2.0, 40)[np.random.default_rng(0).permutation(40)]  # x[..., 0] == 1
    weights["mlp.gate.weight"] = gate
    return parse_graph(print_graph(graph), weights)


def _calibration(n=6):
    return [(mlp_input(d=16, seq=8, seed=s),) for s in range(10, 10 + n)]


def test_reorder_golden_stats_and_order():
    graph = _skewed_graph()
    dense_gate = replace(targets.get("x86"), exact_gate="dense")   # the golden must not depend on the host
    result = run_pipeline(graph, [*pipeline_for("exact", dense_gate),
                                  ReorderNeurons(calibration=tuple(_calibration()), progress=False)])
    assert result.stats["reorder-neurons"] == {"reordered": 1}
    text = print_graph(result.graph)
    path = GOLDEN / "reglu_skewed.reorder.after.ir"
    if os.environ.get("ACTSPARSE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
    block = next(n for n in result.graph.nodes if n.op == "sparse_gated_mlp")
    rows = np.concatenate([x[0].reshape(-1, 16) for x in _calibration()])
    freq = neuron_frequency(block, result.graph.weights, rows)
    assert np.all(np.diff(freq) <= 0), "hottest neuron first"
    assert freq[0] > freq[-1]
    groups = block.attrs["group_frequency"]
    assert len(groups) == 1 and groups[0] == pytest.approx(freq.mean(), abs=1e-4)
    x = mlp_input(d=16, seq=5, seed=99)
    np.testing.assert_allclose(evaluate(result.graph, [x])[0], evaluate(graph, [x])[0], rtol=1e-4, atol=1e-6)


def test_reorder_permutes_a_certified_gate_with_its_int8_copy():
    """Exact mode's certified gate (an int8 q8_0 copy of W_gate and per-neuron coefficients feeding the scores) is
    permuted with the block: the int8 rows and coefficients follow the neurons, the output stays the dense one."""
    graph = _skewed_graph()
    certified = replace(targets.get("x86"), exact_gate="certified")
    result = run_pipeline(graph, [*pipeline_for("exact", certified),
                                  ReorderNeurons(calibration=tuple(_calibration()), progress=False)])
    assert result.stats["certify-exact-gate"] and result.stats["reorder-neurons"] == {"reordered": 1}
    names = {n.attrs["name"] for n in result.graph.nodes if n.op == "weight"}
    assert {"mlp.gate.weight.certified.w8.ordered", "mlp.gate.weight.certified.coef.ordered"} <= names
    x = mlp_input(d=16, seq=5, seed=99)
    np.testing.assert_allclose(evaluate(result.graph, [x])[0], evaluate(graph, [x])[0], rtol=1e-4, atol=1e-6)


def test_reorder_tiny_llama_matches_torch():
    from actsparse.frontends.torch_export import import_torch
    from actsparse.models import TinyConfig, TinyLlama
    from actsparse.passes.base import apply_pass

    torch.manual_seed(0)
    model = TinyLlama(TinyConfig(d_model=32, n_layers=2, n_heads=2, n_ff=96, max_seq=32, mlp_act="relu")).eval()
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(1))
    graph = import_torch(model, (ids,))
    calib = tuple((np.random.default_rng(s).integers(0, 256, (1, 12)),) for s in range(4))
    sparse = run_pipeline(graph, pipeline_for("exact", replace(targets.get("x86"), exact_gate="dense"))).graph
    out = apply_pass(ReorderNeurons(calibration=calib, progress=False), sparse)
    assert out.stats == {"reordered": 2}
    names = [w for w in out.graph.weights if w.endswith(".ordered")]
    assert len(names) == 6  # gate, up, down per layer
    with torch.no_grad():
        expected = model(ids)
    expected = expected[0] if isinstance(expected, tuple) else expected
    got = evaluate(out.graph, [ids.numpy()])[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["svd", "sign"])
def test_reorder_permutes_predictor_scores(kind):
    graph = _skewed_graph()
    calib = tuple(_calibration(8))
    passes = pipeline_for("predictor", calibration=calib, predictor=kind, recall=0.9, predictor_budget=0.5)
    base = run_pipeline(graph, passes)
    ordered = run_pipeline(base.graph, [ReorderNeurons(calibration=calib, progress=False)])
    assert ordered.stats["reorder-neurons"] == {"reordered": 1}
    n_ordered = sum(w.endswith(".ordered") for w in ordered.graph.weights)
    assert n_ordered == 4  # gate, up, down and the scores' per-neuron rows
    x = mlp_input(d=16, seq=6, seed=123)
    np.testing.assert_allclose(evaluate(ordered.graph, [x])[0], evaluate(base.graph, [x])[0], rtol=1e-4, atol=1e-6)
