"""The routed MoE kernel (codegen/kernels/routed_moe.py) against the op's numpy reference (ir/moe.py): each token's
top-k experts only. The weights of the experts no token chose are NaN, so a kernel that read them — the all-experts
form, which multiplies their output by 0 — would return NaN: equality proves they were never read. Then the
lowering: the routed kernel where the family has one, each expert's dense kernel (weighted) where not, both
computing the op. The pass and the decoding path are tested in test_passes_golden.py (golden IR, counts, densify)
and test_decode.py (Mixtral, Qwen2-MoE: generate and prefill logits equal transformers')."""

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


def test_routed_kernel_refuses_a_non_relu_gate_in_exact_mode():
    with pytest.raises(ValueError, match="gate_act"):
        routed_moe(D, N, E, gate_act="silu", exact=True, sched=SCHED)
    with pytest.raises(ValueError, match="biases run dense"):
        routed_moe(D, N, E, exact=True, bias=True, sched=SCHED)


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
