"""Quantized weights (q8_0 / q4_0 / q4_1, ir.quant) in every kernel (exact, indexed, dense, linear, threshold) x
target family: x86 natively, ARM NEON under qemu, CUDA through nvcc + the SIMT emulator (tests/simt.py).

Hypothesis draws the layout, sizes with input dims not a multiple of the 32-column group (a partial last group)
and the activations; every example's calls include 0% and 100% active neurons plus a random set. The reference
is float64 on the dequantized weights (`QuantizedWeight.dequantize`, the values the kernel must use), so the
tolerance is fp32 accumulation's (rtol 1e-4). Budget: one build per x86 example, one cross / CUDA module for
all kernels of an example (qemu and the emulator are slow: small sizes, one example each in the `ci` profile).
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .kernel_cases import (
    KINDS,
    QUANT_DTYPES,
    cross_kernels,
    examples,
    linear_call,
    mlp_call,
    primfunc,
    require_cross_tools,
    run_batch,
    run_native,
    simt_kernels,
)

pytest.importorskip("tvm")

ACTS = {"exact": ("relu", "relu", 0.0), "indexed": ("silu", "identity", 0.0), "dense": ("gelu", "identity", 0.0),
        "linear": ("relu", "identity", 0.0), "threshold": ("silu", "identity", 0.5, "gate")}
layouts = st.sampled_from(QUANT_DTYPES)
ragged = st.integers(1, 100).filter(lambda d: d % 32)  # partial last group; > 32: full groups too


def quant_calls(kind, rng, d, n_ff, dtype, random_frac, x8=False):
    """Calls at 0% and 100% active (decode and prefill) and one random set; x8: the int8-dot path's x rounding."""
    calls = []
    for M, frac in ((1, 0.0), (3, 1.0), (2, random_frac)):
        active = np.flatnonzero(rng.random(n_ff) < frac).astype(np.int32)
        if kind == "linear":
            calls.append(linear_call(rng, M, d, n_ff, dtype, bias=True, x8=x8))
        else:
            sets = [rng.permutation(active).astype(np.int32) for _ in range(M)] if kind == "indexed" else None
            calls.append(mlp_call(kind, rng, M, d, n_ff, dtype, ACTS[kind], active, sets, x8=x8))
    return calls


def check(kind, dtype, calls, outs):
    for i, (call, out) in enumerate(zip(calls, outs)):
        try:
            call.check(out)
        except AssertionError as err:
            raise AssertionError(f"{kind} {dtype} call {i} (M={call.args[0].shape[0]}): {err}") from None


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=examples(12), suppress_health_check=[HealthCheck.too_slow])
@given(dtype=layouts, d=ragged, n_ff=st.integers(1, 48), frac=st.floats(0.05, 0.95), seed=st.integers(0, 999))
def test_x86_quantized_kernel_matches_dequantized_reference(kind, dtype, d, n_ff, frac, seed):
    """The float path (weights dequantized in registers, x as it is); the int8-dot path: test_kernels_int8.py."""
    from dataclasses import replace

    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    sched = replace(schedule_for(targets.get("x86")), int8_dot="")
    prim = primfunc(kind, d, n_ff, dtype, sched, ACTS[kind], bias=True)
    calls = quant_calls(kind, np.random.default_rng(seed), d, n_ff, dtype, frac)
    check(kind, dtype, calls, run_native(prim, calls))


def rotated(dtype):
    """One layout per kernel, rotated by the drawn first one, so each module covers all three layouts."""
    i = QUANT_DTYPES.index(dtype)
    return {kind: QUANT_DTYPES[(i + j) % len(QUANT_DTYPES)] for j, kind in enumerate(KINDS)}


@settings(max_examples=1, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=layouts, d=st.integers(33, 60).filter(lambda d: d % 32), n_ff=st.integers(3, 24), seed=st.integers(0, 99))
def test_arm_quantized_kernels_match_dequantized_reference_under_qemu(dtype, d, n_ff, seed):
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    require_cross_tools()
    sched, layout_of = schedule_for(targets.get("arm")), rotated(dtype)
    prims = {kind: primfunc(kind, d, n_ff, layout_of[kind], sched, ACTS[kind], bias=True) for kind in KINDS}
    rng = np.random.default_rng(seed)
    jobs = [(prims[kind], quant_calls(kind, rng, d, n_ff, layout_of[kind], 0.3)) for kind in KINDS]
    for kind, (_, calls), outs in zip(KINDS, jobs, run_batch(cross_kernels(list(prims.values())), jobs)):
        check(kind, layout_of[kind], calls, outs)


@settings(max_examples=1, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=layouts, d=st.integers(33, 50).filter(lambda d: d % 32), n_ff=st.integers(3, 12), seed=st.integers(0, 99))
def test_cuda_quantized_kernels_match_dequantized_reference_under_simt(dtype, d, n_ff, seed):
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    sched, layout_of = schedule_for(targets.get("cuda")), rotated(dtype)
    prims = {kind: primfunc(kind, d, n_ff, layout_of[kind], sched, ACTS[kind], bias=True) for kind in KINDS}
    rng = np.random.default_rng(seed)
    jobs = [(prims[kind], quant_calls(kind, rng, d, n_ff, layout_of[kind], 0.3)) for kind in KINDS]
    for kind, (_, calls), outs in zip(KINDS, jobs, run_batch(simt_kernels(prims.values()), jobs)):
        check(kind, layout_of[kind], calls, outs)


def test_quantized_kernel_rejects_an_unknown_layout():
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    with pytest.raises(ValueError, match="quantized layout"):
        primfunc("exact", 64, 8, "q5_0", schedule_for(targets.get("x86")))
