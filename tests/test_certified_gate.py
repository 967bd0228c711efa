"""predictor='bound': an int8 gate copy with a per-neuron error bound certifies neurons inactive (lossless, no
calibration). The bound never drops an active neuron (property test), the compiled block equals dense, the pass
fired, some neurons are certified, and non-ReLU gates are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import actsparse
from actsparse.errors import ModeError
from actsparse.ir import evaluate
from actsparse.passes.certified_gate import certified_scores, certify_gate

from .helpers import gated_mlp_graph, mlp_input

D, N = 64, 96


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 100), scale=st.sampled_from([1e-3, 1.0, 1e3]),
       near=st.booleans(), seed=st.integers(0, 2 ** 16), x16=st.booleans())
def test_the_bound_never_certifies_an_active_neuron(n, d, scale, near, seed, x16):
    """s_j <= 0 must imply g_j <= 0 for the float32 gate; `near`: gates pushed to within rounding of 0; `x16`: the
    scores against x rounded to int16 per group (the CPU kernel's int16 score pass)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, d)) * scale).astype(np.float32)
    x = rng.standard_normal((8, d)).astype(np.float32)
    if near:   # shift each row along x[0] so that token 0's gate is ~0 (tiny positive or negative)
        g0 = w.astype(np.float64) @ x[0].astype(np.float64)
        w = (w - np.outer(g0 / (x[0].astype(np.float64) @ x[0]), x[0])).astype(np.float32)
        w += (rng.standard_normal((n, d)) * scale * 1e-6).astype(np.float32)
    s = certified_scores(certify_gate(w), x, x16=x16)
    g32 = x @ w.T                                   # float32, as a kernel would compute it
    g64 = x.astype(np.float64) @ w.T.astype(np.float64)
    certified = s <= 0
    assert not (certified & (g32 > 0)).any() and not (certified & (g64 > 0)).any()


def _exact_coefficients(w: np.ndarray, w8: np.ndarray) -> np.ndarray:
    """The bound of certified_gate.py with every norm exact (fsum over float64 squares, which float32 values and
    their differences give exactly), per row."""
    import math

    from actsparse.ir.quant import dequantize
    from actsparse.passes.certified_gate import X16_ROUNDING, float_allowance

    w64, deq = w.astype(np.float64), dequantize(w8, "q8_0", w.shape[1]).astype(np.float64)
    as16 = w.astype(np.float16).astype(np.float64)
    norm = lambda a: math.sqrt(math.fsum(a * a))   # noqa: E731
    return np.array([norm(r - q) + norm(r - h) + float_allowance(w.shape[1]) * (norm(q) + norm(r))
                     + X16_ROUNDING * norm(q) for r, q, h in zip(w64, deq, as16)])


def test_float32_certificate_is_never_below_the_exact_bound_on_adversarial_rows():
    """certify_gate sums squares in float32 and rounds outward: on rows built to stress that (a wide dynamic
    range, tiny values whose squares underflow, one outlier per group, constant rows, fp16 gates, d not a multiple
    of 32, rows split over 2 workers) each coefficient is >= the bound with exact norms, and within 1e-4 of it;
    the int8 copy is ir.quant.quantize's byte for byte."""
    from actsparse.ir.quant import quantize

    rng = np.random.default_rng(7)
    n, d = 70, 100
    rows = [rng.standard_normal((10, d)) * np.exp(rng.uniform(-18, 8, (10, d))),   # 1e-8 .. 3e3 within a row
            rng.standard_normal((10, d)) * 1e-21,                                  # squares below float32's range
            rng.standard_normal((10, d)) * 1e-3 + (rng.random((10, d)) < 0.03) * 1e3,   # outliers
            np.full((10, d), 0.1), np.zeros((10, d)),
            rng.standard_normal((20, d))]
    w32 = np.concatenate(rows).astype(np.float32)
    assert w32.shape == (n, d)
    for w in (w32, w32.astype(np.float16), w32[:, :64]):
        for workers in (1, 2):
            got = certify_gate(w, workers=workers)
            np.testing.assert_array_equal(got["w8"], quantize(np.asarray(w, np.float32), "q8_0").blob)
            exact = _exact_coefficients(np.asarray(w, np.float32), got["w8"])
            coef = got["coef"].astype(np.float64)
            assert (coef >= exact).all(), np.flatnonzero(coef < exact)
            assert (coef <= exact * (1 + 1e-4) + 1e-20).all()   # + the underflow allowance of tiny rows


def test_the_reference_scores_never_dequantize_the_whole_int8_copy(monkeypatch):
    """The interpreter evaluates linear(x, @w8) a block of rows at a time (the compile report does, per certified
    block: a whole 7B gate dequantized is 180 MB, which the process kept): the same scores as the whole
    dequantized copy, and no call dequantizes more rows than a block."""
    from actsparse.ir import interpreter, quant
    from actsparse.passes import run_pipeline
    from actsparse.passes.canonicalize import Canonicalize
    from actsparse.passes.detect_gated_mlp import DetectGatedMLP
    from actsparse.passes.sparsify_predictor import SparsifyPredictor

    graph = gated_mlp_graph(d=D, n=N, act="relu", gate_shift=-0.3)
    x = mlp_input(d=D, seq=5, seed=3)
    bound = run_pipeline(graph, [Canonicalize(), DetectGatedMLP(), SparsifyPredictor(predictor="bound")]).graph
    block = next(n for n in bound.nodes if n.op == "sparse_gated_mlp")
    scores = block.inputs[4]
    rows_seen = []
    real = quant.dequantize
    monkeypatch.setattr(quant, "dequantize", lambda blob, *a: rows_seen.append(blob.shape[0]) or real(blob, *a))
    monkeypatch.setattr(interpreter, "QUANTIZED_ROWS_PER_STEP", 32)
    got = interpreter.evaluate_from(bound, scores, {id(block.inputs[0]): x})
    assert rows_seen and max(rows_seen) == 32 and sum(rows_seen) == N
    w8 = bound.weights[scores.inputs[0].inputs[1].attrs["name"]]
    want = certified_scores({"w8": w8, "coef": bound.weights[scores.inputs[1].inputs[1].attrs["name"]]}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(evaluate(bound, [x])[0], evaluate(graph, [x])[0], rtol=1e-4, atol=1e-6)


def test_compiled_bound_predictor_equals_dense_and_certifies_neurons():
    # gate_shift -0.3 on the constant column: most neurons are off, many near the boundary
    graph = gated_mlp_graph(d=D, n=N, act="relu", gate_shift=-0.3)
    x = mlp_input(d=D, seq=24, seed=7)
    cm = actsparse.compile(graph, (x,), mode="predictor", predictor="bound")      # no calibration needed
    dense = actsparse.compile(graph, (x,), mode="dense")
    assert cm.report.pass_stats["sparsify-predictor"] == {"reglu": 1}
    node = next(n for n in cm.graph.nodes if n.op == "sparse_gated_mlp")
    assert node.attrs["mode"] == "predictor" and node.attrs["predictor"] == "bound" and node.attrs["cutoff"] == 0.0
    approx = node.inputs[4].inputs[0]
    assert approx.op == "linear" and approx.attrs["float_x"] and approx.inputs[1].attrs["layout"] == "q8_0"
    # one kernel scores the int8 rows and makes the neuron list (kernels/scored_mlp.py, certified): no score linear,
    # no select call before it (the score nodes' lowered calls are dropped as unused)
    calls = _calls(cm)
    assert any(c.startswith("actsparse_gmlp_certified") and f"_d{D}_f{N}_" in c for c in calls), calls
    assert not any(c.startswith(("actsparse_select", "actsparse_gmlp_listed", "actsparse_gmlp_scored",
                                 "actsparse_linear")) for c in calls), calls
    # a host with a VNNI int16 dot scores against x rounded to int16 (score_int16.py; symbol tag "w")
    from actsparse import targets
    from actsparse.codegen.kernels.score_int16 import has_int16_scores
    from actsparse.codegen.schedules import schedule_for
    from actsparse.targets.arm import on_aarch64

    sched = schedule_for(targets.get("x86"))
    int16 = sched.certified_scores == "int16" and not on_aarch64() and has_int16_scores(sched)
    cert = next(c for c in calls if c.startswith("actsparse_gmlp_certified"))
    assert cert.split("_d")[0].endswith("w") == int16, cert
    for inp in (x, mlp_input(d=D, seq=1, seed=3)):
        np.testing.assert_allclose(cm(inp), dense(inp), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(cm(inp), evaluate(graph, [inp])[0], rtol=1e-4, atol=1e-6)
    block = cm.report.blocks[0]
    assert block.predictor == "bound" and block.recall == 1.0 and block.calibrated_recall == 1.0
    assert block.predicted_sparsity > 0.3          # certified inactive share on these inputs
    assert block.predicted_sparsity <= block.sparsity


def test_bound_scores_outside_the_kernel_when_the_target_says_so():
    """A target with `certified_in_kernel` off (the quiet A/B's other outcome): a q8_0 score linear, then the scored
    kernel; the same exact output."""
    from dataclasses import replace

    from actsparse import targets

    target = replace(targets.get("x86"), certified_in_kernel=False)
    graph = gated_mlp_graph(d=D, n=N, act="relu", gate_shift=-0.3)
    x = mlp_input(d=D, seq=5, seed=9)
    cm = actsparse.compile(graph, (x,), target=target, mode="predictor", predictor="bound")
    calls = _calls(cm)
    assert any(c.startswith("actsparse_gmlp_scored") for c in calls), calls
    assert any(c.startswith("actsparse_linear") and "q8_0" in c for c in calls), calls
    assert not any(c.startswith("actsparse_gmlp_certified") for c in calls), calls
    np.testing.assert_allclose(cm(x), evaluate(graph, [x])[0], rtol=1e-4, atol=1e-6)


def _calls(cm) -> list[str]:
    return [line.split()[1] for line in cm.executable.as_text().splitlines() if line.strip().startswith("call ")]


def test_fatrelu_cutoff_is_its_threshold_and_output_is_exact():
    graph = gated_mlp_graph(d=D, n=N, act="fatrelu", threshold=0.05)
    x = mlp_input(d=D, seq=8, seed=2)
    cm = actsparse.compile(graph, (x,), mode="predictor", predictor="bound")
    node = next(n for n in cm.graph.nodes if n.op == "sparse_gated_mlp")
    assert node.attrs["cutoff"] == pytest.approx(0.05)
    np.testing.assert_allclose(cm(x), evaluate(graph, [x])[0], rtol=1e-4, atol=1e-6)


def test_bound_predictor_refuses_swiglu():
    graph = gated_mlp_graph(d=D, n=N, act="silu")
    with pytest.raises(ModeError, match="predictor='bound'.*ReLU-family.*relufy"):
        actsparse.compile(graph, (mlp_input(d=D),), mode="predictor", predictor="bound")


def test_fp16_storage_is_bounded_too_and_int8_storage_is_refused():
    from actsparse.errors import ActsparseError

    graph = gated_mlp_graph(d=D, n=N, act="relu", gate_shift=-0.3)   # fp32 weights, rounded to fp16 by the pass
    x = mlp_input(d=D, seq=8, seed=4)
    cm = actsparse.compile(graph, (x,), mode="predictor", predictor="bound", quantize="fp16")
    dense = actsparse.compile(graph, (x,), mode="dense", quantize="fp16")
    assert cm.graph.weights["mlp.gate.weight.predictor.coef"].dtype == np.float32
    assert any(c.startswith("actsparse_gmlp_certified") and "float16" in c for c in _calls(cm))
    np.testing.assert_allclose(cm(x), dense(x), rtol=1e-4, atol=1e-6)
    with pytest.raises(ActsparseError, match="quantize='int8'.*mode='exact'"):
        actsparse.compile(graph, (x,), mode="predictor", predictor="bound", quantize="int8")


@pytest.mark.parametrize("name", ["drelu_fused", "biased_transposed"])
def test_bound_predictor_golden_ir_and_exact_outputs(name):
    """Golden after-IR (a fused dReLU block; a block with a gate bias, which the bound's linear adds); the rewritten
    graph's reference equals the original's on inputs scaled up and down."""
    from actsparse.ir import print_graph
    from actsparse.passes import run_pipeline
    from actsparse.passes.canonicalize import Canonicalize
    from actsparse.passes.detect_gated_mlp import DetectGatedMLP
    from actsparse.passes.sparsify_predictor import SparsifyPredictor

    from .test_passes_golden import _check_golden, _inputs, _load

    graph = _load(name)
    result = run_pipeline(graph, [Canonicalize(), DetectGatedMLP(), SparsifyPredictor(predictor="bound")])
    assert sum(result.stats["sparsify-predictor"].values()) == 1
    _check_golden(name, "predictor-bound", print_graph(result.graph))
    for seed, scale in ((1, 1.0), (2, 1e-3), (3, 1e3)):
        x = [a * scale for a in _inputs(graph, seed=seed)]
        np.testing.assert_allclose(evaluate(result.graph, x)[0], evaluate(graph, x)[0], rtol=1e-4, atol=1e-6 * scale)


def test_a_second_fp16_compile_of_the_same_weights_shares_the_first_ones_copies():
    """exact then bound from one model (benchmarks/decode.py's part (a)): the fp16 copies of W_gate, W_up and W_down.t
    are the first compile's arrays (bit-identical, shared), so the process holds them once; outputs unchanged."""
    graph = gated_mlp_graph(d=D, n=N, act="relu", gate_shift=-0.3)
    x = mlp_input(d=D, seq=6, seed=2)
    exact = actsparse.compile(graph, (x,), mode="exact", quantize="fp16")
    bound = actsparse.compile(graph, (x,), mode="predictor", predictor="bound", quantize="fp16")
    fp16 = [name for name in exact.graph.weights if name.endswith(".fp16")]
    assert len(fp16) == 3, fp16
    for name in fp16:
        assert bound.graph.weights[name] is exact.graph.weights[name], name
    np.testing.assert_allclose(bound(x), exact(x), rtol=1e-4, atol=1e-6)
    # a model with other values under the same names gets its own copies
    other = actsparse.compile(gated_mlp_graph(d=D, n=N, act="relu", seed=9), (x,), mode="exact", quantize="fp16")
    assert all(other.graph.weights[name] is not exact.graph.weights[name] for name in fp16)


def test_exact_mode_reads_an_int8_gate_copy_first_where_the_target_says_so():
    """A target whose `exact_gate` is "certified": exact mode's block becomes the lossless `certified` variant (the
    bound's scores as its 5th input, the certified kernel), the report still says exact and which block got the
    copy, and the output equals dense; "dense" keeps the exact kernel; a memory budget or group-quantized
    storage keeps every gate row (the pass counts them)."""
    from dataclasses import replace

    from actsparse import targets
    from actsparse.passes import pipeline_for, run_pipeline
    from actsparse.passes.certify_exact_gate import CertifyExactGate

    host = targets.get("x86")
    graph = gated_mlp_graph(d=D, n=N, act="relu", gate_shift=-0.3)
    x = mlp_input(d=D, seq=6, seed=5)
    cm = actsparse.compile(graph, (x,), target=replace(host, exact_gate="certified"), mode="exact")
    assert cm.report.pass_stats["certify-exact-gate"] == {"reglu": 1}
    node = next(n for n in cm.graph.nodes if n.op == "sparse_gated_mlp")
    assert node.attrs["mode"] == "certified" and node.inputs[4].inputs[0].inputs[1].attrs["layout"] == "q8_0"
    assert any(c.startswith("actsparse_gmlp_certified") for c in _calls(cm))
    block = cm.report.blocks[0]
    assert (block.mode, block.exact_gate, block.predictor) == ("exact", "certified", "bound")
    assert 0.3 < block.predicted_sparsity <= block.sparsity   # from the compiled run's block input
    np.testing.assert_allclose(cm(x), actsparse.compile(graph, (x,), mode="dense")(x), rtol=1e-4, atol=1e-6)
    plain = actsparse.compile(graph, (x,), target=replace(host, exact_gate="dense"), mode="exact")
    assert plain.report.pass_stats["certify-exact-gate"] == {"kept-dense-gate": 1}
    assert any(c.startswith("actsparse_gmlp_exact") for c in _calls(plain))
    assert plain.report.blocks[0].exact_gate is None
    exact = run_pipeline(graph, pipeline_for("exact", "x86")[:-1]).graph   # every pass before certify-exact-gate
    for kept in (CertifyExactGate(memory_budget=1 << 30), CertifyExactGate(storage="int8")):
        assert run_pipeline(exact, [kept]).stats["certify-exact-gate"] == {"kept-dense-gate": 1}


def test_exact_decoding_with_the_certified_gate_equals_transformers_and_the_dense_gate():
    """A tiny ReLU Llama decoded in exact mode with the certified gate: the greedy tokens are transformers' and
    each step's logits are those of the exact kernel that reads every gate row (rtol 1e-4)."""
    from dataclasses import replace

    import torch

    from actsparse import targets

    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=96, vocab_size=128,
                                      max_position_embeddings=64, hidden_act="relu", initializer_range=0.1,
                                      pad_token_id=0, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    prompt = torch.tensor([[5, 6, 7, 9, 11, 3]])
    host = targets.get("x86")
    lms = {gate: actsparse.compile(model, target=replace(host, exact_gate=gate), mode="exact", max_seq=24)
           for gate in ("certified", "dense")}
    assert lms["certified"].report.pass_stats["certify-exact-gate"] == {"reglu": 1}
    assert lms["dense"].report.pass_stats["certify-exact-gate"] == {"kept-dense-gate": 1}
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(lms["certified"].generate(prompt, 8), expected)
    states = {gate: lm.prefill(prompt.numpy()) for gate, lm in lms.items()}
    for token in expected[0, prompt.shape[1]:].tolist():
        logits = {}
        for gate, lm in lms.items():
            logits[gate], states[gate] = lm.step(token, states[gate])
        np.testing.assert_allclose(logits["certified"], logits["dense"], rtol=1e-4, atol=1e-5)
