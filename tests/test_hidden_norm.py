"""A gated MLP whose hidden vector is RMS-normalised before the down projection (BitNet's ffn_sub_norm:
down(rms_norm(relu²(gate) ⊙ up))). The norm keeps zeros zero, so the block is exactly sparse: detect-gated-mlp folds
the norm's weight into the down projection and keeps its eps (`hidden_rms_eps`), exact mode's CPU kernel sums the
kept h² and scales its output by 1 / rms, and every pass whose kernel would not apply the norm keeps the block dense.
Compared with torch eager on the same inputs, and greedy decoding with transformers' generate."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actsparse

from .kernel_cases import (
    Call,
    cross_kernels,
    examples,
    kernel_weights,
    require_cross_tools,
    run_batch,
    run_native,
    simt_kernels,
)

torch = pytest.importorskip("torch")
pytest.importorskip("tvm")
EPS = 1e-5


class NormedMLP(torch.nn.Module):
    """A BitNet-style block in one of the spellings people write an RMS norm in."""

    def __init__(self, d=24, n=40, spelling=0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.gate, self.up = torch.nn.Linear(d, n, bias=False), torch.nn.Linear(d, n, bias=False)
        self.down = torch.nn.Linear(n, d, bias=False)
        self.norm_weight = torch.nn.Parameter(torch.rand(n) + 0.5)
        self.spelling = spelling

    def forward(self, x):
        h = torch.relu(self.gate(x)) ** 2 * self.up(x)
        if self.spelling == 0:   # transformers' RMSNorm: weight * (h * rsqrt(mean(h²) + eps))
            normed = self.norm_weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS))
        elif self.spelling == 1:   # the factors in another order, h·h for the square
            normed = h * self.norm_weight * torch.rsqrt(EPS + (h * h).mean(-1, keepdim=True))
        elif self.spelling == 2:   # no weight
            normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
        else:   # a division by the root
            normed = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + EPS) * self.norm_weight
        return self.down(normed)


@pytest.mark.parametrize("spelling", [0, 1, 2, 3])
def test_a_normed_hidden_is_detected_its_weight_folded_and_exact_mode_equals_torch(spelling):
    from actsparse.frontends.torch_export import import_torch
    from actsparse.passes import pipeline_for, run_pipeline

    model = NormedMLP(spelling=spelling).eval()
    x = torch.randn(1, 6, 24)
    graph = import_torch(model, (x,))
    run = run_pipeline(graph, pipeline_for("exact"))
    assert run.stats["detect-gated-mlp"] == {"gated-mlp": 1, "relu2-glu-normed": 1}
    (node,) = [n for n in run.graph.nodes if n.op == "sparse_gated_mlp"]
    # exact, or its certified form where the target's data says the int8 gate copy pays: both apply the norm
    assert node.attrs["mode"] in ("exact", "certified") and node.attrs["hidden_rms_eps"] == pytest.approx(EPS)
    folded = run.graph.weights[node.inputs[3].attrs["name"]]   # Wd·diag(w), stored transposed
    want = model.down.weight.detach().numpy().T * (model.norm_weight.detach().numpy()[:, None] if spelling != 2 else 1)
    np.testing.assert_allclose(folded, want, rtol=1e-6)
    with torch.no_grad():
        ref = model(x).numpy()
    for mode in ("exact", "dense", "auto"):
        cm = actsparse.compile(model, (x,), mode=mode)
        np.testing.assert_allclose(cm(x.numpy()), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    exact = actsparse.compile(model, (x,), mode="exact")
    (row,) = exact.report.blocks
    assert row.mode == "exact" and row.sparsity > 0.3   # relu²'s zeros survive the norm


def test_an_onnx_export_of_the_norm_is_found_too(tmp_path):
    """ONNX has no Rsqrt: torch's exporter writes Sqrt then Reciprocal. The block is found, exact, and equals
    onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    model = NormedMLP().eval()
    x = torch.randn(1, 6, 24)
    path = tmp_path / "normed.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
    cm = actsparse.compile(str(path), (x.numpy(),), mode="exact")
    assert cm.report.pass_stats["detect-gated-mlp"] == {"gated-mlp": 1, "relu2-glu-normed": 1}
    assert [b.mode for b in cm.report.blocks] == ["exact"]
    want = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(cm(x.numpy()), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_modes_without_a_normed_kernel_keep_the_block_dense():
    import dataclasses
    import types

    from actsparse.frontends.torch_export import import_torch
    from actsparse.passes import pipeline_for, run_pipeline
    from actsparse.passes.sparsify_exact import SparsifyExact
    from actsparse.passes.sparsify_threshold import SparsifyThreshold

    model = NormedMLP().eval()
    x = torch.randn(1, 6, 24)
    graph = import_torch(model, (x,))
    cuda = run_pipeline(graph, pipeline_for("exact", target="cuda"))   # CUDA's exact kernel applies the norm too
    (node,) = [n for n in cuda.graph.nodes if n.op == "sparse_gated_mlp"]
    assert node.attrs["mode"] == "exact" and node.attrs["hidden_rms_eps"] == pytest.approx(EPS)
    # a family whose kernel would not: kept dense, said why
    other = run_pipeline(graph, [*pipeline_for("exact")[:2], SparsifyExact(kernel_family="npu")])
    assert other.stats["sparsify-exact"] == {"kept-dense": 1} and other.graph.count("sparse_gated_mlp") == 0
    (note,) = [n for n in other.notes if n.get("kind") == "kept-dense"]
    assert "no npu kernel normalises" in note["reason"]
    # threshold mode: no threshold kernel applies the norm; the block is ReLU-family, so it runs exact (lossless)
    # where the family's exact kernel applies the norm, else dense
    calibration = [(torch.randn(1, 128, 24).numpy(),) for _ in range(4)]
    thr = run_pipeline(graph, pipeline_for("threshold", calibration=calibration, sparsity=0.5))
    assert thr.stats["sparsify-threshold"] == {"exact-hidden-norm": 1}
    (node,) = [n for n in thr.graph.nodes if n.op == "sparse_gated_mlp"]
    assert node.attrs["mode"] == "exact" and node.attrs["hidden_rms_eps"] == pytest.approx(EPS)
    passes = pipeline_for("threshold", calibration=calibration, sparsity=0.5)
    # a target whose exact kernel has no norm
    npu = types.SimpleNamespace(kernel_family="npu", input_byte_cost={}, input_fixed_bytes={})
    npu = run_pipeline(graph, [dataclasses.replace(p, target=npu) if isinstance(p, SparsifyThreshold) else p
                               for p in passes])
    assert npu.stats["sparsify-threshold"] == {"kept-dense": 1, "kept-dense-hidden-norm": 1}
    assert npu.graph.count("sparse_gated_mlp") == 0
    with torch.no_grad():
        ref = model(x).numpy()
    cm = actsparse.compile(model, (x,), mode="threshold", calibration=calibration, sparsity=0.5)
    assert [b.mode for b in cm.report.blocks] == ["exact"] and "runs exact" in cm.report.blocks[0].reason
    np.testing.assert_allclose(cm(x.numpy()), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_predictor_mode_applies_the_norm_over_the_neurons_it_computes():
    """The bound predictor (lossless) equals torch; a fitted one equals the IR's semantics (the norm over the
    predicted neurons' h, the rest 0), which the interpreter computes."""
    from actsparse.ir import evaluate

    model = NormedMLP().eval()
    x = torch.randn(1, 6, 24)
    with torch.no_grad():
        ref = model(x).numpy()
    bound = actsparse.compile(model, (x,), mode="predictor", predictor="bound")
    np.testing.assert_allclose(bound(x.numpy()), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    calibration = [(torch.randn(1, 6, 24).numpy(),) for _ in range(64)]   # the import's static shape
    fitted = actsparse.compile(model, (x,), mode="predictor", predictor="svd", calibration=calibration)
    (node,) = [n for n in fitted.graph.nodes if n.op == "sparse_gated_mlp"]
    assert node.attrs["mode"] == "predictor" and node.attrs["hidden_rms_eps"] == pytest.approx(EPS)
    want = evaluate(fitted.graph, [x.numpy()])[0]
    np.testing.assert_allclose(fitted(x.numpy()), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_a_tiny_bitnet_decodes_exactly_sparse_as_transformers_generates(tmp_path):
    transformers = pytest.importorskip("transformers")
    from actsparse.scripts.arch_table import build_tiny, example_ids

    model = build_tiny("bitnet")
    ids = example_ids(model)
    model.generation_config = transformers.GenerationConfig(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=torch.ones_like(ids))
    lm = actsparse.compile(model, max_seq=16)   # auto: exact where exactly sparse
    assert lm.report.pass_stats["detect-gated-mlp"]["relu2-glu-normed"] == model.config.num_hidden_layers
    assert sum(lm.report.pass_stats["sparsify-exact"].values()) == model.config.num_hidden_layers
    assert torch.equal(lm.generate(ids, 6), expected)
    # quantized weights (the exact kernel's quantized rows, then the norm) against the interpreter on them
    from actsparse.ir.interpreter import evaluate

    from .helpers import int8_dot_here

    lm8 = actsparse.compile(model, max_seq=16, quantize="int8")
    assert sum(lm8.report.pass_stats["sparsify-exact"].values()) == model.config.num_hidden_layers
    prompt = ids.numpy()
    caches = [np.zeros(i.type.shape, np.float32) for i in lm8.module.graph.inputs[3:]]
    arrays = [prompt.astype(np.int64), np.array([0], np.int64), np.zeros(prompt.shape[1], np.int64), *caches]
    want = evaluate(lm8.module.graph, arrays)[0].reshape(-1)
    tolerance = 0.02 if int8_dot_here("q8_0") else 1e-4   # the host's int8 dots round x to 8-bit blocks
    np.testing.assert_allclose(lm8.prefill(prompt).logits, want, rtol=1e-4, atol=tolerance * np.abs(want).max())
    # an artifact keeps the norm (its IR text carries hidden_rms_eps) and decodes the same tokens
    loaded = actsparse.load(lm8.save(tmp_path / "bitnet.actsparse"))
    assert [b.pattern for b in loaded.report.blocks] == ["relu2-glu-normed"] * model.config.num_hidden_layers
    assert torch.equal(torch.as_tensor(loaded.generate(ids, 6)), torch.as_tensor(lm8.generate(ids, 6)))
    # its dense twin (`actsparse bench`, `perplexity --against-dense`): the norm kept, the same perplexity
    from actsparse.runtime.bench import dense_twin_decoder

    text = (ids[0].tolist() * 3)[:12]
    twin = dense_twin_decoder(lm)
    assert twin.perplexity(text, window=12, windows=1).perplexity == pytest.approx(
        lm.perplexity(text, window=12, windows=1).perplexity, rel=1e-4)


def normed_reference(x, wg, wu, wd_t):
    """float64: h = relu(x·Wgᵀ)² ⊙ (x·Wuᵀ), normalised by its RMS, times the down rows."""
    x, wg, wu, wd_t = (np.asarray(a, np.float64) for a in (x, wg, wu, wd_t))
    h = np.maximum(x @ wg.T, 0) ** 2 * (x @ wu.T)
    hn = h / np.sqrt((h * h).mean(-1, keepdims=True) + EPS)
    return hn @ wd_t, np.abs(hn) @ np.abs(wd_t)


def normed_calls(rng, d, n_ff, dtype, frac):
    calls = []
    for M, f in ((1, 0.0), (3, 1.0), (2, frac)):
        x = (np.abs(rng.standard_normal((M, d))) + 0.1).astype(np.float32)
        wg = rng.standard_normal((n_ff, d)).astype(np.float32)
        active = rng.random(n_ff) < f
        wg[active], wg[~active] = np.abs(wg[active]), -np.abs(wg[~active])
        ws = [wg, rng.standard_normal((n_ff, d)).astype(np.float32), rng.standard_normal((n_ff, d)).astype(np.float32)]
        kw, ws = kernel_weights(ws, dtype) if dtype != "float32" else (ws, ws)
        ref, scale = normed_reference(x, *ws)
        calls.append(Call([x, *kw, np.full((M, d), np.nan, np.float32)], ref, scale, dtype))
    return calls


def normed_kernel(d, n_ff, dtype, sched, name="exact"):
    from actsparse.codegen.kernels import kernel

    return kernel(name, d, n_ff, gate_act="relu2", up_act="identity", dtype=dtype, sched=sched, hidden_rms_eps=EPS)


def test_the_scored_kernel_applies_the_norm_over_the_neurons_it_computes():
    """The certified form's CPU kernel (`scored`: neurons above a score cutoff, then their gate): the norm over the
    computed neurons' h, the rest 0 (as the variant's reference)."""
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    rng = np.random.default_rng(3)
    d, n_ff, M = 40, 50, 3
    calls = normed_calls(rng, d, n_ff, "float32", 0.5)
    scores = rng.standard_normal((M, n_ff)).astype(np.float32)
    x, wg, wu, wd_t, out = calls[1].args   # M = 3, every gate positive
    wg = wg * np.where(rng.random(n_ff) < 0.5, 1, -1)[:, None].astype(np.float32)
    h = np.maximum(x.astype(np.float64) @ wg.T, 0) ** 2 * (x.astype(np.float64) @ wu.T) * (scores > 0.0)
    hn = h / np.sqrt((h * h).mean(-1, keepdims=True) + EPS)
    call = Call([x, wg, wu, wd_t, scores, np.zeros(1, np.float32), out], hn @ wd_t, np.abs(hn) @ np.abs(wd_t),
                "float32")
    (got,) = run_native(normed_kernel(d, n_ff, "float32", schedule_for(targets.get("x86")), "scored"), [call])
    call.check(got)


@settings(max_examples=examples(8), suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(("float32", "q8_0", "q4_0")), d=st.integers(1, 90), n_ff=st.integers(1, 60),
       frac=st.floats(0.05, 0.95), seed=st.integers(0, 999))
def test_x86_exact_kernel_with_a_hidden_norm_matches_the_float64_reference(dtype, d, n_ff, frac, seed):
    """0% active (the sum is 0: the output stays 0), 100% and a random set; float and quantized rows (the float
    path: x as it is)."""
    from dataclasses import replace

    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    sched = replace(schedule_for(targets.get("x86")), int8_dot="", int8_axpy=())
    calls = normed_calls(np.random.default_rng(seed), d, n_ff, dtype, frac)
    for i, (call, out) in enumerate(zip(calls, run_native(normed_kernel(d, n_ff, dtype, sched), calls))):
        try:
            call.check(out)
        except AssertionError as err:
            raise AssertionError(f"{dtype} call {i}: {err}") from None


@settings(max_examples=1, suppress_health_check=[HealthCheck.too_slow])
@given(d=st.integers(33, 60), n_ff=st.integers(3, 24), seed=st.integers(0, 99))
def test_arm_exact_kernel_with_a_hidden_norm_matches_under_qemu(d, n_ff, seed):
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    require_cross_tools()
    sched = schedule_for(targets.get("arm"))
    prims = [normed_kernel(d, n_ff, dtype, sched) for dtype in ("float32", "q8_0")]
    rng = np.random.default_rng(seed)
    jobs = [(p, normed_calls(rng, d, n_ff, dtype, 0.4)) for p, dtype in zip(prims, ("float32", "q8_0"))]
    for (_, calls), outs in zip(jobs, run_batch(cross_kernels(prims), jobs)):
        for call, out in zip(calls, outs):
            call.check(out)


@settings(max_examples=1, suppress_health_check=[HealthCheck.too_slow])
@given(d=st.integers(33, 50), n_ff=st.integers(3, 40), seed=st.integers(0, 99))
def test_cuda_exact_kernel_with_a_hidden_norm_matches_under_simt(d, n_ff, seed):
    """The flagging kernel's h holds 0 for every dropped neuron: one launch sums h² per token, one more scales."""
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    sched = schedule_for(targets.get("cuda"))
    dtypes = ("float32", "q8_0")
    prims = [normed_kernel(d, n_ff, dtype, sched) for dtype in dtypes]
    rng = np.random.default_rng(seed)
    jobs = [(p, normed_calls(rng, d, n_ff, dtype, 0.4)) for p, dtype in zip(prims, dtypes)]
    for (_, calls), outs in zip(jobs, run_batch(simt_kernels(prims), jobs)):
        for call, out in zip(calls, outs):
            call.check(out)
