"""The int8-dot path of the quantized row dots (codegen/kernels/quant_int8.py: x quantized once per call to 8-bit
blocks, integer dot products with VNNI `vpdpbusd`): chosen from the target's feature flags and confirmed by LLVM,
and numerically the float dots on x rounded as `ir.quant.round_x8` rounds it.

Hypothesis draws the kernel (linear, exact, indexed, dense, threshold), the layout (q8_0, q4_0, q4_1), the dot
width (512-bit AVX512-VNNI: 4 rows per dot; 256-bit: 2 rows) and sizes that 32 does not divide; each example's
calls hold 0%, 100% and a random set of active neurons. Two checks per call: within fp32 tolerance of a float64
reference on the dequantized weights and the rounded x; and (linear) within the rounding's bound of the reference
on x itself: |error| <= sum over groups of (dx / 2) * sum |w| (plus fp32 tolerance). Runs where the host has
VNNI (the kernels execute here); the feature-selection tests run everywhere.
"""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .kernel_cases import QUANT_DTYPES, examples, linear_reference, primfunc, run_native
from .test_kernels_quant import ACTS, check, quant_calls

pytest.importorskip("tvm")

KINDS = ("linear", "exact", "indexed", "dense", "threshold")
DOTS = {"vpdpbusd512": 16, "vpdpbusd256": 8, "pmaddubsw256": 8}  # int32 lanes = the kernel's fp32 lanes
NEEDS = {"vpdpbusd512": {"avx512_vnni"}, "vpdpbusd256": {"avx512_vnni", "avx_vnni"}, "pmaddubsw256": {"avx2"}}
ragged = st.integers(1, 100).filter(lambda d: d % 32)


# a CPU whose best int8 dot each is (LLVM's names): compile-only checks (the code's instructions) build for it on any
# host, so they cannot go stale on hosts that lack it (session 28 found such a test stale after 15 AVX2-only sessions)
CPUS = {"vpdpbusd512": "sapphirerapids", "vpdpbusd256": "alderlake", "pmaddubsw256": "haswell"}


def cpu_sched(dot: str):
    """(the schedule of a CPU whose int8 dot is `dot`, its TVM target): for code that is compiled, not run."""
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    target = targets.get({"kind": "llvm", "mcpu": CPUS[dot]})
    sched = schedule_for(target)
    assert sched.int8_dot == dot, (CPUS[dot], sched.int8_dot)
    return sched, target.tvm_target()


def host_sched(dot: str):
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    host = targets.get("x86")
    need = NEEDS[dot]
    if not need & set(host.features):
        pytest.skip(f"{dot} needs a host with {' or '.join(sorted(need))}: this one has {', '.join(host.features)}")
    lanes = DOTS[dot]
    return replace(schedule_for(host), int8_dot=dot, lanes=lanes, vector_registers=32 if lanes == 16 else 16)


def test_the_int8_dot_follows_the_target_features():
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for
    from actsparse.targets.arm import on_aarch64

    host = targets.get("x86")
    want = ("vpdpbusd512" if "avx512_vnni" in host.features and host.vector_bits == 512 else
            "vpdpbusd256" if {"avx512_vnni", "avx_vnni"} & set(host.features) and host.vector_bits == 256 else
            "pmaddubsw256" if "avx2" in host.features and host.vector_bits == 256 else "")
    assert schedule_for(host).int8_dot == want
    # declared by the data, confirmed by LLVM for the TVM target: a VNNI part gets it on any host ...
    spr = replace(host, tvm={"kind": "llvm", "mcpu": "sapphirerapids"}, vector_bits=512,
                  features=("avx512f", "avx512_vnni"))
    assert schedule_for(spr).int8_dot == "vpdpbusd512"
    assert schedule_for(replace(spr, vector_bits=256, features=("avx2", "avx_vnni"))).int8_dot == "vpdpbusd256"
    # ... AVX2 without VNNI takes the two-step dot (vpmaddubsw + vpmaddwd) ...
    assert schedule_for(targets.get({"kind": "llvm", "mcpu": "haswell"})).int8_dot == "pmaddubsw256"
    # ... a target dict naming a CPU without a dot never does, whatever the host, and AVX-512 without VNNI keeps
    # the float path it was measured with
    assert schedule_for(targets.get({"kind": "llvm", "mcpu": "nehalem"})).int8_dot == ""
    assert schedule_for(replace(spr, features=("avx512f",))).int8_dot == ""
    assert schedule_for(replace(spr, features=("avx512f", "avx2"))).int8_dot == ""
    if not on_aarch64():  # a cross target without FEAT_DotProd (arm-dotprod: tests/test_kernels_arm_dot.py)
        assert schedule_for(targets.get("arm")).int8_dot == ""


