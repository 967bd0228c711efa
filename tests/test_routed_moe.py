"""The routed MoE kernel (codegen/kernels/routed_moe.py) against the op's numpy reference (ir/moe.py): each token's
top-k experts only. The weights of the experts no token chose are NaN, so a kernel that read them — the all-experts
form, which multiplies their output by 0 — would return NaN: equality proves they were never read. Then the
lowering: the routed kernel where the family has one, each expert's dense kernel (weighted) where not, both
computing the op. The pass and the decoding path are tested in test_passes_golden.py (golden IR, counts, densify)
and test_decode.py (Mixtral, Qwen2-MoE: generate and prefill logits equal transformers')."""

import dataclasses

import numpy as np
import pytest

from actsparse.ir.moe import routed_moe_ref

tvm = pytest.importorskip("tvm")

from actsparse.codegen.kernels.routed_moe import absent_biases, routed_moe  # noqa: E402
from actsparse.codegen.kernels.schedule import CpuSchedule  # noqa: E402

from .test_kernels_x86 import run  # noqa: E402

D, N, E, K = 40, 72, 6, 2  # odd sizes: tails in every loop
SCHED = CpuSchedule(lanes=8, threads=2, rows=4, vector_registers=16)


def _case(rng, M: int, relu_sparsity: float):
    x = rng.standard_normal((M, D)).astype(np.float32)
    w_gate, w_up, w_down_t = (rng.standard_normal((E * N, D)).astype(np.float32) / D**0.5 for _ in range(3))
    w_gate[rng.random(E * N) < relu_sparsity] *= 0  # rows of 0: neurons that are exactly 0 for every token
    route_i = np.stack([rng.choice(E - 2, K, replace=False) for _ in range(M)]).astype(np.int64)  # E-2, E-1 unused
    route_w = rng.random((M, K)).astype(np.float32)
    for w in (w_gate, w_up, w_down_t):
        w[(E - 2) * N:] = np.nan  # the experts no token chose
    return x, w_gate, w_up, w_down_t, route_w, route_i


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "dense"])
@pytest.mark.parametrize("M", [1, 5], ids=["decode", "prefill"])
def test_routed_kernel_runs_only_the_chosen_experts(exact, M):
    rng = np.random.default_rng(M)
    x, w_gate, w_up, w_down_t, route_w, route_i = _case(rng, M, relu_sparsity=0.5)
    attrs = {"experts": E, "gate_act": "relu", "up_act": "identity", "threshold": 0.0}
    expected = routed_moe_ref(x, w_gate, w_up, w_down_t, route_w, route_i, attrs, {})
    assert np.isfinite(expected).all()
    kernel = routed_moe(D, N, E, exact=exact, sched=SCHED)
    got = run(kernel, x, w_gate, w_up, w_down_t, route_w, route_i, *absent_biases(D), out_shape=(M, D))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("M", [1, 5], ids=["decode", "prefill"])
def test_biased_routed_kernel_adds_the_chosen_experts_biases_only(M):
    """gpt-oss's experts: gate/up biases inside a clamped SwiGLU, a down bias per expert; the unchosen experts'
    biases are NaN too."""
    rng = np.random.default_rng(10 + M)
    x, w_gate, w_up, w_down_t, route_w, route_i = _case(rng, M, relu_sparsity=0.0)
    b_gate, b_up = (rng.standard_normal(E * N).astype(np.float32) for _ in range(2))
    b_down = rng.standard_normal((E, D)).astype(np.float32)
    for b in (b_gate, b_up):
        b[(E - 2) * N:] = np.nan
    b_down[E - 2:] = np.nan
    attrs = {"experts": E, "gate_act": "clamped_swish7", "up_act": "clip7_plus1", "threshold": 0.0, "bias": True,
             "mode": "dense"}
    expected = routed_moe_ref(x, w_gate, w_up, w_down_t, route_w, route_i, b_gate, b_up, b_down, attrs, {})
    assert np.isfinite(expected).all()
    kernel = routed_moe(D, N, E, gate_act="clamped_swish7", up_act="clip7_plus1", exact=False, bias=True, sched=SCHED)
    got = run(kernel, x, w_gate, w_up, w_down_t, route_w, route_i, b_gate, b_up, b_down, out_shape=(M, D))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    unbiased = routed_moe_ref(x, w_gate, w_up, w_down_t, route_w, route_i, {**attrs, "bias": False}, {})
    assert not np.allclose(unbiased, expected, rtol=1e-3)  # the biases matter here


