"""compile() end to end on IR graphs: exact == dense == interpreter, the report, artifacts, and the errors."""

import json

import numpy as np
import pytest

import actsparse
from actsparse.errors import ActsparseError, ArtifactError, MemoryBudgetError, ModeError, TargetError
from actsparse.ir import evaluate

from .helpers import gated_mlp_graph, mlp_input


@pytest.mark.parametrize("gate_shift, expected_sparsity", [(-50.0, 1.0), (0.0, None), (50.0, 0.0)])
@pytest.mark.parametrize("act, up_relu", [("relu", False), ("relu", True), ("fatrelu", False)])
def test_exact_matches_dense_for_all_off_mixed_all_on(act, up_relu, gate_shift, expected_sparsity):
    graph = gated_mlp_graph(act=act, up_relu=up_relu, threshold=0.25, gate_shift=gate_shift)
    x = mlp_input(seq=6)
    exact = actsparse.compile(graph, (x,), mode="exact")
    dense = actsparse.compile(graph, (x,), mode="dense")
    assert graph.count("linear") == 3 and exact.graph.count("sparse_gated_mlp") == 1
    assert dense.graph.count("gated_mlp") == 0 and dense.report.pass_stats["fuse-gated-mlp"] == {  # the fused kernel
        "fatrelu" if act == "fatrelu" else "drelu" if up_relu else "reglu": 1}
    y_exact, y_dense = exact(x), dense(x)
    np.testing.assert_allclose(y_exact, y_dense, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y_exact, evaluate(graph, [x])[0], rtol=1e-4, atol=1e-5)
    sparsity = exact.report.blocks[0].sparsity
    if expected_sparsity == 0.0 and up_relu:
        assert 0.2 < sparsity < 0.8  # every gate on, but dReLU's relu(up) still zeroes about half
    elif expected_sparsity is not None:
        assert sparsity == expected_sparsity
        if expected_sparsity == 1.0:
            assert not y_exact.any()  # every neuron off: the MLP adds exactly nothing
    else:
        assert 0.2 < sparsity < 0.9


def test_dynamic_sequence_length_runs_other_lengths():
    graph = gated_mlp_graph()
    cm = actsparse.compile(graph, (mlp_input(seq=4),), mode="exact")
    for seq in (1, 9):
        x = mlp_input(seq=seq, seed=seq)
        np.testing.assert_allclose(cm(x), evaluate(graph, [x])[0], rtol=1e-4, atol=1e-5)


def test_report_rows_and_table():
    cm = actsparse.compile(gated_mlp_graph(up_relu=True), (mlp_input(),), mode="auto")
    block = cm.report.blocks[0]
    assert (block.location, block.pattern, block.mode, block.n_ff) == ("mlp", "drelu", "exact", 40)
    text = str(cm.report)
    assert "drelu" in text and "mlp" in text and "%" in text
    assert cm.report.pass_stats["sparsify-exact"] == {"drelu": 1}


def test_report_prints_a_reason_several_rows_share_once_below_the_table():
    """A MoE model's experts (hundreds of rows) share their reason: the table marks each such row [k] and prints the
    reason once below it; a reason one row gives stays in its cell."""
    from actsparse.runtime.report_data import BlockReport, Report

    shared, own = "cats: a routed expert, whose kernel takes a threshold per expert", "kept dense by cost"
    report = Report("x86", "threshold", [BlockReport(f"layers.0.experts.{e}", "swiglu", "threshold", 96, 0.5, shared,
                                                     expert=e) for e in range(3)]
                    + [BlockReport("layers.1.mlp", "swiglu", "dense", 96, 0.0, own)])
    text = str(report)
    assert text.count(shared) == 1 and text.count("[1]") == 4 and f"[1] {shared}" in text
    assert text.count(own) == 1 and "[2]" not in text


def test_save_load_runs_without_the_source(tmp_path):
    graph = gated_mlp_graph()
    x = mlp_input(seq=3)
    cm = actsparse.compile(graph, (x,), mode="exact")
    path = cm.save(tmp_path / "m.actsparse")
    assert sorted(p.name for p in path.iterdir()) == ["graph.ir", "manifest.json", "model.so", "weights.safetensors"]
    loaded = actsparse.load(path)
    np.testing.assert_array_equal(loaded(x), cm(x))
    assert loaded.report.to_dict() == cm.report.to_dict()
    assert "sparse_gated_mlp" in loaded.ir_text