def test_an_int8_dot_kernel_is_built_with_vpdpbusd():
    """The generated code holds the instruction (TVM 0.27's `call_llvm_pure_intrin` route) and its symbol says so."""
    import tvm

    from actsparse.codegen.kernels import kernel

    sched, spr = cpu_sched("vpdpbusd512")  # compiled only: any host
    prim = kernel("linear", 100, 8, dtype="q4_0", sched=sched)
    assert "ivpdpbusd512" in str(prim.attrs["global_symbol"])
    lib = tvm.compile(tvm.IRModule({"main": prim}), target=spr)
    asm = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
    assert "vpdpbusd" in asm


def innermost_loops(asm: str) -> list[list[str]]:
    """x86 assembly text -> the mnemonics of each innermost loop (a backward jump whose range holds no other)."""
    import re

    lines = asm.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\.?L\w+):", line))}
    loops = []
    for i, line in enumerate(lines):
        m = re.match(r"^\s+j\w+\s+(\.?L\w+)", line)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            loops.append((labels[m.group(1)], i))
    inner = [(s, e) for s, e in loops if not any(s < s2 and e2 < e for s2, e2 in loops)]
    return [[x.split()[0] for x in lines[s + 1:e + 1] if x.strip() and not x.strip().startswith((".", "#"))
             and not x.endswith(":")] for s, e in inner]


@pytest.mark.parametrize("dtype", ("q4_0", "q4_1"))
def test_split_q4_row_dots_load_4_groups_and_their_scales_at_once(dtype):
    """q4_0 / q4_1 rows are split (ir.quant): the row-dot loop reads 4 whole groups of a row per 64-byte vector and
    their 4 scales with one load and one conversion, so per row and 128 columns: 2 vpdpbusd, 1 vcvtph2ps and no
    per-row scale gather (GGUF's blocks took 4 vpbroadcastw + 2 inserts + a blend per 4 rows and 32 columns). q4_1's
    offsets are not in that loop: 16 groups' offsets a load and a conversion, once per row (session 48; in the loop
    they were ~30% of its instructions)."""
    import tvm

    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.kernels.schedule import CpuSchedule

    sched = CpuSchedule(lanes=16, threads=2, vector_registers=32, int8_dot="vpdpbusd512")  # compiled only: any host
    prim = kernel("linear", 1024, 64, dtype=dtype, sched=sched)
    spr = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids"})  # compiled only: any host
    lib = tvm.compile(tvm.IRModule({"main": prim}), target=spr)
    asm = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
    loops = [body for body in innermost_loops(asm) if "vpdpbusd" in body]
    assert loops, "no row-dot loop with vpdpbusd"
    for body in loops:
        dots = body.count("vpdpbusd")
        widen = sum(op.startswith("vcvtph2ps") for op in body)
        assert widen * 2 == dots and "vpbroadcastw" not in body, body
        assert sum(op.startswith("vinserti") for op in body) == 0, body
    # q4_1: 1024 columns are 32 groups, two 16-group offset loads a row, outside the chunk loop
    outside = sum(op.startswith("vcvtph2ps") for op in asm.split()) - sum(
        op.startswith("vcvtph2ps") for body in loops for op in body)
    assert (outside > 0) == (dtype == "q4_1"), outside


