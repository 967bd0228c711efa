"""memory_budget in predictor mode: the predictor's scores pick the cold neurons, so their gate rows go to the cold
file with the up and down rows and budgets below exact mode's floor (every gate row resident) become feasible;
outputs equal the same predictor without a budget."""

import numpy as np
import pytest

import actsparse
from actsparse.ir import evaluate
from actsparse.runtime.cold_store import COLD_FILE

from .helpers import gated_mlp_graph, mlp_input

D, N = 64, 512
MLP_BYTES = 3 * D * N * 4


def _calibration(seeds=4):
    return [(mlp_input(d=D, seq=64, seed=s),) for s in range(seeds)]


@pytest.fixture(scope="module")
def compiled():
    graph = gated_mlp_graph(d=D, n=N, act="relu", up_relu=True)
    held_out = mlp_input(d=D, seq=16, seed=99)

    def build(budget=None):
        return actsparse.compile(graph, (held_out,), mode="predictor", calibration=_calibration(), predictor="svd",
                                 recall=0.95, memory_budget=budget)
    return build, held_out


@pytest.mark.parametrize("share, stats", [(0.2, {"split", "all-cold"}), (0.5, {"split", "all-cold"})])
def test_predictor_split_equals_the_unsplit_predictor(compiled, share, stats, tmp_path):
    build, held_out = compiled
    full, cm = build(), build(int(share * MLP_BYTES))
    assert set(cm.report.pass_stats["split-hot-cold"]) <= stats
    cold = [n for n in cm.graph.nodes if n.op == "sparse_gated_mlp" and n.attrs["mode"] == "cold-predictor"]
    assert len(cold) == 1 and cold[0].inputs[4].op == "slice"
    assert all(s.layout.gate for s in cm.cold_stores)   # the gate rows are bundled: below exact mode's floor
    # the MLP rows held in RAM (the predictor's own weights are not counted, see split_hot_cold.py)
    resident = sum(a.nbytes for n, a in cm.weights.items() if "predictor" not in n and n not in cm.placement)
    assert cm.placement and resident <= share * MLP_BYTES
    for x in (held_out, mlp_input(d=D, seq=1, seed=5), mlp_input(d=D, seq=9, seed=6)):
        np.testing.assert_allclose(cm(x), full(x), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(cm(x), evaluate(cm.graph, [x])[0], rtol=1e-4, atol=1e-5)
    assert sum(s.misses for s in cm.cold_stores) > 0
    loaded = actsparse.load(cm.save(tmp_path / "m.actsparse"))
    assert loaded.cold_file.name == COLD_FILE
    np.testing.assert_allclose(loaded(held_out), full(held_out), rtol=1e-4, atol=1e-5)


def test_predictor_split_golden():
    """split-hot-cold on a predictor-mode block: the hot node reads the first scores, the cold one the rest and holds
    the gate rows too (the sign predictor: integer scores, the same text on every machine)."""
    import os
    from pathlib import Path

    from actsparse.ir import print_graph
    from actsparse.passes import pipeline_for, run_pipeline

    graph = gated_mlp_graph(d=32, n=192, act="relu", up_relu=True)
    calibration = tuple((mlp_input(d=32, seq=64, seed=s),) for s in range(3))
    passes = pipeline_for("predictor", calibration=calibration, predictor="sign", recall=0.9,
                          memory_budget=int(0.45 * 3 * 32 * 192 * 4))
    result = run_pipeline(graph, passes)
    assert result.stats["split-hot-cold"] == {"split": 1}
    text = print_graph(result.graph)
    path = Path(__file__).parent / "golden" / "drelu.predictor-split.after.ir"
    if os.environ.get("ACTSPARSE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
    x = mlp_input(d=32, seq=5, seed=42)
    unsplit = run_pipeline(graph, pipeline_for("predictor", calibration=calibration, predictor="sign", recall=0.9))
    np.testing.assert_allclose(evaluate(result.graph, [x])[0], evaluate(unsplit.graph, [x])[0], rtol=1e-4, atol=1e-5)


def test_cuda_predictor_budget_places_the_cold_gate_rows_in_host_memory():
    """On a GPU target the cold part (gate rows included) is host memory; the host function computes it from the
    scores the GPU produced. Checked without a GPU: the build, the placement and the cold part's numerics."""
    from actsparse.runtime.cold_store import ColdStore, cold_layouts, cold_nodes

    from .kernel_cases import require_nvcc

    require_nvcc()
    graph = gated_mlp_graph(d=D, n=N, act="relu", up_relu=True)
    cm = actsparse.compile(graph, (mlp_input(d=D, seq=3),), target="cuda", mode="predictor", predictor="sign",
                           recall=0.9, calibration=_calibration(), memory_budget=int(0.3 * MLP_BYTES))
    (cold_node,) = cold_nodes(cm.graph)
    assert cold_node.attrs["mode"] == "cold-predictor" and cm.cold_file is None
    assert {w.attrs["name"] for w in cold_node.inputs[1:4]} == set(cm.placement)
    assert set(cm.placement.values()) == {"host"}
    layout = cold_layouts(cm.graph)[cold_node.attrs["store"]]
    store = ColdStore(layout, dict(cold_node.attrs),
                      bundles=np.concatenate([cm.weights[name] for name in layout.names], 1))
    x = mlp_input(d=D, seq=4, seed=11)
    env_graph = cm.graph.with_outputs((cold_node.inputs[4], cold_node))
    scores, expected = evaluate(env_graph, [x])
    np.testing.assert_allclose(store.compute(x.reshape(-1, D), scores.reshape(-1, layout.rows)),
                               expected.reshape(-1, D), rtol=1e-4, atol=1e-5)