def test_routed_kernel_takes_quantized_experts():
    """int8 (q8_0) stacked experts, as passes/quantize.py stores them: the kernel equals the reference on the
    dequantized weights."""
    from actsparse.ir.quant import quantize

    rng = np.random.default_rng(7)
    x, w_gate, w_up, w_down_t, route_w, route_i = _case(rng, 3, relu_sparsity=0.3)
    d = 64  # q8_0 groups of 32 along a row
    x = rng.standard_normal((3, d)).astype(np.float32)
    weights = [quantize(rng.standard_normal((E * N, d)).astype(np.float32) / d**0.5, "q8_0") for _ in range(3)]
    attrs = {"experts": E, "gate_act": "relu", "up_act": "identity", "threshold": 0.0}
    expected = routed_moe_ref(x, *(w.dequantize() for w in weights), route_w, route_i, attrs, {})
    got = run(routed_moe(d, N, E, exact=True, dtype="q8_0", sched=SCHED), x, *(w.blob for w in weights), route_w,
              route_i, *absent_biases(d), out_shape=(3, d))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def _thresholds(x, w_gate, w_up, fraction: float, act: str = "silu") -> np.ndarray:
    """Two cuts per expert neuron [2, E·N]: on the gate, its expert's |act(gate)| quantile that drops `fraction` of
    the expert's values on x; on h, the |act(gate)·up| quantile that drops (1 + fraction) / 2 (NaN experts: 0), each
    scaled per neuron by 0.5x .. 1.5x."""
    from actsparse.ir.activations import apply

    a = apply(act, x @ w_gate.T)
    cuts = []
    for values, q in ((np.abs(a), fraction), (np.abs(a * (x @ w_up.T)), (1 + fraction) / 2)):
        per_expert = np.array([np.nan_to_num(np.quantile(values[:, e * N:(e + 1) * N], q)) for e in range(E)])
        scale = np.random.default_rng(len(x) + len(cuts)).uniform(0.5, 1.5, (E, N))
        cuts.append((per_expert[:, None] * scale).reshape(-1))
    return np.stack(cuts).astype(np.float32)


@pytest.mark.parametrize("M", [1, 5], ids=["decode", "prefill"])
@pytest.mark.parametrize("dtype", ["float32", "q8_0", "q4_0"])
def test_threshold_routed_kernel_drops_each_neurons_gate_values_at_its_own_threshold(M, dtype):
    """Threshold mode's routed experts (SwiGLU): a token keeps neuron i of expert e only where |silu(g_i)|·|r_e| >
    thr[0, e·N + i] and then |h_i|·|r_e| > thr[1, e·N + i], r_e its routing weight. Thresholds differ per neuron (one
    expert's at 0: every neuron kept), the unchosen experts' weights are NaN, and the result differs from the dense
    experts' and from the gate cut's alone (both cuts took effect)."""
    from actsparse.ir.quant import quantize

    rng = np.random.default_rng(20 + M)
    x, w_gate, w_up, w_down_t, route_w, route_i = _case(rng, M, relu_sparsity=0.0)
    d = D if dtype == "float32" else 64   # quantized rows: groups of 32
    if dtype != "float32":
        x = rng.standard_normal((M, d)).astype(np.float32)
        quantized = [quantize(rng.standard_normal((E * N, d)).astype(np.float32) / d**0.5, dtype) for _ in range(3)]
        arrays, blobs = [q.dequantize() for q in quantized], [q.blob for q in quantized]
    else:
        arrays = blobs = [w_gate, w_up, w_down_t]
    probe = rng.standard_normal((64, d)).astype(np.float32)
    thr = _thresholds(probe, np.nan_to_num(arrays[0]), np.nan_to_num(arrays[1]), 0.5)
    thr[:, N:2 * N] = 0.0
    attrs = {"experts": E, "gate_act": "silu", "up_act": "identity", "threshold": 0.0, "mode": "threshold"}
    expected = routed_moe_ref(x, *arrays, route_w, route_i, thr, attrs, {})
    dense = routed_moe_ref(x, *arrays, route_w, route_i, {**attrs, "mode": "dense"}, {})
    gate_only = routed_moe_ref(x, *arrays, route_w, route_i, thr * np.array([[1], [0]], np.float32), attrs, {})
    assert np.isfinite(expected).all() and not np.allclose(expected, dense, rtol=1e-3)
    assert not np.allclose(expected, gate_only, rtol=1e-3)
    kernel = routed_moe(d, N, E, gate_act="silu", exact=False, thresholds=True, dtype=dtype, sched=SCHED)
    got = run(kernel, x, *blobs, route_w, route_i, *absent_biases(d), thr, out_shape=(M, d))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    zero = run(kernel, x, *blobs, route_w, route_i, *absent_biases(d), np.zeros((2, E * N), np.float32),
               out_shape=(M, d))
    np.testing.assert_allclose(zero, dense, rtol=1e-4, atol=1e-5)   # t = 0: every neuron of a SwiGLU expert kept


