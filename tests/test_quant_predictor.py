"""predictor='quant' / 'quant8': a q4_0 (q8_0) shadow copy of W_gate predicts the gate pre-activation, its cutoff
calibrated to the recall. The compiled graph equals the reference interpreter, the pass fired, the held-out recall
is near the target with about the truly active neurons predicted, and bad input gets the other kinds' errors."""

from __future__ import annotations

import numpy as np
import pytest

import actsparse
from actsparse.errors import ActsparseError, ModeError
from actsparse.ir import evaluate, print_graph
from actsparse.ir.quant import dequantize, quantize
from actsparse.passes import run_pipeline
from actsparse.passes.canonicalize import Canonicalize
from actsparse.passes.detect_gated_mlp import DetectGatedMLP
from actsparse.passes.predictors import PredictorError, fit_block
from actsparse.passes.sparsify_predictor import SparsifyPredictor

from .helpers import gated_mlp_graph, mlp_input

D, N = 64, 96


def _calibration(samples=4, seq=128, d=D):
    return [(mlp_input(d=d, seq=seq, seed=s),) for s in range(samples)]


def _expected(graph, node, x):
    """The compiled block's output by numpy: the reference interpreter's, with the shadows' dots taken on x as the
    host's quantized linear kernel sees it (rounded to 8-bit groups where it has an int8 dot)."""
    from actsparse.ir.quant import round_x8
    from actsparse.ir.sparse_variants import dense_intermediate

    from .helpers import int8_dot_here

    w = {n.attrs["name"]: graph.weights[n.attrs["name"]].astype(np.float32) if n.attrs.get("layout", "dense") == "dense"
         else dequantize(graph.weights[n.attrs["name"]], n.attrs["layout"], n.shape[1])
         for n in graph.nodes if n.op == "weight"}

    def x_seen(layout):  # the layout's dot on this host rounds x (its int8 dot serves the layout) or not
        return round_x8(x) if int8_dot_here(layout) else x

    scores = node.inputs[4]
    shadows = [scores] if scores.op == "linear" else list(scores.inputs)
    parts = [x_seen(s.inputs[1].attrs["layout"]) @ w[s.inputs[1].attrs["name"]].T
             + (w[s.inputs[2].attrs["name"]] if len(s.inputs) > 2 else 0) for s in shadows]
    s = parts[0] if len(parts) == 1 else np.minimum(*parts)
    names = [i.attrs["name"] for i in node.inputs[1:4]]
    h = dense_intermediate(x, w[names[0]], w[names[1]], node.attrs)
    return np.where(s > node.attrs["cutoff"], h, 0) @ w[names[2]]


@pytest.mark.parametrize("kind, layout, up_relu", [("quant", "q4_0", False), ("quant", "q4_0", True),
                                                   ("quant8", "q8_0", False)])