@pytest.mark.parametrize("kind", ("indexed", "exact"))
@pytest.mark.parametrize("d", (20, 80, 100))
def test_paired_q8_0_row_dots_equal_the_reference_on_rounded_x(kind, d):
    """q8_0 on AVX512-VNNI in the kernels that choose it (`CpuSchedule.paired_q8`: indexed by default, exact asked
    here for its streamed rows) reads a row's two consecutive blocks per vector (quant_paired8.paired_dots): one
    group (its half of the vector zero), three (a pair and the odd last group) and four groups with a ragged last one,
    against float64 on the rounded x; 0% and 100% active among the calls."""
    sched = replace(host_sched("vpdpbusd512"), int8_axpy=False, paired_q8=(kind,))
    prim = primfunc(kind, d, 12, "q8_0", sched, ACTS[kind], bias=True)
    calls = quant_calls(kind, np.random.default_rng(d), d, 12, "q8_0", 0.5, x8=True)
    check(kind, f"q8_0 paired d={d}", calls, run_native(prim, calls))


def test_paired_q8_0_is_a_kernel_choice_named_by_the_schedule():
    from actsparse.codegen.kernels.schedule import CpuSchedule

    base = CpuSchedule(lanes=16, threads=1, int8_dot="vpdpbusd512")
    assert base.paired_q8 == ("indexed",) and base.pairs_q8("indexed") and not base.pairs_q8("dense")
    assert "q" not in base.tag.split("ivpdpbusd512")[1]  # the default adds nothing to the symbols
    assert replace(base, paired_q8=()).tag != base.tag
    with pytest.raises(ValueError, match="paired_q8 names no kernel"):
        replace(base, paired_q8=("linear",))


def test_each_layout_takes_the_first_row_dot_family_of_the_table_that_serves_it():
    """`int8_row_dots.INT8_ROW_DOTS`, first match wins: split q4 rows take quant_split.py on every dot; q8_0 takes
    quant_split8.py on AVX2, the paired form on AVX512-VNNI in the kernels the schedule names and the 4-rows form
    elsewhere; without an int8 dot (or for float rows) no family: the float row dots."""
    from actsparse.codegen.kernels.int8_row_dots import int8_row_dots
    from actsparse.codegen.kernels.schedule import CpuSchedule

    avx2, vnni = CpuSchedule(lanes=8, threads=1, int8_dot="pmaddubsw256"), CpuSchedule(lanes=16, threads=1,
                                                                                       int8_dot="vpdpbusd512")
    sdot, plain = CpuSchedule(lanes=4, threads=1, int8_dot="sdot128"), CpuSchedule(lanes=8, threads=1)

    def name(dtype, sched, kernel=""):
        family = int8_row_dots(dtype, sched, kernel)
        return family and family.name

    assert {name(q4, s, k) for q4 in ("q4_0", "q4_1") for s in (avx2, vnni, sdot) for k in ("", "indexed")} == {
        "split4"}
    assert name("q8_0", avx2) == name("q8_0", avx2, "indexed") == "split8"
    assert name("q8_0", vnni, "indexed") == "paired8" and name("q8_0", vnni, "dense") == "blocks"
    assert name("q8_0", replace(vnni, paired_q8=()), "indexed") == "blocks"
    assert name("q8_0", sdot, "indexed") == "blocks"
    assert name("q4_0", plain) is None and name("float16", avx2) is None