def test_routed_kernel_refuses_a_non_relu_gate_in_exact_mode():
    with pytest.raises(ValueError, match="gate_act"):
        routed_moe(D, N, E, gate_act="silu", exact=True, sched=SCHED)
    with pytest.raises(ValueError, match="biases run dense"):
        routed_moe(D, N, E, exact=True, bias=True, sched=SCHED)
    with pytest.raises(ValueError, match="not both"):
        routed_moe(D, N, E, exact=True, thresholds=True, sched=SCHED)


@pytest.mark.parametrize("target, kernel", [("x86", "routedx"), ("cuda", "routedx")])
def test_lowering_calls_the_routed_kernel_where_the_family_has_one(target, kernel):
    """x86: one call of the routed kernel; cuda: one call of its per-slot routed kernel (tests/test_cuda_routed.py)."""
    from actsparse import targets
    from actsparse.codegen.lower import lower_graph
    from actsparse.passes import pipeline_for, run_pipeline

    from .test_passes_golden import _load

    graph = run_pipeline(_load("moe_routed"), pipeline_for("exact")).graph
    assert graph.count("routed_moe") == 1
    module, _ = lower_graph(graph, targets.get(target))
    kernels = [str(gv.name_hint) for gv in module.functions if str(gv.name_hint).startswith("actsparse")]
    assert [k for k in kernels if "gmlp" in k] and all(f"_gmlp_{kernel}" in k for k in kernels if "gmlp" in k)
    assert str(module["main"]).count("_gmlp_") == 1


def test_all_experts_fallback_lowering_computes_the_op(monkeypatch):
    """The lowering a family without a routed kernel gets (and CUDA's biased experts), run on the CPU by hiding the
    CPU's routed kernel: the compiled graph equals the original's interpretation, routing included."""
    import actsparse
    from actsparse.codegen import kernels
    from actsparse.ir import evaluate

    from .test_passes_golden import _inputs, _load

    cpu = {k: v for k, v in kernels.FAMILIES["CpuSchedule"].items() if k != "routed"}
    monkeypatch.setitem(kernels.FAMILIES, "CpuSchedule", cpu)
    graph = _load("moe_routed")
    x = _inputs(graph, seq=4)
    cm = actsparse.compile(graph, tuple(x), mode="exact")
    assert cm.graph.count("routed_moe") == 1
    np.testing.assert_allclose(cm(*x), evaluate(graph, x)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["exact", "dense"])
def test_compiled_routed_kernel_with_empty_biases_computes_the_op(mode):
    """The lowering's call of the routed kernel without biases (its empty bias parameters, `absent_biases`):
    the compiled graph equals the original's interpretation."""
    import actsparse
    from actsparse.ir import evaluate

    from .test_passes_golden import _inputs, _load

    graph = _load("moe_routed")
    x = _inputs(graph, seq=4)
    cm = actsparse.compile(graph, tuple(x), mode=mode)
    assert cm.graph.count("routed_moe") == 1
    np.testing.assert_allclose(cm(*x), evaluate(graph, x)[0], rtol=1e-4, atol=1e-5)