def test_quant_predictor_compiles_to_a_shadow_linear_and_matches_the_reference(kind, layout, up_relu):
    graph = gated_mlp_graph(d=D, n=N, act="relu", up_relu=up_relu)
    held_out = mlp_input(d=D, seq=256, seed=99)
    cm = actsparse.compile(graph, (held_out,), mode="predictor", calibration=_calibration(), predictor=kind,
                           recall=0.95)
    pattern = "drelu" if up_relu else "reglu"
    assert cm.report.pass_stats["sparsify-predictor"] == {pattern: 1}
    node = next(n for n in cm.graph.nodes if n.op == "sparse_gated_mlp")
    assert node.attrs["mode"] == "predictor" and node.attrs["predictor"] == kind
    scores = node.inputs[4]
    shadows = [scores] if not up_relu else list(scores.inputs)   # dReLU: minimum(gate shadow, up shadow + shift)
    assert scores.op == ("minimum" if up_relu else "linear")
    for s in shadows:   # the target's fastest quantized dot (x rounded to 8 bits where it has an int8 dot)
        assert s.op == "linear" and not s.attrs.get("float_x") and s.inputs[1].attrs["layout"] == layout
    for x in (held_out, mlp_input(d=D, seq=1, seed=5)):
        np.testing.assert_allclose(cm(x), _expected(cm.graph, node, x), rtol=1e-4, atol=1e-5)
    block = cm.report.blocks[0]
    # the cutoff aims at 0.95 + margin 0.2 x 0.05 = 0.96 (up to the float rounding of the AND's shifted up score)
    assert block.predictor == kind and block.rank is None and block.calibrated_recall >= 0.959
    assert block.recall > 0.93                                   # held out: the target less a little slack
    # a 4-bit gate's error is far below the gate's spread: about the truly active neurons are predicted
    assert (1 - block.predicted_sparsity) < 1.1 * (1 - block.sparsity)
    bits = {"q4_0": 4.5, "q8_0": 8.5}[layout] * (2 if up_relu else 1)   # per gate weight; dReLU: + up and shift
    shift_pct = 100 * N / (3 * D * N) if up_relu else 0.0
    assert block.predictor_bytes_pct == pytest.approx(100 * bits / (3 * 32) + shift_pct, rel=1e-3)


def test_the_shadow_is_the_int4_quantization_chunked_or_not(monkeypatch):
    from actsparse.passes import predictors

    rng = np.random.default_rng(2)
    w = rng.standard_normal((70, 40)).astype(np.float32)
    rows = rng.standard_normal((300, 40)).astype(np.float32)
    active = rows @ w.T > 0.3
    whole = fit_block("quant", "mlp", w, rows, active, rank=8, recall=0.9)
    monkeypatch.setattr(predictors, "SHADOW_CHUNK", 16)
    chunked = fit_block("quant", "mlp", w, rows, active, rank=8, recall=0.9)
    np.testing.assert_array_equal(chunked.arrays["w"], quantize(w, "int4").blob)
    np.testing.assert_array_equal(whole.arrays["w"], chunked.arrays["w"])
    np.testing.assert_allclose(whole.scores(rows), rows @ dequantize(whole.arrays["w"], "q4_0", 40).T, rtol=1e-6)
    assert whole.recall >= 0.9 and whole.cutoff == chunked.cutoff


def test_quant_predictor_golden_ir_and_full_recall_is_exact_on_its_calibration_rows():
    from .test_passes_golden import _check_golden, _inputs, _load

    graph = _load("drelu_fused")
    calibration = [tuple(_inputs(graph, seed=s)) for s in range(20)]   # [2, 8] each: 40 tokens
    result = run_pipeline(graph, [Canonicalize(), DetectGatedMLP(), SparsifyPredictor(
        predictor="quant", recall=1.0, progress=False, calibration=tuple(calibration))])
    assert result.stats["sparsify-predictor"] == {"drelu": 1}
    _check_golden("drelu_fused", "predictor-quant", print_graph(result.graph))
    for sample in calibration:
        np.testing.assert_allclose(evaluate(result.graph, sample)[0], evaluate(graph, sample)[0], rtol=1e-4,
                                   atol=1e-5)


def test_each_moe_expert_gets_its_own_shadow():
    from actsparse.runtime.report import build_report

    from .test_passes_golden import _inputs, _load

    graph = _load("moe_batched_experts")
    calibration = tuple(tuple(_inputs(graph, seq=16, seed=s)) for s in range(8))
    result = run_pipeline(graph, [Canonicalize(), DetectGatedMLP(), SparsifyPredictor(
        predictor="quant", recall=0.9, progress=False, calibration=calibration)])
    assert result.stats["sparsify-predictor"] == {"reglu": 2}
    nodes = [n for n in result.graph.nodes if n.op == "sparse_gated_mlp"]
    assert [n.attrs["expert"] for n in nodes] == [0, 1]
    assert nodes[0].inputs[4].inputs[1].attrs["name"] != nodes[1].inputs[4].inputs[1].attrs["name"]
    report = build_report("x86", "predictor", result.graph, graph, _inputs(graph, seq=16, seed=99), result.stats,
                          result.notes)
    assert all(b.recall > 0.7 for b in report.blocks)


