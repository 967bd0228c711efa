"""The int8-dot path of the quantized kernels on aarch64 (codegen/kernels/quant_int8.py with `sdot`, FEAT_DotProd):
chosen from the arm target's declared features (targets/arm.py, confirmed by LLVM), built with `sdot` in every
quantized kernel, and under qemu-aarch64 (`-cpu max` emulates FEAT_DotProd) numerically the float64 reference on
the dequantized weights and x rounded as `ir.quant.round_x8` rounds it; the down projection of q4_0 / q4_1 rows
runs on `sdot` too (codegen/kernels/quant_axpy8.py), within its rounding's bound (tests/axpy8_cases.py).

Speed cannot be timed here (qemu); the design property — the row dots are integer `sdot`s, no fp32 dequantization
of the weights — is asserted on the disassembly.
"""

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .axpy8_cases import down_bound, h_of
from .kernel_cases import KINDS, QUANT_DTYPES, cross_kernels, primfunc, require_cross_tools, run_batch
from .test_kernels_quant import ACTS, check, quant_calls, rotated

pytest.importorskip("tvm")


def dot_target():
    from actsparse import targets

    return targets.get("arm-dotprod")


def test_sdot_follows_the_arm_target_data():
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for
    from actsparse.targets.arm import features_of, on_aarch64

    dot = dot_target()
    assert "dotprod" in dot.features and "+dotprod" in dot.tvm["mattr"]
    assert schedule_for(dot).int8_dot == "sdot128"
    assert "isdot128" in schedule_for(dot).tag  # part of every kernel's symbol
    # a TVM target dict finds the features its mattr enables (and the same schedule)
    spec = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod", "+fp16fml"]}
    both = targets.get(spec)
    assert features_of(spec["mattr"]) == ("fp16fml", "dotprod") and set(both.features) >= {"dotprod", "fp16fml"}
    assert schedule_for(both).int8_dot == "sdot128" and schedule_for(both).fp16fml
    # declared without LLVM's agreement (mattr lacking +dotprod) or not declared: the float path
    from dataclasses import replace

    assert schedule_for(replace(dot, tvm={**dot.tvm, "mattr": ["+neon"]})).int8_dot == ""
    assert schedule_for(targets.get("arm-fhm")).int8_dot == ""
    if not on_aarch64():  # cross-compiling: "arm" is baseline NEON (on an aarch64 host it is the host's features)
        assert schedule_for(targets.get("arm")).int8_dot == ""
    with pytest.raises(ValueError, match="unknown aarch64 feature"):
        from actsparse.targets.arm import target

        target(features=("sve9",))


@settings(max_examples=1, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(QUANT_DTYPES), d=st.integers(33, 100).filter(lambda d: d % 32),
       n_ff=st.integers(1, 24), frac=st.floats(0.05, 0.95), seed=st.integers(0, 999))
def test_arm_sdot_kernels_match_the_reference_on_rounded_x_under_qemu(dtype, d, n_ff, frac, seed):
    """Every kernel (exact, indexed, dense, linear, threshold), the three layouts rotated over them; calls at 0%,
    100% and a random fraction active, sizes not a multiple of 32 (a partial last group)."""
    from actsparse.codegen.schedules import schedule_for

    require_cross_tools()
    target = dot_target()
    sched, layout_of = schedule_for(target), rotated(dtype)
    prims = {kind: primfunc(kind, d, n_ff, layout_of[kind], sched, ACTS[kind], bias=True) for kind in KINDS}
    rng = np.random.default_rng(seed)
    jobs = [(prims[kind], quant_calls(kind, rng, d, n_ff, layout_of[kind], frac, x8=True)) for kind in KINDS]
    from actsparse.codegen.kernels.quant_axpy8 import uses_int8_axpy
    from actsparse.ir.quant import round_x8

    for kind, (_, calls) in zip(KINDS, jobs):
        if kind != "linear" and uses_int8_axpy(layout_of[kind], sched, kind):  # the down axpy's coefficient rounding
            for call in calls:
                h = h_of(kind, call, layout_of[kind], d, round_x8(call.args[0]), ACTS[kind])
                call.slack = call.slack + down_bound(np.abs(h), call.args[3], layout_of[kind], d)
    kernels = cross_kernels(list(prims.values()), target)
    for kind, (_, calls), outs in zip(KINDS, jobs, run_batch(kernels, jobs)):
        check(kind, f"{layout_of[kind]} sdot", calls, outs)
    code = functions(kernels.disassembly())
    for kind, prim in prims.items():  # and each kernel multiplies with sdot
        name = str(prim.attrs["global_symbol"])
        assert any("\tsdot\t" in body for fn, body in code.items() if fn.startswith(name)), (kind, layout_of[kind])


def functions(asm: str) -> dict[str, str]:
    """objdump -d text -> {function symbol: its disassembly}."""
    out, name = {}, None
    for line in asm.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            name = head.group(1)
            out[name] = ""
        elif name is not None:
            out[name] += line + "\n"
    return out


def test_arm_quantized_kernels_multiply_with_sdot():
    """At a longer row (d = 256) every quantized kernel's row dots are integer dot products: the loops that
    stream rows (they prefetch) hold sdot and no fmla of dequantized weights in the gate/up dots' loops; the plain
    NEON target (no FEAT_DotProd) has no sdot at all."""
    from actsparse import targets
    from actsparse.codegen.asm_stats import disassemble, innermost_loops, opcode_counts
    from actsparse.codegen.kernels.common import build_kernels
    from actsparse.codegen.schedules import schedule_for

    require_cross_tools()
    dot, plain = dot_target(), targets.get("arm")
    kinds = ("exact", "indexed", "dense", "linear", "threshold")
    for dtype in ("q4_0", "q8_0"):  # one module per code path (q4_1 shares q4_0's): its five kernels
        prims = [primfunc(kind, 256, 64, dtype, schedule_for(dot), ACTS[kind]) for kind in kinds]
        asm = disassemble(build_kernels(prims, dot.tvm_target()))
        loops = [loop for loop in innermost_loops(asm) if loop.prefetches and loop.vector_ops["sdot"]]
        # at least one row-streaming loop per kernel (exact, threshold: gate and up) ...
        assert len(loops) >= len(kinds), (dtype, loops)
        # ... with one sdot per 16 code bytes and row: 2 per block (q4: the low and the high nibbles), and the
        # weights never widened to fp32 there (the only int -> float conversion is one scvtf per row and block)
        for loop in loops:
            assert loop.vector_ops["sdot"] >= 2 * loop.prefetches, (dtype, loop)
            assert loop.vector_ops["scvtf"] * 2 <= loop.vector_ops["sdot"], (dtype, loop)
    prim = primfunc("linear", 256, 64, "q4_0", schedule_for(plain))
    assert opcode_counts(disassemble(build_kernels([prim], plain.tvm_target())))["sdot"] == 0