def _input_case(rng, M: int, d: int, dtype: str = "float32"):
    """Input-mode experts [E·d, N] (each transposed), their thresholds (each expert's own quantiles of |x| and of
    |h| on a probe, so every expert drops a different share; expert 1's 0: lossless) and routing that leaves the
    last two experts unchosen (their weights NaN)."""
    from actsparse.ir.activations import apply
    from actsparse.ir.quant import quantize

    x = rng.standard_normal((M, d)).astype(np.float32)
    gate, up = (rng.standard_normal((E * d, N)).astype(np.float32) / d**0.5 for _ in range(2))
    down = rng.standard_normal((E * N, d)).astype(np.float32) / N**0.5
    quantized = dtype != "float32"
    blobs = [quantize(w, dtype) for w in (gate, up, down)] if quantized else None
    arrays = [b.dequantize() for b in blobs] if quantized else [gate, up, down]
    probe = rng.standard_normal((64, d)).astype(np.float32)
    x_thr, h_thr = np.zeros(E * d, np.float32), np.zeros(E * N, np.float32)
    for e, share in enumerate((0.5, 0.0, 0.3, 0.7, 0.5, 0.5)):
        rows, neurons = slice(e * d, (e + 1) * d), slice(e * N, (e + 1) * N)
        kept = np.where(np.abs(probe) > np.quantile(np.abs(probe), share), probe, 0)
        h = apply("silu", kept @ arrays[0][rows]) * (kept @ arrays[1][rows])
        if share:
            x_thr[rows] = np.quantile(np.abs(probe), share) * rng.uniform(0.5, 1.5, d)
            h_thr[neurons] = np.quantile(np.abs(h), share) * rng.uniform(0.5, 1.5, N)
    for w in (gate, up, *arrays[:2]):
        w[(E - 2) * d:] = np.nan
    for w in (down, arrays[2]):
        w[(E - 2) * N:] = np.nan
    if quantized:   # the unchosen experts' blocks NaN too
        blobs = [quantize(w, dtype) for w in (gate, up, down)]
        arrays = [b.dequantize() for b in blobs]
    route_i = np.stack([rng.choice(E - 2, K, replace=False) for _ in range(M)]).astype(np.int64)
    route_w = rng.random((M, K)).astype(np.float32)
    return x, arrays, [b.blob for b in blobs] if quantized else arrays, route_w, route_i, x_thr, h_thr