def test_q8_0_row_dots_pair_blocks_on_gathered_rows_only_and_prefetch_every_line():
    """The q8_0 row-dot loops on AVX512-VNNI over split rows (a row's 32-byte groups, then its fp16 scales).
    indexed (gathered rows, `CpuSchedule.paired_q8`): per row and pair of groups one 64-byte code load (folded into
    the xor 0x80), one vpdpbusd (the 128 * sum(x̂) is in x's side), the two scales in one 4-byte load and one vpermw,
    no 128 * sum(code) correction (vpsubd) and no row assembly, 4 rows per pass: 57 instructions. dense (streamed
    rows: paired it was 1.03-1.04x slower, session 15) keeps 4 rows per dot and the correction, its code the same
    whether or not the schedule pairs any kernel. indexed prefetches each of the next step's rows once per 64-byte
    line, dense (a task's own rows) the next step's rows as one block, a share per group (session 46); the paired
    loop unconditionally (no jump before the prefetches: session 13's conditional once-per-line form for
    gathered rows was 1.04-1.08x the time of indexed q8_0 at 2 threads from DRAM, BENCHMARKS.md session 15). Compiled
    for Sapphire Rapids with its schedule, on any host (it ran on AVX512-VNNI hosts only, and session 28 found it
    stale after session 22's split rows, on the first such host since)."""
    import tvm

    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.kernels.rows import ROWS_PER_LOOP
    from actsparse.ir.quant import LAYOUTS

    sched, spr = cpu_sched("vpdpbusd512")  # compiled only: any host
    sched = replace(sched, int8_axpy=False)

    def asm_of(kind, sched):
        prim = kernel(kind, 4096, 32, dtype="q8_0", sched=sched)
        lib = tvm.compile(tvm.IRModule({"main": prim}), target=spr)
        return lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")

    for kind, paired in (("indexed", True), ("dense", False)):
        asm = asm_of(kind, sched)
        loops = [body for body in innermost_loops(asm) if "vpdpbusd" in body and "prefetcht1" in body]
        assert loops, f"{kind}: no prefetching row-dot loop"
        for body in loops:
            if paired:
                # 4 rows per pass (ROWS_PER_LOOP: 8 rows' pointers and their next step's spilled, 153 instructions
                # per 8 rows, 2 x 57 now); a split row's two groups one 64-byte load (folded into the xor), their two
                # scales one 4-byte load and one vpermw (two vpbroadcastw, an insert and a vpshufb: 173 per 8 rows)
                rows = ROWS_PER_LOOP
                assert body.count("vpdpbusd") == body.count("vpxorq") == body.count("vpermw") == rows, body
                assert not any(op.startswith("vinserti") for op in body) and "movq" not in body, body
                assert "vpsubd" not in body and len(body) <= 60, (len(body), body)
            else:  # x̂ + 128 against 4 rows' codes, minus 128 * sum(code)
                rows = sched.rows
                assert "vpsubd" in body and body.count("vinserti64x4") == sched.rows // 2, body
            if paired:  # gathered rows: a row's 64 code bytes, one line each
                assert body.count("prefetcht1") == rows, (kind, body)
            else:  # a task's own rows: a share of the next step's block per group (`next_block_prefetch_macro`)
                lines = -(-LAYOUTS["q8_0"].row_bytes(4096) // 64)
                assert body.count("prefetcht1") == -(-sched.rows * lines // (4096 // 32)), (kind, body)
            if paired:  # two groups per iteration: every iteration's line (dense: every other group's)
                first_pf = body.index("prefetcht1")
                assert not any(op.startswith("j") for op in body[:first_pf]), (kind, body)
    dense, unpaired = asm_of("dense", sched), asm_of("dense", replace(sched, paired_q8=()))
    assert innermost_loops(dense) == innermost_loops(unpaired)


def served_here() -> list[tuple[str, str]]:
    """(layout, dot) for every dot this host executes and every layout that dot serves (`Int8Dot.layouts`)."""
    from actsparse import targets
    from actsparse.codegen.kernels.int8_dots import INT8_DOTS

    features = set(targets.get("x86").features)
    return [(dtype, dot) for dot in DOTS if NEEDS[dot] & features for dtype in INT8_DOTS[dot].layouts]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=examples(6), suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), d=ragged, n_ff=st.integers(1, 40), frac=st.floats(0.05, 0.95), seed=st.integers(0, 999))
