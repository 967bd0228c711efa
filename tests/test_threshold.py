"""Threshold mode (training-free sparsity): calibrated per-layer thresholds hit the target sparsity on held-out
inputs, the compiled kernels equal the reference interpreter of the thresholded graph, the report states what
was calibrated and measured, and bad calibration data gives one clear error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import actsparse
from actsparse.errors import ActsparseError
from actsparse.ir import evaluate
from actsparse.models import TinyConfig, TinyLlama
from actsparse.passes import parse_pipeline, pipeline_for, run_pipeline
from actsparse.runtime import Report

from .helpers import gated_mlp_graph, mlp_input

torch.set_num_threads(1)
CONFIG = TinyConfig(d_model=64, n_layers=2, n_heads=2, n_ff=128, max_seq=64, mlp_act="swiglu")


def _ids(seq: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (1, seq), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def swiglu():
    torch.manual_seed(0)
    return TinyLlama(CONFIG).eval()


@pytest.mark.parametrize("target", [0.5, 0.8])
def test_threshold_mode_reaches_target_sparsity_on_heldout_inputs(swiglu, target):
    calibration = [(_ids(32, seed),) for seed in range(10)]
    held_out = (_ids(64, 100),)
    cm = actsparse.compile(swiglu, held_out, mode="threshold", calibration=calibration, sparsity=target, method="cats")
    assert cm.report.pass_stats["sparsify-threshold"] == {"swiglu": 2}
    assert cm.graph.count("sparse_gated_mlp") == 2 and cm.graph.count("gated_mlp") == 0
    for block in cm.report.blocks:
        assert block.mode == "threshold" and block.method == "cats" and block.threshold > 0
        assert abs(block.calibrated_sparsity - target) < 0.005
        assert abs(block.sparsity - target) <= 0.02, (block.location, block.sparsity)
    # the kernels compute the thresholded graph's semantics
    for ids in (held_out[0], _ids(5, 7)):
        np.testing.assert_allclose(cm(ids).numpy(), evaluate(cm.graph, [ids.numpy()])[0], rtol=1e-4, atol=1e-5)
    # lossy, and the report says how much: relative error of the logits vs the dense model
    with torch.no_grad():
        dense = swiglu(held_out[0]).numpy()
    error = np.linalg.norm(cm(held_out[0]).numpy() - dense) / np.linalg.norm(dense)
    assert 0 < cm.report.output_rel_error < 0.5
    assert cm.report.output_rel_error == pytest.approx(error, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("method, act", [("cats", "silu"), ("product", "silu"), ("teal", "silu"), ("cats", "gelu"),
                                         ("wina", "gelu"), ("teal-cats", "silu"), ("wina-greedy", "silu")])
def test_methods_on_one_block_hit_target_and_match_the_reference(method, act):
    graph = gated_mlp_graph(d=24, n=40, act=act)
    calibration = [(mlp_input(seq=64, seed=s),) for s in range(2, 10)]
    held_out = mlp_input(seq=64, seed=50)
    cm = actsparse.compile(graph, (held_out,), mode="threshold", calibration=calibration, sparsity=0.7, method=method)
    block = cm.report.blocks[0]
    pattern = {"silu": "swiglu", "gelu": "geglu"}[act]
    assert (block.pattern, block.method) == (pattern, method)
    node = next(n for n in cm.graph.nodes if n.op == "sparse_gated_mlp")
    assert node.attrs["criterion"] == ("gate" if method in ("cats", "teal-cats") else "product")
    if node.attrs["mode"] == "input":   # x and h sparse; the target is the fraction of weight bytes skipped
        assert len(node.inputs) == 6 and node.inputs[1].shape == (24, 40)
        assert abs(block.effective_sparsity - 0.7) <= 0.06, block
        assert abs(block.effective_calibrated - 0.7) <= 0.02
    else:
        assert abs(block.sparsity - 0.7) <= 0.04  # 40 neurons x 64 tokens: a noisier estimate than the model test
    assert cm.graph.count("where") == 0   # no dense mask in front: the kernels skip
    for x in (held_out, mlp_input(seq=3, seed=51)):
        np.testing.assert_allclose(cm(x), evaluate(cm.graph, [x])[0], rtol=1e-4, atol=1e-5)


def test_relu_family_block_in_threshold_mode_becomes_fatrelu():
    graph = gated_mlp_graph(act="relu")
    cm = actsparse.compile(graph, (mlp_input(seq=64, seed=50),), mode="threshold",
                           calibration=[(mlp_input(seq=64, seed=s),) for s in range(4)], sparsity=0.9, method="cats")
    node = next(n for n in cm.graph.nodes if n.op == "sparse_gated_mlp")
    assert node.attrs["gate_act"] == "fatrelu" and node.attrs["threshold"] > 0
    assert abs(cm.report.blocks[0].sparsity - 0.9) <= 0.04
    x = mlp_input(seq=9, seed=3)
    np.testing.assert_allclose(cm(x), evaluate(cm.graph, [x])[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("calibration, message", [
    (None, "needs calibration data"),
    ([], "calibration data is empty"),
    (iter(()), "calibration data is empty"),
    ([(np.full((1, 4, 24), np.nan, np.float32),)], "sample 0 contains NaN"),
    ([(mlp_input(seq=4),), (np.array([[[np.inf] * 24]], np.float32),)], "sample 1 contains NaN or inf"),
    ([(mlp_input(seq=4), mlp_input(seq=4))], "sample 0 has 2 inputs, the model takes 1"),
    (mlp_input(seq=4), "iterable of input tuples"),
])
def test_bad_calibration_data_is_one_clear_error(calibration, message):
    with pytest.raises(ActsparseError, match=message):
        actsparse.compile(gated_mlp_graph(act="silu"), (mlp_input(),), mode="threshold", calibration=calibration,
                          sparsity=0.5)


@pytest.mark.filterwarnings("ignore:invalid value encountered in log:RuntimeWarning")
def test_nan_activations_during_calibration_name_the_block():
    from actsparse.ir import parse_graph

    # finite calibration inputs, but log() of their negative entries makes the block's input NaN
    text = """graph @main(%x: f32[1,seq,24]) {
  @mlp.down.weight : f32[24,40]
  @mlp.gate.weight : f32[40,24]
  @mlp.up.weight : f32[40,24]
  %0 = log(%x) : f32[1,seq,24]  # pre (t.py:1)
  %1 = linear(%0, @mlp.gate.weight) : f32[1,seq,40]  # mlp.gate (t.py:2)
  %2 = silu(%1) : f32[1,seq,40]  # mlp (t.py:3)
  %3 = linear(%0, @mlp.up.weight) : f32[1,seq,40]  # mlp.up (t.py:4)
  %4 = mul(%2, %3) : f32[1,seq,40]  # mlp (t.py:5)
  %5 = linear(%4, @mlp.down.weight) : f32[1,seq,24]  # mlp.down (t.py:6)
  return %5
}
"""
    graph = parse_graph(text, dict(gated_mlp_graph(act="silu").weights))
    with pytest.raises(ActsparseError, match=r"sample 0 gives NaN/inf activations at the input of mlp"):
        actsparse.compile(graph, (np.abs(mlp_input()),), mode="threshold", calibration=[(mlp_input(seq=4),)],
                          sparsity=0.5)


def test_threshold_mode_argument_errors():
    graph, x = gated_mlp_graph(act="silu"), mlp_input()
    with pytest.raises(ActsparseError, match="needs a target sparsity"):
        actsparse.compile(graph, (x,), mode="threshold", calibration=[(x,)])
    with pytest.raises(ActsparseError, match="needs a target sparsity, a number between 0 and 1"):
        actsparse.compile(graph, (x,), mode="threshold", calibration=[(x,)], sparsity=1.5)
    with pytest.raises(ActsparseError, match="unknown threshold method 'magic'; valid methods: cats, product, teal"):
        actsparse.compile(graph, (x,), mode="threshold", calibration=[(x,)], sparsity=0.5, method="magic")
    with pytest.raises(ActsparseError, match="mode='exact' does not use them"):
        actsparse.compile(graph, (x,), mode="exact", method="cats")


def test_report_fields_table_and_round_trip(tmp_path):
    graph = gated_mlp_graph(act="silu")
    x = mlp_input(seq=16, seed=60)
    cm = actsparse.compile(graph, (x,), mode="threshold", calibration=[(mlp_input(seq=32, seed=s),) for s in range(4)],
                           sparsity=0.6, method="product")
    data = cm.report.to_dict()
    assert data["mode"] == "threshold" and data["output_rel_error"] > 0
    block = data["blocks"][0]
    assert {"sparsity", "calibrated_sparsity", "threshold", "method"} <= set(block)
    assert block["method"] == "product" and block["calibrated_sparsity"] == pytest.approx(0.6, abs=0.01)
    text = str(cm.report)
    assert "calibrated" in text and "threshold" in text and "relative error" in text
    assert Report.from_dict(data).to_dict() == data
    loaded = actsparse.load(cm.save(tmp_path / "thr.actsparse"))
    assert loaded.report.to_dict() == data
    np.testing.assert_allclose(loaded(x), cm(x), rtol=1e-6)


def test_pass_text_form_and_explicit_thresholds():
    graph = gated_mlp_graph(act="silu")
    passes = parse_pipeline("canonicalize,detect-gated-mlp,sparsify-threshold{method=product,sparsity=0.6}")
    assert str(passes[-1]).startswith("sparsify-threshold{sparsity=0.6,method=product,")
    with pytest.raises(ActsparseError, match="no thresholds for mlp: pass calibration data"):
        run_pipeline(graph, passes)
    explicit = parse_pipeline("canonicalize,detect-gated-mlp")
    from actsparse.passes.sparsify_threshold import SparsifyThreshold

    result = run_pipeline(graph, [*explicit, SparsifyThreshold(method="cats", thresholds={"mlp": 0.05})])
    node = next(n for n in result.graph.nodes if n.op == "sparse_gated_mlp")
    assert (node.attrs["mode"], node.attrs["threshold"], node.attrs["criterion"]) == ("threshold", 0.05, "gate")
    with pytest.raises(ValueError, match="unknown method"):
        SparsifyThreshold(method="magic")
    with pytest.raises(ValueError, match="unknown mode 'magic'; valid modes: dense, exact, auto, threshold"):
        pipeline_for("magic")


def test_threshold_kernel_matches_numpy():
    tvm = pytest.importorskip("tvm")
    from scipy.special import erf

    from actsparse.codegen.kernels.common import build_standalone
    from actsparse.codegen.kernels.schedule import CpuSchedule
    from actsparse.codegen.kernels.threshold_mlp import threshold_gated_mlp

    from .test_kernels_x86 import host_target

    d, n, t = 37, 53, 0.3
    rng = np.random.default_rng(0)
    acts = {"silu": lambda g: g / (1 + np.exp(-g)), "gelu": lambda g: 0.5 * g * (1 + erf(g / math.sqrt(2))),
            "fatrelu": lambda g: np.where(g > t, g, 0)}
    cases = [("gate", "silu", "identity", CpuSchedule(lanes=16, threads=2)),
             ("gate", "gelu", "relu", CpuSchedule(lanes=8, threads=3, rows=1, prefetch=False, vector_registers=16)),
             ("product", "silu", "identity", CpuSchedule(lanes=8, threads=3, rows=1, prefetch=False,
                                                         vector_registers=16)),
             ("product", "fatrelu", "relu", CpuSchedule(lanes=16, threads=2))]
    for criterion, gate_act, up_act, sched in cases:
        fn = build_standalone(threshold_gated_mlp(d, n, gate_act=gate_act, up_act=up_act, threshold=t,
                                                  criterion=criterion, sched=sched), host_target())
        for m in (1, 5):
            x = rng.standard_normal((m, d)).astype("float32")
            wg, wu, wd_t = (rng.standard_normal((n, d)).astype("float32") / 3 for _ in range(3))
            a = acts[gate_act](x.astype(np.float64) @ wg.T)
            u = x.astype(np.float64) @ wu.T
            u = np.maximum(u, 0) if up_act == "relu" else u
            h = np.where(np.abs(a) > t, a, 0) * u if criterion == "gate" else a * u
            h = np.where(np.abs(h) > t, h, 0) if criterion == "product" else h
            assert 0.2 < np.mean(h == 0) < 1  # some neurons skipped, some kept
            out = tvm.runtime.tensor(np.full((m, d), np.nan, "float32"))
            fn(*[tvm.runtime.tensor(np.ascontiguousarray(v)) for v in (x, wg, wu, wd_t)], out)
            np.testing.assert_allclose(out.numpy(), h @ wd_t, rtol=1e-4, atol=1e-4)


class _BiasedSwiGLU(torch.nn.Module):
    """One SwiGLU MLP with gate/up/down biases (gpt-oss's and RecurrentGemma's MLPs have them)."""

    def __init__(self, d=24, n=40):
        super().__init__()
        torch.manual_seed(0)
        self.gate, self.up, self.down = torch.nn.Linear(d, n), torch.nn.Linear(d, n), torch.nn.Linear(n, d)

    def forward(self, x):
        return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


def test_the_default_method_gives_way_where_a_block_has_biases_and_a_named_one_does_not():
    """Input sparsity (the default rotated-wina-greedy) takes no gate/up biases: with no method named such a block
    is calibrated with FALLBACK_METHOD (cats), and the report's row says so and why; a method the user named is
    an error for it that names the way out."""
    from actsparse.passes.sparsity_methods import DEFAULT_METHOD, FALLBACK_METHOD

    model = _BiasedSwiGLU().eval()
    calibration = [(torch.from_numpy(mlp_input(seq=16, seed=s)),) for s in range(2, 26)]
    held_out = torch.from_numpy(mlp_input(seq=16, seed=50))
    cm = actsparse.compile(model, (held_out,), mode="threshold", calibration=calibration, sparsity=0.5)
    block = cm.report.blocks[0]
    assert block.method == FALLBACK_METHOD and "gate/up biases" in block.reason and DEFAULT_METHOD in block.reason
    assert cm.report.pass_stats["sparsify-threshold"]["method-fallback"] == 1
    assert abs(block.sparsity - 0.5) <= 0.15
    np.testing.assert_allclose(cm(held_out.numpy()), evaluate(cm.graph, [held_out.numpy()])[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ActsparseError, match="has gate/up biases.*leave method out"):
        actsparse.compile(model, (held_out,), mode="threshold", calibration=calibration, sparsity=0.5,
                          method="wina-greedy")


class _PlainGeluMLP(torch.nn.Module):
    """A non-gated MLP as Falcon writes it: fc2(gelu(fc1(x))), no biases."""

    def __init__(self, d=24, n=96):
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.fc2 = torch.nn.Linear(d, n, bias=False), torch.nn.Linear(n, d, bias=False)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def test_a_plain_gelu_mlp_is_calibrated_and_skipped_like_a_gated_block():
    """Threshold mode takes non-gated MLPs (GPT-2, Falcon, Phi-2) as blocks whose up factor is the constant 1: the
    default input-sparse method calibrates it to the asked share of its two matrices' bytes, its gate rows serve as
    its up input (one stored matrix, never read twice: the kernel skips the up axpy), and the compiled block equals
    its reference semantics."""
    model = _PlainGeluMLP().eval()
    calibration = [(torch.from_numpy(mlp_input(seq=16, seed=s)),) for s in range(2, 26)]
    held_out = mlp_input(seq=16, seed=50)
    cm = actsparse.compile(model, (torch.from_numpy(held_out),), mode="threshold", calibration=calibration,
                           sparsity=0.5)
    assert cm.report.pass_stats["sparsify-threshold"]["plain-mlp"] == 1
    block = cm.report.blocks[0]
    assert (block.pattern, block.mode) == ("gelu-mlp", "input") and block.reason == ""
    assert abs(block.effective_calibrated - 0.5) <= 0.02 and abs(block.effective_sparsity - 0.5) <= 0.1
    node = next(n for n in cm.graph.nodes if n.op == "sparse_gated_mlp")
    assert node.attrs["up_act"] == "unit" and node.inputs[1].attrs["name"] == node.inputs[2].attrs["name"]  # one blob
    np.testing.assert_allclose(cm(held_out), evaluate(cm.graph, [held_out])[0], rtol=1e-4, atol=1e-5)
    dense = model(torch.from_numpy(held_out)).detach().numpy()
    assert np.linalg.norm(cm(held_out) - dense) / np.linalg.norm(dense) < 0.5   # lossy, not garbage


def test_a_non_gated_mlp_with_too_few_calibration_tokens_stays_dense_and_shared_sites_pool_their_rows():
    """A non-gated MLP is a block only because threshold mode takes it as one: where its call site sees too few
    calibration tokens (XLNet's last layer runs its MLP on one position a call) it stays dense with the reason,
    instead of failing the compile; call sites of one module (the same weights) calibrate on all their rows."""
    from actsparse.ir import Node
    from actsparse.passes.calibrate import pooled_rows

    model = _PlainGeluMLP().eval()
    one_token = [(torch.from_numpy(mlp_input(seq=1, seed=s)),) for s in range(2, 5)]
    cm = actsparse.compile(model, (torch.from_numpy(mlp_input(seq=1, seed=50)),), mode="threshold",
                           calibration=one_token, sparsity=0.5)
    block = cm.report.blocks[0]
    assert block.mode == "dense" and "too few calibration tokens" in block.reason
    assert cm.report.pass_stats["sparsify-threshold"]["plain-mlp-too-few-tokens"] == 1
    w = [Node("weight", (), {"name": n}, None) for n in ("a", "b", "c")]
    other = Node("weight", (), {"name": "d"}, None)
    blocks = [Node("gated_mlp", (w[0], *w), {}, None), Node("gated_mlp", (w[0], *w), {}, None),
              Node("gated_mlp", (w[0], other, w[1], w[2]), {}, None)]
    rows = [np.zeros((1, 2)), np.ones((3, 2)), np.full((2, 2), 2.0)]
    pooled = pooled_rows(blocks, rows)
    assert [len(r) for r in pooled] == [4, 4, 2] and pooled[2] is rows[2]