@pytest.mark.parametrize("M", [1, 5], ids=["decode", "prefill"])
@pytest.mark.parametrize("dtype", ["float32", "q8_0", "q4_0"])
@pytest.mark.parametrize("criterion", ["product", "gate"])
def test_input_routed_kernel_reads_each_experts_kept_channels_and_neurons(M, dtype, criterion):
    """Input-mode routed experts (SwiGLU, `routed_input.py`): a token routed to expert e keeps channel i where |x_i| >
    x_thr[e·d + i] and neuron j where |h_j| (or |silu(g_j)|) > h_thr[e·N + j]; the unchosen experts' NaN weights are
    never read; the result is the reference's and differs from the dense experts' (the thresholds took effect); all
    thresholds 0 give the dense experts."""
    from actsparse.codegen.kernels.routed_input import routed_input_moe

    rng = np.random.default_rng(30 + M)
    d = D if dtype == "float32" else 64   # quantized rows: groups of 32 along the neurons (N = 72: a tail group)
    x, arrays, blobs, route_w, route_i, x_thr, h_thr = _input_case(rng, M, d, dtype)
    attrs = {"experts": E, "gate_act": "silu", "up_act": "identity", "mode": "input", "criterion": criterion}
    expected = routed_moe_ref(x, *arrays, route_w, route_i, x_thr, h_thr, attrs, {})
    zero = [np.zeros_like(x_thr), np.zeros_like(h_thr)]
    dense = routed_moe_ref(x, *arrays, route_w, route_i, *zero, attrs, {})
    assert np.isfinite(expected).all() and not np.allclose(expected, dense, rtol=1e-3)
    kernel = routed_input_moe(d, N, E, gate_act="silu", criterion=criterion, dtype=dtype, sched=SCHED)
    np.testing.assert_allclose(run(kernel, x, *blobs, route_w, route_i, x_thr, h_thr, out_shape=(M, d)), expected,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(run(kernel, x, *blobs, route_w, route_i, *zero, out_shape=(M, d)), dense, rtol=1e-4,
                               atol=1e-5)


def test_compiled_input_routed_op_computes_the_op():
    """The lowering of `routed_moe{mode=input}` (the routed-input kernel, its thresholds passed after the routing):
    a graph of the op alone, compiled for the host, equals its interpretation; and densify's twin (each expert's
    gate / up transposed back, thresholds dropped) equals the op with thresholds 0."""
    import actsparse
    from actsparse.ir import Graph, Node, TensorType, evaluate, weight_node
    from actsparse.passes.densify import Densify

    rng = np.random.default_rng(5)
    M = 6
    x, arrays, _, route_w, route_i, x_thr, h_thr = _input_case(rng, M, D)
    names = ("gate", "up", "down_t", "x_thr", "h_thr")
    weights = [weight_node(f"moe.routed.{n}", a) for n, a in zip(names, (*arrays, x_thr, h_thr))]
    inputs = [Node("input", (), {"name": n}, TensorType(shape, dtype)) for n, shape, dtype in
              (("x", (M, D), "f32"), ("route_w", (M, K), "f32"), ("route_i", (M, K), "i64"))]
    attrs = {"experts": E, "gate_act": "silu", "up_act": "identity", "mode": "input", "pattern": "swiglu"}
    op = Node("routed_moe", (inputs[0], *weights[:3], *inputs[1:], *weights[3:]), attrs, TensorType((M, D), "f32"),
              "moe")
    graph = Graph(inputs, [op], {w.attrs["name"]: a for w, a in zip(weights, (*arrays, x_thr, h_thr))})
    values = (x, route_w, route_i)
    cm = actsparse.compile(graph, values, mode="dense")
    assert [n.attrs["mode"] for n in cm.graph.nodes if n.op == "routed_moe"] == ["input"]
    np.testing.assert_allclose(cm(*values), evaluate(graph, values)[0], rtol=1e-4, atol=1e-5)
    twin = Densify().run(graph)
    (dense,) = [n for n in twin.nodes if n.op == "routed_moe"]
    assert dense.attrs["mode"] == "dense" and dense.inputs[1].shape == (E * N, D) and len(dense.inputs) == 6
    zero = routed_moe_ref(x, *arrays, route_w, route_i, np.zeros_like(x_thr), np.zeros_like(h_thr), attrs, {})
    np.testing.assert_allclose(evaluate(twin, values)[0], zero, rtol=1e-4, atol=1e-5)


def test_arm_threshold_routed_kernel_matches_the_reference_under_qemu():
    """The threshold routed kernel built for aarch64 (NEON's dot product on the 4-bit rows: x in 8-bit blocks, as
    the reference rounds it), float32 and q4_0 experts, decode and prefill, run under qemu."""
    from actsparse import targets
    from actsparse.codegen.kernels.common import x_operand
    from actsparse.codegen.schedules import schedule_for
    from actsparse.ir.quant import quantize

    from .kernel_cases import Call, cross_kernels, require_cross_tools, run_batch, x_seen

    require_cross_tools()
    sched = schedule_for(targets.get("arm"))
    rng = np.random.default_rng(3)
    attrs = {"experts": E, "gate_act": "silu", "up_act": "identity", "threshold": 0.0, "mode": "threshold"}
    jobs = []
    for dtype, d in (("float32", D), ("q4_0", 64)):
        prim = routed_moe(d, N, E, gate_act="silu", exact=False, thresholds=True, dtype=dtype, sched=sched)
        x8 = x_operand(d, dtype, sched)[0]
        calls = []
        for M in (1, 4):
            _, _, _, _, route_w, route_i = _case(rng, M, relu_sparsity=0.0)
            x = rng.standard_normal((M, d)).astype(np.float32)
            floats = [rng.standard_normal((E * N, d)).astype(np.float32) / d**0.5 for _ in range(3)]
            stored = floats if dtype == "float32" else [quantize(w, dtype) for w in floats]
            values = floats if dtype == "float32" else [q.dequantize() for q in stored]
            thr = _thresholds(rng.standard_normal((64, d)).astype(np.float32), values[0], values[1], 0.6)
            want = routed_moe_ref(x_seen(x, x8), *values, route_w, route_i, thr, attrs, {})
            blobs = stored if dtype == "float32" else [q.blob for q in stored]
            out = np.full((M, d), np.nan, np.float32)
            calls.append(Call([x, *blobs, route_w, route_i, *absent_biases(d), thr, out], want,
                              np.full(d, max(1.0, np.abs(want).max())), "float32"))
        jobs.append((prim, calls))
    for (_, calls), outs in zip(jobs, run_batch(cross_kernels([p for p, _ in jobs]), jobs)):
        for call, out in zip(calls, outs):
            call.check(out)


def test_a_swiglu_mixtral_decoder_in_threshold_mode_runs_its_routed_experts_thresholded():
    """A Mixtral (SwiGLU experts, top-2 of 4) through compile() in threshold mode (the default method, whose routed
    experts take cuts per neuron unless asked otherwise): every expert neuron takes its own
    threshold (weighted CATS), calibrated on the prompt tokens routed to its expert (the sink position left out), the
    expert's sparsity from the layer's pooled budget, stacked into one `routed_moe{mode=threshold}`; the compiled
    prompt step computes what its graph says, the report shows each expert's median threshold, its method and
    measured sparsity near the asked one, and the decoder generates."""
    import torch

    import actsparse
    from actsparse.ir import evaluate

    from .test_decode import PROMPT, hf_model

    model = hf_model("mixtral", hidden_act="silu")
    calibration = [torch.randint(0, model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(s))
                   for s in range(8)]
    lm = actsparse.compile(model, mode="threshold", sparsity=0.5, max_seq=32, calibration=calibration)
    assert lm.report.pass_stats["route-moe"] == {"routed-moe": 1, "routed-experts": 4, "routed-thresholds": 1}
    (routed,) = [n for n in lm.module.graph.nodes if n.op == "routed_moe"]
    thresholds = lm.module.graph.weights[routed.inputs[6].attrs["name"]]
    assert routed.attrs["mode"] == "threshold" and routed.attrs["gate_act"] == "silu"
    n = routed.inputs[1].shape[0] // 4
    assert thresholds.shape == (2, 4 * n) and (thresholds[0] > 0).all() and (thresholds[1] >= 0).all()
    medians = [float(np.median(thresholds[0, e * n:(e + 1) * n])) for e in range(4)]
    assert len(set(medians)) == 4 and all(len(set(thresholds[0, e * n:(e + 1) * n].tolist())) > n // 2
                                          for e in range(4))
    # the layer's experts share one pair of cuts (routed_thresholds.least_error_cuts): their shares dropped differ,
    # around 0.5 + the chosen shift (SHIFTS: at most 0.2)
    calibrated = routed.attrs["expert_calibrated"]
    assert len(set(calibrated)) == 4 and all(0 < s < 1 for s in calibrated) and 0.4 < np.mean(calibrated) < 0.8
    assert lm.report.pass_stats["sparsify-threshold"]["shared-cut-layers"] == 1
    experts = [b for b in lm.report.blocks if b.expert is not None]
    assert [b.threshold for b in experts] == pytest.approx(medians)
    assert {b.method for b in experts} == {"weighted-cats"}
    # measured on the prompt's tokens routed to each (its routing recomputed from the layer's input)
    assert all(b.sparsity is not None for b in experts) and 0.25 < np.mean([b.sparsity for b in experts]) < 0.75
    ids = PROMPT.numpy()   # the prompt at position 0, no slot filled before it, empty caches (decoder_inputs)
    inputs = (ids, np.zeros(1, np.int64), np.zeros(ids.shape[1], np.int64),
              *(np.zeros(t.shape, np.float32) for _, t in lm.module.inputs[3:]))
    np.testing.assert_allclose(lm.module(*inputs)[0], evaluate(lm.module.graph, inputs)[0], rtol=1e-4, atol=1e-4)
    assert lm.generate(PROMPT, 6).shape == (1, PROMPT.shape[1] + 6)


def test_a_swiglu_mixtral_decoder_in_threshold_mode_runs_its_routed_experts_input_sparse(monkeypatch):
    """The default method (rotated-wina-greedy) on a Mixtral's routed experts, asked for input sparsity
    (`routed_experts="input"`, passes/routed_input.py): the layer's
    experts read x turned by one rotation (a `linear` they share; the router reads x as it is), Q the principal axes of
    their calibration rows pooled; each expert's x_thr / h_thr come from wina-greedy on its own routed tokens, turned,
    at 0.5 plus Q's share of the bytes a token's k experts read; route-moe stacks them into one
    `routed_moe{mode=input}` (gate / up each expert transposed). Compiled, the prompt step computes what its graph
    says; the report's expert rows show x's and the effective sparsity near the asked one; the decoder generates."""
    import torch

    import actsparse
    from actsparse.ir import evaluate
    from actsparse.ir.quant import dequantize
    from actsparse.passes.block_weights import BlockWeights
    from actsparse.passes.rotation import rotation_share

    from .test_decode import PROMPT, hf_model

    model = hf_model("mixtral", hidden_act="silu")
    calibration = [torch.randint(0, model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(s))
                   for s in range(8)]
    routed_input_experts(monkeypatch)
    lm = actsparse.compile(model, mode="threshold", sparsity=0.5, max_seq=32, calibration=calibration)
    assert lm.report.pass_stats["route-moe"] == {"routed-moe": 1, "routed-experts": 4, "routed-input": 1}
    assert lm.report.pass_stats["sparsify-threshold"]["routed-expert-input"] == 4
    graph = lm.module.graph
    (routed,) = [n for n in graph.nodes if n.op == "routed_moe"]
    assert routed.attrs["mode"] == "input" and routed.attrs["method"] == "rotated-wina-greedy"
    rotation, w_gate_t = routed.inputs[0], routed.inputs[1]
    assert rotation.op == "linear" and rotation.inputs[1].attrs["name"] == "model.layers.0.mlp.experts.rotation.q8_0"
    layer_input = rotation.inputs[0]
    router_reads = {id(a) for a in _ancestors(routed.inputs[5])}
    assert id(layer_input) in router_reads and id(rotation) not in router_reads   # the router reads x as it is
    d, n = layer_input.shape[-1], routed.inputs[3].shape[0] // 4
    assert w_gate_t.shape == (4 * d, n)
    q = rotation.inputs[1]
    q_values = dequantize(graph.weights[q.attrs["name"]], q.attrs["layout"], d)
    np.testing.assert_allclose(q_values @ q_values.T, np.eye(d), atol=0.03)   # orthogonal, stored q8_0
    x_thr, h_thr = (graph.weights[w.attrs["name"]] for w in routed.inputs[6:8])
    assert x_thr.shape == (4 * d,) and h_thr.shape == (4 * n,)
    assert len({float(np.median(x_thr[e * d:(e + 1) * d])) for e in range(4)}) == 4 and (h_thr > 0).all()
    blocks = BlockWeights(np.zeros((n, d), np.float32), np.zeros((n, d), np.float32), np.zeros((d, n), np.float32),
                          "silu")
    assert routed.attrs["rotation_share"] == pytest.approx(rotation_share(d, blocks, "fp32") / 2, abs=1e-5)
    experts = [b for b in lm.report.blocks if b.expert is not None]
    assert {b.method for b in experts} == {"rotated-wina-greedy"} and {b.mode for b in experts} == {"input"}
    assert all(b.input_sparsity is not None for b in experts)
    assert 0.3 < np.mean([b.effective_sparsity for b in experts]) < 0.7
    ids = PROMPT.numpy()
    inputs = (ids, np.zeros(1, np.int64), np.zeros(ids.shape[1], np.int64),
              *(np.zeros(t.shape, np.float32) for _, t in lm.module.inputs[3:]))
    # compiled, the rotation (q8_0) runs on the host's int8 dots, which round x to 8-bit blocks where the interpreter
    # multiplies floats: the experts' x differs by that rounding, and a value near its threshold may fall either
    # side (the op itself, compiled, equals its interpretation: test_compiled_input_routed_op_computes_the_op)
    turned = evaluate(graph, inputs, keep=[rotation])[-1]
    compiled = lm.module.kernel_inputs(inputs, [w_gate_t.attrs["name"]])[w_gate_t.attrs["name"]]
    np.testing.assert_allclose(compiled.reshape(turned.shape), turned, atol=0.01 * np.abs(turned).max())
    got, want = lm.module(*inputs)[0], evaluate(graph, inputs)[0]
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max() and (got.argmax(-1) == want.argmax(-1)).all()
    assert lm.generate(PROMPT, 6).shape == (1, PROMPT.shape[1] + 6)


def routed_input_experts(monkeypatch) -> None:
    """compile()'s threshold pipeline with sparsify-threshold's `routed_experts="input"` (a pass option)."""
    import functools

    from actsparse.passes import pipeline

    monkeypatch.setattr(pipeline, "SparsifyThreshold", functools.partial(pipeline.SparsifyThreshold,
                                                                         routed_experts="input"))


def _ancestors(node) -> list:
    """`node` and every node it reads, transitively."""
    seen, stack = {}, [node]
    while stack:
        n = stack.pop()
        if id(n) not in seen:
            seen[id(n)] = n
            stack.extend(n.inputs)
    return list(seen.values())


def test_route_moe_stacks_threshold_experts_and_computes_what_the_all_experts_form_did(monkeypatch):
    """ReLU experts in threshold mode (a threshold per neuron: `neuron-threshold`, gate relu): route-moe's rewrite
    fires (one routed_moe in mode threshold, gate relu, the experts' neuron thresholds stacked as its thresholds
    input) and the routed graph computes what the all-experts threshold graph before it did; densify drops the
    thresholds (mode dense, six inputs); compiled, the routed graph equals its interpretation. Explicit thresholds
    (one t per expert: FATReLU at t) stack as that t repeated over the expert's neurons, with no cut on h (0)."""
    import actsparse
    from actsparse import targets
    from actsparse.codegen.context import LoweringError
    from actsparse.codegen.lower import lower_graph
    from actsparse.ir import evaluate, moe, parse_graph, print_graph
    from actsparse.passes import pipeline_for, run_pipeline
    from actsparse.passes.densify import Densify
    from actsparse.passes.route_moe import RouteMoE

    from .test_passes_golden import _inputs, _load

    graph = _load("moe_routed")
    calibration = tuple(tuple(_inputs(graph, seq=16, seed=s)) for s in range(8))
    passes = pipeline_for("threshold", calibration=calibration, sparsity=0.7, method="cats")
    assert isinstance(passes[-1], RouteMoE)
    before = run_pipeline(graph, passes[:-1])
    after = run_pipeline(before.graph, passes[-1:])
    assert after.stats["route-moe"] == {"routed-moe": 1, "routed-experts": 3, "routed-thresholds": 1}
    (routed,) = [n for n in after.graph.nodes if n.op == "routed_moe"]
    experts = [n for n in before.graph.nodes if n.op == "sparse_gated_mlp"]
    assert [(n.attrs["mode"], n.attrs["gate_act"]) for n in experts] == [("neuron-threshold", "relu")] * 3
    assert routed.attrs["gate_act"] == "relu"
    np.testing.assert_array_equal(after.graph.weights[routed.inputs[6].attrs["name"]], np.concatenate(
        [before.graph.weights[n.inputs[4].attrs["name"]] for n in experts], axis=1))
    given = {n.loc: 0.1 * (k + 1) for k, n in enumerate(experts)}
    explicit = run_pipeline(graph, [dataclasses.replace(p, thresholds=given) if p.name == "sparsify-threshold" else p
                                    for p in passes])
    (stacked,) = [n for n in explicit.graph.nodes if n.op == "routed_moe"]
    n_ff = stacked.inputs[1].shape[0] // 3
    np.testing.assert_allclose(explicit.graph.weights[stacked.inputs[6].attrs["name"]],
                               [np.repeat([0.1, 0.2, 0.3], n_ff), np.zeros(3 * n_ff)], rtol=1e-6)
    x = _inputs(graph, seq=16, seed=99)
    np.testing.assert_allclose(evaluate(after.graph, x)[0], evaluate(before.graph, x)[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(evaluate(after.graph, x)[0], evaluate(graph, x)[0], rtol=1e-3)   # 0.7: lossy
    dense = run_pipeline(after.graph, [Densify()])
    (twin,) = [n for n in dense.graph.nodes if n.op == "routed_moe"]
    assert twin.attrs["mode"] == "dense" and len(twin.inputs) == 6
    np.testing.assert_allclose(evaluate(dense.graph, x)[0], evaluate(graph, x)[0], rtol=1e-4, atol=1e-5)
    cm = actsparse.compile(graph, tuple(x), mode="threshold", calibration=calibration, sparsity=0.7, method="cats")
    assert cm.graph.count("routed_moe") == 1
    np.testing.assert_allclose(cm(*x), evaluate(cm.graph, x)[0], rtol=1e-4, atol=1e-5)
    # the text form (artifacts store it) round-trips; CUDA lowers it to its per-slot threshold kernel; a family
    # whose routed kernel takes no thresholds (CUDA's, taken out of the table) says so
    text = print_graph(after.graph)
    assert print_graph(parse_graph(text, after.graph.weights)) == text
    module, _ = lower_graph(after.graph, targets.get("cuda"))
    assert [str(gv.name_hint) for gv in module.functions if "_gmlp_routedte3" in str(gv.name_hint)]
    monkeypatch.setitem(moe.ROUTED_MODES, "threshold", ("cpu",))
    with pytest.raises(LoweringError, match="experts with thresholds need a routed kernel .* pick a CPU target"):
        lower_graph(after.graph, targets.get("cuda"))


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_threshold_experts_quantized_run_routed_and_compute_their_graph(quantize):
    """Threshold experts under `quantize=`: the stacked gate / up / down take the kind's layout (the down a neuron per
    row, as the routed threshold kernel reads it), the thresholds stay float, and the compiled module computes what
    its graph says (x rounded to 8-bit blocks where the host's int8 dot serves the layout: a looser tolerance)."""
    import actsparse
    from actsparse.ir import evaluate

    from .test_passes_golden import _inputs, _load

    graph = _load("moe_routed")
    calibration = tuple(tuple(_inputs(graph, seq=16, seed=s)) for s in range(8))
    x = _inputs(graph, seq=6, seed=99)
    cm = actsparse.compile(graph, tuple(x), mode="threshold", calibration=calibration, sparsity=0.6, method="cats",
                           quantize=quantize)
    (routed,) = [n for n in cm.graph.nodes if n.op == "routed_moe"]
    assert routed.attrs["mode"] == "threshold" and routed.attrs.get("down_rows", "neurons") == "neurons"
    layouts = [w.attrs.get("layout", "dense") for w in routed.inputs[1:4]]
    assert all(layout != "dense" for layout in layouts) and routed.inputs[6].attrs.get("layout", "dense") == "dense"
    want = evaluate(cm.graph, x)[0]
    np.testing.assert_allclose(cm(*x), want, rtol=0.02, atol=0.02 * np.abs(want).max())   # 0.5% measured