def test_x86_int8_dot_kernel_equals_the_reference_on_rounded_x(kind, data, d, n_ff, frac, seed):
    # the row dots alone: the down axpy float (its own rounding: tests/test_kernels_axpy8.py)
    served = served_here()
    if not served:
        pytest.skip("no x86 int8 dot executes here (needs AVX2, AVX-VNNI or AVX512-VNNI)")
    dtype, dot = data.draw(st.sampled_from(served), label="layout, dot")
    prim = primfunc(kind, d, n_ff, dtype, replace(host_sched(dot), int8_axpy=False), ACTS[kind], bias=True)
    calls = quant_calls(kind, np.random.default_rng(seed), d, n_ff, dtype, frac, x8=True)
    outs = run_native(prim, calls)
    check(kind, f"{dtype} {dot}", calls, outs)
    if kind == "linear":  # and within the rounding's bound of the float result on x itself
        from actsparse.ir.quant import GROUP, dequantize

        for call, out in zip(calls, outs):
            x, blob, b = call.args[:3]
            w = dequantize(blob, dtype, d)
            ref, scale = linear_reference(x, w, b)
            g = -(-d // GROUP)
            padded = np.zeros((x.shape[0], g * GROUP))
            padded[:, :d] = np.abs(x)
            half_step = np.repeat(padded.reshape(-1, g, GROUP).max(-1) / 127 / 2, GROUP, axis=-1)[:, :d]
            bound = half_step @ np.abs(w).T.astype(np.float64) * 1.001 + 1e-4 * (scale + 1e-3)
            assert np.all(np.abs(out - ref) <= bound), np.max(np.abs(out - ref) - bound)


def test_the_float_down_projection_of_q4_0_looks_codes_up_and_reads_a_scale_table():
    """AVX-512 (the dot table's `nibble_lookup`, vpermps): the float down projection of q4_0 rows turns 16 codes into
    floats with one table lookup (nibble - 8: no int -> float conversion, no -8 * sum(h * scale) per group) and
    takes h * scale from a per-step table (one broadcast per row and group: no per-row scale load and conversion).
    Per 8 rows x 32 columns: 8 widenings, 16 lookups, 16 multiply-adds. (Session 9: 172 instructions with mask,
    two widenings and two conversions per 16 code bytes; now ~80.)"""
    import tvm

    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.kernels.schedule import CpuSchedule

    sched = CpuSchedule(lanes=16, threads=2, int8_dot="vpdpbusd512", int8_axpy=False)  # compiled only: any host
    prim = kernel("exact", 4096, 64, gate_act="relu", up_act="identity", dtype="q4_0", sched=sched)
    spr = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids"})
    lib = tvm.compile(tvm.IRModule({"main": prim}), target=spr)
    asm = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
    loops = [body for body in innermost_loops(asm)  # the down loop (x's preparation permutes too, without FMAs)
             if any(op in ("vpermd", "vpermps") for op in body) and "vfmadd231ps" in body]
    assert len(loops) == 1, loops
    body = loops[0]
    lookups = sum(op in ("vpermd", "vpermps") for op in body)
    products = sum(op.startswith(("vfmadd", "vmulps")) and "ss" not in op for op in body)
    assert lookups == 16 and products >= 16, body
    assert not [op for op in body if op.startswith(("vcvtdq2ps", "vcvtph2ps", "vpinsrw", "vsubss"))], body
    # one widening per row and 16 code bytes: the high nibble shifted after it (no byte shift, no second widening)
    assert sum(op.startswith("vpmovzxbd") for op in body) == 8 and "vgf2p8affineqb" not in body, body
    assert len(body) < 100, len(body)


@pytest.mark.parametrize("kind", ("exact", "indexed"))
def test_the_float_down_projection_table_path_on_long_rows(kind):
    """Rows of 1100 columns (34 groups, 17 per task: one 16-group vector of the scale table and one group more, then
    a partial group): the lookup / table path of the float down projection against float64 on the rounded x."""
    d, n_ff = 1100, 20
    prim = primfunc(kind, d, n_ff, "q4_0", replace(host_sched("vpdpbusd512"), int8_axpy=False), ACTS[kind], bias=True)
    calls = quant_calls(kind, np.random.default_rng(7), d, n_ff, "q4_0", 0.5, x8=True)
    check(kind, "q4_0 table path", calls, run_native(prim, calls))


def extreme_case(dtype: str, n: int = 8, d: int = 96):
    """x and weights at the extremes of the integer dot's operands: |x̂| = 127 everywhere (x = ±1) and codes at
    their ends (q8_0: 127 and -128; q4: nibbles 0 and 15), with rows whose signs follow x's (every byte pair's products
    add up: the largest pair sums a layout can make) and rows against it. Returns (x, blob, the float64 reference
    on the rounded x)."""
    from actsparse.ir.quant import GROUP, LAYOUTS, dequantize, quantize, round_x8

    sign = np.where(np.arange(d) % 3 == 0, -1.0, 1.0)
    x = np.stack([np.ones(d), sign]).astype(np.float32)  # x̂ = 127 (x̂ + 128 = 255 as a u8 operand) and mixed
    rows = [np.ones(d), -np.ones(d), sign, -sign, np.where(np.arange(d) % 2, 1.0, -1.0)]
    w = np.stack([rows[i % len(rows)] * (1 + i) for i in range(n)]).astype(np.float32)
    blob = quantize(w, dtype).blob
    if dtype == "q8_0":  # codes of -128 (a GGUF file may hold them; our rounding stops at -127): |code| = 128
        lay = LAYOUTS[dtype]
        rows = blob.reshape(n, lay.row_bytes(d))
        for g in range(lay.groups(d)):
            at = lay.codes_byte(g, lay.stored_groups(d))
            rows[1::2, at:at + GROUP] = 0x80
    ref = round_x8(x).astype(np.float64) @ dequantize(blob, dtype, d).astype(np.float64).T
    return x, blob, ref


def run_linear(prim, x, blob, n):
    import tvm

    from actsparse import targets
    from actsparse.codegen.kernels.common import build_standalone

    f = build_standalone(prim, targets.get("x86").tvm_target())  # not run_native's cache: same symbol, other code
    out = tvm.runtime.tensor(np.full((x.shape[0], n), np.nan, np.float32))
    f(tvm.runtime.tensor(x), tvm.runtime.tensor(blob), out)
    return out.numpy()


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
def test_int8_dots_at_the_operands_extremes_equal_the_reference(dtype):
    """Codes and x̂ at their extremes, for every dot this host executes that serves `dtype`: a saturating pair sum
    (vpmaddubsw's int16) would show here."""
    from actsparse.codegen.kernels import kernel

    x, blob, ref = extreme_case(dtype)
    dots = [dot for layout, dot in served_here() if layout == dtype]
    if not dots:
        pytest.skip(f"no int8 dot serving {dtype} executes here")
    for dot in dots:
        prim = kernel("linear", x.shape[1], ref.shape[1], dtype=dtype, sched=replace(host_sched(dot), int8_axpy=False))
        got = run_linear(prim, x, blob, ref.shape[1])
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max(), err_msg=f"{dtype} on {dot}")


