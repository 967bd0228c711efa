"""Kernels whose down projection has a layout of its own: q8_0 down rows beside 4-bit gate / up rows (a GGUF's q4_0 /
q4_1 blocks kept as stored, its down re-quantized a neuron per row at 8 bits: passes/quantize.py,
`SparseVariant.own_down_layout`, and routed experts, whose down is always re-laid: the routed kernel, and the dense
kernel a family without one runs per expert). Every kernel of those variants x target family: x86 natively (the
float path and the host's int8-dot path), ARM NEON under qemu, CUDA through nvcc + the SIMT emulator
(tests/simt.py).

As tests/test_kernels_quant.py: hypothesis draws the gate layout, a ragged input dim and the activations; each
example's calls hold 0% and 100% active neurons and a random set; the reference is float64 on the dequantized
weights of each layout."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .kernel_cases import (
    cross_kernels,
    examples,
    mlp_call,
    primfunc,
    require_cross_tools,
    run_batch,
    run_native,
    simt_kernels,
    x_seen,
)

pytest.importorskip("tvm")

DOWN = "q8_0"
ACTS = {"exact": ("relu", "relu", 0.0), "indexed": ("silu", "identity", 0.0),
        "threshold": ("silu", "identity", 0.5, "gate"),
        "dense": ("silu", "identity", 0.0)}   # a routed expert's in the all-experts form (no routed kernel)
KINDS = tuple(ACTS)
gate_layouts = st.sampled_from(("q4_0", "q4_1"))


def calls_for(kind, rng, d, n_ff, dtype, frac, x8=False):
    """Decode and prefill calls at 0%, 100% and `frac` active."""
    calls = []
    for M, f in ((1, 0.0), (3, 1.0), (2, frac)):
        active = np.flatnonzero(rng.random(n_ff) < f).astype(np.int32)
        sets = [rng.permutation(active).astype(np.int32) for _ in range(M)] if kind == "indexed" else None
        calls.append(mlp_call(kind, rng, M, d, n_ff, dtype, ACTS[kind], active, sets, x8=x8, down_dtype=DOWN))
    return calls


def check(kind, calls, outs):
    for i, (call, out) in enumerate(zip(calls, outs)):
        try:
            call.check(out)
        except AssertionError as err:
            raise AssertionError(f"{kind} call {i} (M={call.args[0].shape[0]}): {err}") from None


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=examples(12), suppress_health_check=[HealthCheck.too_slow])
@given(dtype=gate_layouts, d=st.integers(1, 100).filter(lambda d: d % 32), n_ff=st.integers(1, 48),
       frac=st.floats(0.05, 0.95), seed=st.integers(0, 999))
def test_x86_kernels_with_an_8_bit_down_match_the_dequantized_reference(kind, dtype, d, n_ff, frac, seed):
    """The float path: every row dequantized in registers, x as it is."""
    from dataclasses import replace

    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    sched = replace(schedule_for(targets.get("x86")), int8_dot="", int8_axpy=())
    prim = primfunc(kind, d, n_ff, dtype, sched, ACTS[kind], down_dtype=DOWN)
    assert f"{dtype}dn{DOWN}" in str(prim.attrs["global_symbol"])   # its own kernel, not the one-layout one
    calls = calls_for(kind, np.random.default_rng(seed), d, n_ff, dtype, frac)
    check(kind, calls, run_native(prim, calls))


@settings(max_examples=examples(12), suppress_health_check=[HealthCheck.too_slow])
@given(dtype=gate_layouts, d=st.integers(33, 100).filter(lambda d: d % 32), n_ff=st.integers(1, 48),
       seed=st.integers(0, 999))
def test_x86_int8_dot_row_dots_with_an_8_bit_down(dtype, d, n_ff, seed):
    """The host's int8-dot path for the 4-bit gate / up rows (x rounded to 8-bit blocks, as the reference does)
    beside the float q8_0 down axpy; skipped where this host has no int8 dot for the layout."""
    from dataclasses import replace

    from actsparse import targets
    from actsparse.codegen.kernels.int8_dots import INT8_DOTS
    from actsparse.codegen.schedules import schedule_for

    sched = schedule_for(targets.get("x86"))
    if not sched.int8_dot or dtype not in INT8_DOTS[sched.int8_dot].layouts:
        pytest.skip(f"this host's x86 target has no int8 dot for {dtype} rows")
    sched = replace(sched, int8_axpy=())   # the integer down axpy rounds h: its own bound, test_kernels_axpy8.py
    prim = primfunc("exact", d, n_ff, dtype, sched, ACTS["exact"], down_dtype=DOWN)
    calls = calls_for("exact", np.random.default_rng(seed), d, n_ff, dtype, 0.4, x8=True)
    check("exact", calls, run_native(prim, calls))


@settings(max_examples=1, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=gate_layouts, d=st.integers(33, 60).filter(lambda d: d % 32), n_ff=st.integers(3, 24),
       seed=st.integers(0, 99))
def test_arm_kernels_with_an_8_bit_down_match_the_dequantized_reference_under_qemu(dtype, d, n_ff, seed):
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    require_cross_tools()
    sched = schedule_for(targets.get("arm"))
    prims = {kind: primfunc(kind, d, n_ff, dtype, sched, ACTS[kind], down_dtype=DOWN) for kind in KINDS}
    rng = np.random.default_rng(seed)
    x8 = bool(sched.int8_dot)   # NEON's dot product: the row dots take x in 8-bit blocks
    jobs = [(prims[kind], calls_for(kind, rng, d, n_ff, dtype, 0.3, x8=x8)) for kind in KINDS]
    for kind, (_, calls), outs in zip(KINDS, jobs, run_batch(cross_kernels(list(prims.values())), jobs)):
        check(kind, calls, outs)


@settings(max_examples=1, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=gate_layouts, d=st.integers(33, 50).filter(lambda d: d % 32), n_ff=st.integers(3, 12),
       seed=st.integers(0, 99))
def test_cuda_kernels_with_an_8_bit_down_match_the_dequantized_reference_under_simt(dtype, d, n_ff, seed):
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    sched = schedule_for(targets.get("cuda"))
    prims = {kind: primfunc(kind, d, n_ff, dtype, sched, ACTS[kind], down_dtype=DOWN) for kind in KINDS}
    rng = np.random.default_rng(seed)
    jobs = [(prims[kind], calls_for(kind, rng, d, n_ff, dtype, 0.3)) for kind in KINDS]
    for kind, (_, calls), outs in zip(KINDS, jobs, run_batch(simt_kernels(prims.values()), jobs)):
        check(kind, calls, outs)


@pytest.mark.parametrize("path", ["float", "int8-dot"])
@pytest.mark.parametrize("exact", [True, False], ids=["exact", "dense"])
@settings(max_examples=examples(6), suppress_health_check=[HealthCheck.too_slow])
@given(dtype=gate_layouts, d=st.integers(33, 100).filter(lambda d: d % 32), n_ff=st.integers(1, 24),
       M=st.integers(1, 4), seed=st.integers(0, 999))
def test_x86_routed_kernel_with_an_8_bit_down_matches_the_dequantized_reference(path, exact, dtype, d, n_ff, M,
                                                                                seed):
    """A MoE GGUF's experts: 4-bit gate / up stacks as stored, the down stack re-laid q8_0; the routed kernel
    against ir/moe.py's reference on the dequantized weights. `int8-dot`: the host's integer row dots (x quantized
    once to 8-bit blocks and gathered per expert as those bytes; the reference rounds x alike), skipped where the
    host has none for the layout."""
    from dataclasses import replace

    from actsparse import targets
    from actsparse.codegen.kernels.common import x_operand
    from actsparse.codegen.kernels.routed_moe import absent_biases, routed_moe
    from actsparse.codegen.schedules import schedule_for
    from actsparse.ir.moe import routed_moe_ref
    from actsparse.ir.quant import quantize

    from .test_kernels_x86 import run

    experts, k = 4, 2
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M, d)).astype(np.float32)
    weights = [quantize(rng.standard_normal((experts * n_ff, d)).astype(np.float32) / d**0.5, layout)
               for layout in (dtype, dtype, DOWN)]
    route_i = np.stack([rng.choice(experts, k, replace=False) for _ in range(M)]).astype(np.int64)
    route_w = rng.random((M, k)).astype(np.float32)
    attrs = {"experts": experts, "gate_act": "relu", "up_act": "identity", "threshold": 0.0}
    host = schedule_for(targets.get("x86"))
    if path == "int8-dot" and not x_operand(d, dtype, host)[0]:
        pytest.skip(f"this host's x86 target has no int8 dot for {dtype} rows")
    # the integer down axpy rounds h: its own bound (test_kernels_axpy8.py); the compiled MoE GGUF test runs it
    sched = replace(host, int8_axpy=(), **({"int8_dot": ""} if path == "float" else {}))
    expected = routed_moe_ref(x_seen(x, path == "int8-dot"), *(w.dequantize() for w in weights), route_w, route_i,
                              attrs, {})
    kernel = routed_moe(d, n_ff, experts, exact=exact, dtype=dtype, down_dtype=DOWN, sched=sched)
    assert f"{dtype}dn{DOWN}" in str(kernel.attrs["global_symbol"])
    got = run(kernel, x, *(w.blob for w in weights), route_w, route_i, *absent_biases(d), out_shape=(M, d))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(expected).max()))