def test_corrupted_artifact_is_one_clear_error(tmp_path):
    path = actsparse.compile(gated_mlp_graph(), (mlp_input(),), mode="exact").save(tmp_path / "m")
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(ArtifactError, match="weights.safetensors does not match its checksum"):
        actsparse.load(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupted"):
        actsparse.load(path)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        actsparse.load(tmp_path)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    cm = actsparse.compile(gated_mlp_graph(), (mlp_input(),), mode="exact")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.numpy.save_file", boom)
    with pytest.raises(OSError):
        cm.save(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_errors_name_the_problem_and_the_way_out():
    graph = gated_mlp_graph(act="silu")
    with pytest.raises(ModeError, match=r"mlp is swiglu.*relufy"):
        actsparse.compile(graph, (mlp_input(),), mode="exact")
    with pytest.raises(TargetError, match="valid targets: x86, cuda, arm"):
        actsparse.compile(graph, (mlp_input(),), target="tpu")
    with pytest.raises(ActsparseError, match="valid modes: dense, exact, auto"):
        actsparse.compile(graph, (mlp_input(),), mode="sparse")
    with pytest.raises(ActsparseError, match="cannot compile a dict"):
        actsparse.compile({}, ())
    with pytest.raises(ActsparseError, match="max_loss_increase bounds threshold mode's loss.*not mode='exact'"):
        actsparse.compile(graph, (mlp_input(),), mode="exact", max_loss_increase=0.05)
    with pytest.raises(ActsparseError, match="max_loss_increase applies to decoders"):
        actsparse.compile(graph, (mlp_input(),), mode="threshold", sparsity=0.5, calibration=[(mlp_input(),)],
                          max_loss_increase=0.05)
    with pytest.raises(MemoryBudgetError, match="memory_budget must not be negative"):
        actsparse.compile(graph, (mlp_input(),), memory_budget=-1)
    with pytest.raises(MemoryBudgetError, match="memory_budget=1 bytes cannot hold"):  # the dense block stays resident
        actsparse.compile(graph, (mlp_input(),), memory_budget=1)
    cm = actsparse.compile(graph, (mlp_input(),), mode="auto")
    assert cm.report.blocks[0].mode == "dense" and "not exactly sparse" in cm.report.blocks[0].reason
    with pytest.raises(ValueError, match="compiled for inputs"):
        cm(np.zeros((1, 3, 5), np.float32))


def test_manifest_records_target_and_report(tmp_path):
    path = actsparse.compile(gated_mlp_graph(), (mlp_input(),), mode="exact").save(tmp_path / "m")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["target"]["name"] == "x86" and manifest["target"]["tvm"]["kind"] == "llvm"
    assert manifest["report"]["blocks"][0]["pattern"] == "reglu"


def test_densify_restores_the_dense_twin_and_bench_runs(tmp_path):
    from actsparse.passes import run_pipeline
    from actsparse.passes.densify import Densify
    from actsparse.runtime.bench import bench_artifact

    graph = gated_mlp_graph()
    x = mlp_input()
    cm = actsparse.compile(graph, (x,), mode="exact")
    result = run_pipeline(cm.graph, [Densify()])
    assert result.stats["densify"] == {"reglu": 1} and result.graph.count("sparse_gated_mlp") == 1
    (twin,) = [n for n in result.graph.nodes if n.op == "sparse_gated_mlp"]
    down = twin.inputs[3].attrs["name"]
    assert twin.attrs["mode"] == "dense" and result.graph.weights[down] is cm.graph.weights[down]  # shared, no copy
    np.testing.assert_allclose(evaluate(result.graph, [x])[0], evaluate(graph, [x])[0], rtol=1e-5, atol=1e-6)
    text = bench_artifact(str(cm.save(tmp_path / "m")), seq=1, repeats=2)
    assert "speed-up" in text and "cache evicted" in text


def test_the_package_compile_takes_every_option_the_api_has():
    """`actsparse.compile` is a lazy-import wrapper of api.compile: every option api.compile takes (the README's
    `max_loss_increase` among them) is a parameter of the wrapper too, with the same default."""
    import inspect

    from actsparse import api

    wrapper, implementation = (inspect.signature(f).parameters for f in (actsparse.compile, api.compile))
    assert {n: p.default for n, p in wrapper.items()} == {n: p.default for n, p in implementation.items()}