def test_avx2_dot_takes_q8_0_by_the_sign_trick_because_biased_codes_would_saturate(monkeypatch):
    """The AVX2 dot serves q8_0 as |code| times sign(x̂, code) (`Int8Dot.sign_trick`: pairs <= 2 * 128 * 127); without
    the trick q8_0 would go in as on VNNI, x̂ + 128 (255) times codes (127), and byte pairs would sum past int16
    (2 * 255 * 127 = 64770): the extremes' dots come out far off."""
    from actsparse.codegen.kernels import quant_int8
    from actsparse.codegen.kernels.linear import linear
    from actsparse.codegen.kernels.quant_int8 import INT8_DOTS, uses_int8_dot

    sched = replace(host_sched("pmaddubsw256"), int8_axpy=False)
    assert all(uses_int8_dot(dtype, sched) for dtype in QUANT_DTYPES) and INT8_DOTS["pmaddubsw256"].signed_codes
    monkeypatch.setitem(quant_int8.INT8_DOTS, "pmaddubsw256", replace(INT8_DOTS["pmaddubsw256"], sign_trick=""))
    assert not INT8_DOTS["pmaddubsw256"].signed_codes
    x, blob, ref = extreme_case("q8_0")
    # the factory uncached: kernels are cached per schedule, which names the dot, not the table's fields
    prim = linear.__wrapped__(x.shape[1], ref.shape[1], dtype="q8_0", sched=sched)
    got = run_linear(prim, x, blob, ref.shape[1])
    assert np.abs(got - ref).max() > 0.1 * np.abs(ref).max()  # saturated: far off, not rounding