def test_quant_predictor_bad_input_is_one_clear_error_naming_the_layer():
    graph = gated_mlp_graph(d=D, n=N, act="relu")
    x = mlp_input(d=D, seq=8)
    with pytest.raises(ActsparseError, match="needs calibration data"):
        actsparse.compile(graph, (x,), mode="predictor", predictor="quant")
    with pytest.raises(PredictorError, match=r"mlp: 20 calibration tokens are too few for a quant predictor"):
        actsparse.compile(graph, (x,), mode="predictor", predictor="quant", calibration=[(mlp_input(d=D, seq=20),)])
    with pytest.raises(PredictorError, match=r"mlp: the quant predictor reaches recall 100\.0% only by predicting"):
        actsparse.compile(graph, (x,), mode="predictor", calibration=_calibration(2), predictor="quant",
                          recall=1.0, sparsity=0.9)
    with pytest.raises(ModeError, match=r"mlp is swiglu.*relufy.*mode='threshold'"):
        actsparse.compile(gated_mlp_graph(d=D, n=N, act="silu"), (x,), mode="predictor",
                          calibration=_calibration(2), predictor="quant")


def test_compile_for_cuda_scores_with_the_cuda_q4_0_linear_and_the_scored_kernel():
    """CUDA (source generated by nvcc, no GPU needed): the shadows are the CUDA family's q4_0 linear kernels (the up
    shadow with the shift as its bias), then the scored MLP kernel flags the predicted neurons itself."""
    import re

    from actsparse.codegen.cuda_support import cuda_source

    from .kernel_cases import require_nvcc

    require_nvcc()
    graph = gated_mlp_graph(d=32, n=48, act="relu", up_relu=True)
    cm = actsparse.compile(graph, (mlp_input(d=32, seq=3),), target="cuda", mode="predictor",
                           calibration=_calibration(2, seq=64, d=32), predictor="quant", recall=0.9)
    source = cuda_source(cm.executable.mod)
    launches = set(re.findall(r"__global__ void __launch_bounds__\(\d+\) (actsparse_\w+?)_kernel", source))
    for prefix in ("actsparse_cuda_linear_k32_n48_nobias_q4_0", "actsparse_cuda_linear_k32_n48_bias_q4_0",
                   "actsparse_cuda_gmlp_scored_d32_f48"):
        assert any(name.startswith(prefix) for name in launches), (prefix, launches)


@pytest.mark.parametrize("storage", ["int8", "int4"])
def test_predictor_mode_with_quantized_storage_reads_the_quantized_rows(storage):
    """quantize='int8'|'int4' after predictor mode: the listed kernel reads the quantized gate / up / down rows (its
    lowering once asked for float32 rows and failed on the q8_0 blob); the output stays the reference's up to the
    quantized kernels' 8-bit rounding of x."""
    graph = gated_mlp_graph(d=D, n=N, act="relu", up_relu=True)
    x = mlp_input(d=D, seq=32, seed=9)
    cm = actsparse.compile(graph, (x,), mode="predictor", calibration=_calibration(), predictor="quant",
                           recall=0.95, quantize=storage)
    node = next(n for n in cm.graph.nodes if n.op == "sparse_gated_mlp")
    assert [w.attrs["layout"] for w in node.inputs[1:4]] == [{"int8": "q8_0", "int4": "q4_0"}[storage]] * 3
    assert cm.report.pass_stats["quantize"] == {"quantized": 3}    # the shadows were quantized by the predictor
    y, reference = cm(x), evaluate(cm.graph, [x])[0]
    assert np.linalg.norm(y - reference) / np.linalg.norm(reference) < 2e-2