def test_the_avx2_dot_kernel_is_built_with_vpmaddubsw():
    """Compiled for a Haswell (AVX2, no VNNI: any x86 host builds it), the q4 row dots hold vpmaddubsw and vpmaddwd
    and no fp32 dequantization of the codes (vcvtdq2ps) in their loop."""
    import tvm

    from actsparse.codegen.kernels import kernel

    sched = replace(_avx2_sched(), int8_axpy=False)
    for dtype in ("q4_0", "q4_1"):
        prim = kernel("linear", 1024, 32, dtype=dtype, sched=sched)
        assert "ipmaddubsw256" in str(prim.attrs["global_symbol"])
        lib = tvm.compile(tvm.IRModule({"main": prim}), target=tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}))
        asm = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
        loops = [body for body in innermost_loops(asm) if "vpmaddubsw" in body]
        assert loops, f"{dtype}: no row-dot loop with vpmaddubsw"
        for body in loops:  # integer dots (a block's two halves' int16 pair sums added: one vpmaddwd per two
            # vpmaddubsw, `Int8Dot.dots`), no widening of codes to int32
            assert body.count("vpmaddubsw") == 2 * body.count("vpmaddwd") > 0, body
            assert not any(op.startswith("vpmovzxbd") for op in body), body


def _avx2_sched():
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    return schedule_for(targets.get({"kind": "llvm", "mcpu": "haswell"}))


@pytest.mark.parametrize("dtype", ("q4_0", "q4_1"))
def test_avx2_split_row_dots_scale_two_chunks_at_once(dtype):
    """AVX2 (`quant_split.PAIRED_CHUNKS`): the split rows' dot loop takes 2 chunks (4 groups) of a row per iteration
    and sums their int32 lanes pairwise in-lane (vpunpckldq / vpunpckhdq, one add), so per row and 4 groups one
    int -> float conversion, one scale load and conversion, where each 2-group chunk had its own (q4_1's offsets
    are outside the loop, 8 groups a load): at most 240 instructions per 8 rows x 128 columns (session 19: 2 x 150)."""
    import tvm

    from actsparse.codegen.kernels import kernel

    sched = replace(_avx2_sched(), int8_axpy=False)
    prim = kernel("indexed", 4096, 64, gate_act="relu", up_act="identity", dtype=dtype, sched=sched)
    lib = tvm.compile(tvm.IRModule({"main": prim}), target=tvm.target.Target({"kind": "llvm", "mcpu": "znver3"}))
    asm = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
    loops = [body for body in innermost_loops(asm) if "vpunpckldq" in body and "vpmaddwd" in body]
    assert loops, "no row-dot loop over chunk pairs"
    R = sched.fitted(4096, dtype).rows
    for body in loops:
        assert body.count("vpmaddubsw") == 4 * R and body.count("vpmaddwd") == 2 * R, body
        assert body.count("vpunpckldq") == body.count("vpunpckhdq") == R, body
        # one conversion per row (and one of x's init for all rows), one per row and header field
        assert R <= body.count("vcvtdq2ps") <= R + 1 and body.count("vcvtph2ps") == R, body
        assert len(body) <= 240, len(body)


def test_avx2_split_q8_0_row_dots_take_a_row_per_vector_and_4_scales_per_load():
    """AVX2 (`Int8Dot.split_q8`): split q8_0 rows' dot loop reads a group's 32 codes per row in one vector, each group
    its own vpmaddubsw / vpmaddwd (a sign-trick pair may reach 2 * 128 * 127: no two groups add in int16), and per
    row and 4 groups one int -> float conversion and one load and conversion of the 4 scales (no per-row scale
    gather); 4 rows per loop (`ROWS_PER_LOOP`: 8 spilled row pointers and accumulators), ~140 instructions per 4 rows
    x 128 columns (the 4-rows form: 2 x 101 per 8 rows x 32 columns, session 20), no spills (stack stores)."""
    import tvm

    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.kernels.rows import ROWS_PER_LOOP

    sched = replace(_avx2_sched(), int8_axpy=False)
    prim = kernel("indexed", 4096, 64, gate_act="relu", up_act="identity", dtype="q8_0", sched=sched)
    lib = tvm.compile(tvm.IRModule({"main": prim}), target=tvm.target.Target({"kind": "llvm", "mcpu": "znver3"}))
    asm = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
    loops = [body for body in innermost_loops(asm) if "vpmaddubsw" in body and "vpmaddwd" in body]
    assert loops, "no q8_0 row-dot loop"
    assert sched.fitted(4096, "q8_0").rows % ROWS_PER_LOOP == 0
    R = ROWS_PER_LOOP
    for body in loops:
        assert body.count("vpmaddubsw") == body.count("vpmaddwd") == 4 * R, body
        assert body.count("vcvtdq2ps") == body.count("vcvtph2ps") == R and body.count("vphaddd") == 3 * R, body
        assert not any(op.startswith("vpinsrw") for op in body) and len(body) <= 150, (len(body), body)


@pytest.mark.parametrize("kind", ("linear", "indexed"))
def test_avx2_split_row_dots_over_chunk_pairs_and_the_rest(kind):
    """Rows of 1100 columns (35 groups: 8 chunk pairs, one 2-group chunk more, a last partial group) and of 200 (7
    groups: one pair, a last partial group): the AVX2 row dots against float64 on the rounded x, q4_0 and q4_1;
    q8_0's (`quant_split8.py`, 4 groups per iteration) there 8 quads and a partial one of 3 groups, 1 and 3, and at
    96 columns only the partial quad."""
    if "pmaddubsw256" not in {dot for _, dot in served_here()}:
        pytest.skip("the AVX2 dot does not execute here (needs AVX2)")
    for d, dtype in ((1100, "q4_0"), (200, "q4_1"), (1100, "q8_0"), (200, "q8_0"), (96, "q8_0")):
        prim = primfunc(kind, d, 20, dtype, replace(host_sched("pmaddubsw256"), int8_axpy=False), ACTS[kind],
                        bias=True)
        calls = quant_calls(kind, np.random.default_rng(11), d, 20, dtype, 0.5, x8=True)
        check(kind, f"{dtype} d={d}", calls, run_native(prim, calls))


@pytest.mark.parametrize("dtype,k", (("q4_0", 4096), ("float32", 1000)))
def test_own_rows_prefetch_the_next_step_as_one_block(dtype, k):
    """A linear's row dots over a task's own contiguous rows prefetch the next step's rows as one block in address
    order, a share per iteration of the row loop (`quant_blocks.next_block_prefetch_macro`, the float loop of
    `common.dots_macro`): ceil(rows x lines per row / iterations) prefetches an iteration, e.g. q4_0 at k = 4096: 8
    rows x 36 lines over 32 four-group chunks = 9, fp32 at k = 1000: 8 rows x 63 lines over 62 = 9 (one per row and
    line read side by side, Intel's L2 streamer lost rows under 4 KB: BENCHMARKS.md session 46). Gathered rows
    (indexed) keep one prefetch per row and line. Compiled for Sapphire Rapids with its schedule, on any host."""
    import tvm

    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.kernels.linear import linear
    from actsparse.ir.quant import LAYOUTS

    sched, spr = cpu_sched("vpdpbusd512")

    def loops(prim):
        lib = tvm.compile(tvm.IRModule({"main": prim}), target=spr)
        asm = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
        return [body for body in innermost_loops(asm) if "prefetcht1" in body]

    fitted = sched.fitted(k, dtype)
    row_bytes = LAYOUTS[dtype].row_bytes(k) if dtype in LAYOUTS else 4 * k
    # iterations of a row's loop: q4_0 four groups (a 64-byte vector of codes) each, fp32 a whole cache line each
    iterations = k // 128 if dtype in LAYOUTS else row_bytes // 64
    want = -(-fitted.rows * -(-row_bytes // 64) // iterations)
    # the decode loop (M = 1) is the one with the most prefetches (prefill's token-blocked loop has its own; the old
    # per-row form put 16 in the fp32 loop: two lines of 8 rows)
    own = max(body.count("prefetcht1") for body in loops(linear(k, 4096, dtype=dtype, sched=sched)))
    assert own == want, (own, want)
    gathered = loops(kernel("indexed", k, 64, gate_act="relu", up_act="identity", dtype=dtype,
                            sched=replace(sched, int8_axpy=())))
    assert all(body.count("prefetcht1") % fitted.rows == 0 for body in gathered), gathered  # (loops may be unrolled)
