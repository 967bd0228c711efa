"""The integer row axpy of quantized rows (codegen/kernels/quant_axpy8.py: the down projection's coefficients
h_j * scale_{j,g} rounded per step of R rows and 32-column group to int8, summed with VNNI `vpdpbusd`, or on AVX2
without VNNI with `vpmaddubsw` + `vpmaddwd`; q8_0 on AVX2 rounded to int16 and summed with `vpmaddwd` alone,
quant_axpy16.py).

Three checks per kernel call, for every x86 dot with an integer axpy that this host executes (the kernels run here):
- exact, indexed, dense: within fp32 tolerance of a float64 reference that rounds the coefficients as the kernel does
  (`down_rounded`: the kernel's steps rebuilt from its row lists; a coefficient within float32 noise of a rounding
  boundary may round either way, so its term is slack);
- every kernel with a down axpy (also threshold and input-sparse): within the rounding's bound of the unrounded
  down projection, |error| <= (max_j |h_j s_{j,g}| / 254) * Σ_j |q_{j,c}| (`down_bound`, which no step split changes);
- end to end against float64 on unrounded x and coefficients: a relative error of at most 2% (x's and h's 8-bit
  rounding together; measured ~0.3-0.6% on these inputs).
Sizes that 32 does not divide, 0% / 100% / random active; every dot width (512-bit: 4 rows x 16 columns per dot;
256-bit: 4 rows x 8 columns). And the generated code of the down projection holds the host's dot instruction.
"""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .axpy8_cases import down_bound, down_rounded, h_of
from .kernel_cases import QUANT_DTYPES, examples, mlp_reference, primfunc, run_native
from .test_kernels_int8 import DOTS, NEEDS
from .test_kernels_int8 import host_sched as detected_sched
from .test_kernels_quant import ACTS, quant_calls

pytest.importorskip("tvm")

ragged = st.integers(1, 100).filter(lambda d: d % 32)
AXPY_LAYOUTS = ("q4_0", "q4_1")  # every x86 dot's integer-axpy layouts (INT8_DOTS[...].axpy)
WORD_LAYOUTS = {"pmaddubsw256": ("q8_0",)}  # and on AVX2's, q8_0 by the int16 pair sum (`Int8Dot.int16_axpy`)
AXPY_DOTS = ("vpdpbusd512", "vpdpbusd256", "pmaddubsw256")  # the x86 dots with an integer axpy
MNEMONIC = {"vpdpbusd512": "vpdpbusd", "vpdpbusd256": "vpdpbusd", "pmaddubsw256": "vpmaddubsw"}


def axpy_dots_here() -> tuple[str, ...]:
    """The x86 dots with an integer axpy that this host executes (widest first)."""
    from actsparse import targets

    features = set(targets.get("x86").features)
    return tuple(dot for dot in AXPY_DOTS if NEEDS[dot] & features)


HERE = axpy_dots_here()
needs_a_dot = pytest.mark.skipif(not HERE, reason="no x86 int8 dot with an integer axpy executes on this host")
# (dot, layout) pairs whose down axpy is integer on this host (any x86 pairs when none executes: those tests skip)
COMBOS = [(dot, dt) for dot in HERE or AXPY_DOTS for dt in (*AXPY_LAYOUTS, *WORD_LAYOUTS.get(dot, ()))]


def levels_of(dot, dtype) -> int:
    """The largest |a_j| of the kernel's coefficients: int8 (127), or int16 (32767) on the int16 q8_0 axpy."""
    return 32767 if dtype in WORD_LAYOUTS.get(dot, ()) else 127


def host_sched(dot=None):
    """The host's schedule on `dot` (default: the widest one it executes) with the integer axpy in every kernel."""
    return replace(detected_sched(dot or HERE[0]), int8_axpy=True)


def steps_of(kind, call, sched, n_ff, m):
    """The weight rows of each step of the kernel's down axpy for token m (sparse_mlp.py's row lists)."""
    R = sched.rows
    if kind == "dense":
        return [range(i, min(i + R, n_ff)) for i in range(0, n_ff, R)]
    if kind == "indexed":  # per task, its even share of the token's list
        idx, count = call.args[4], call.args[5]
        listed, T_ = idx[m, :count[m]], sched.threads
        shares = [listed[t * len(listed) // T_:(t + 1) * len(listed) // T_] for t in range(T_)]
        return [s[i:i + R] for s in shares for i in range(0, len(s), R)]
    # exact: per task, its contiguous neurons that some token keeps, in order
    nper = -(-n_ff // sched.threads)
    steps = []
    for t in range(sched.threads):
        listed = [j for j in range(t * nper, min(n_ff, (t + 1) * nper)) if call.kept[j]]
        steps += [listed[i:i + R] for i in range(0, len(listed), R)]
    return steps


@needs_a_dot
@pytest.mark.parametrize("kind", ("exact", "indexed", "dense"))
@settings(max_examples=examples(6), suppress_health_check=[HealthCheck.too_slow])
@given(combo=st.sampled_from(COMBOS), d=ragged, n_ff=st.integers(1, 40), frac=st.floats(0.05, 0.95),
       seed=st.integers(0, 999))
def test_integer_down_projection_equals_the_reference_on_the_same_rounding(kind, combo, d, n_ff, frac, seed):
    dot, dtype = combo
    check_against_the_steps(kind, dtype, dot, d, n_ff, frac, seed)


@pytest.mark.parametrize("kind,dtype", (("exact", "q4_0"), ("indexed", "q4_0"), ("dense", "q4_0"),
                                        ("exact", "q4_1"), ("dense", "q4_1"), ("exact", "q8_0"),
                                        ("indexed", "q8_0"), ("dense", "q8_0")))
def test_the_coefficient_table_path_on_long_rows(kind, dtype):
    """Split rows (q4_0, q4_1: its per-group offset constant in the table too) on AVX-512 and AVX2, and q8_0's
    blocks on AVX2 (each row's 16 scales gathered), round a step's coefficients 16 groups per vector into a table
    (`coefficient_table`): rows of 1100 columns (34 groups, 17 per task: one 16-group vector and one more ending at
    the task's last group, or one by one in q8_0's int16 form; then a partial group), of 600 (9 groups per task: two
    8-group vectors) and of 250 (3 and 4 groups per task: one by one) take every path, against the same step-exact
    reference, on every such dot this host executes."""
    from actsparse.codegen.kernels.int8_dots import INT8_DOTS

    tabled = [dot for dot in HERE if INT8_DOTS[dot].coefficient_table and (dot, dtype) in COMBOS]
    if not tabled:
        pytest.skip(f"no int8 dot with a coefficient table for {dtype} executes on this host")
    for dot in tabled:
        for d in (1100, 600, 250):
            check_against_the_steps(kind, dtype, dot, d, 20, 0.5, 7)


def check_against_the_steps(kind, dtype, dot, d, n_ff, frac, seed):
    from actsparse.codegen.kernels.quant_axpy8 import uses_int8_axpy
    from actsparse.ir.quant import dequantize, round_x8

    sched = host_sched(dot)
    assert uses_int8_axpy(dtype, sched, kind)
    levels = levels_of(dot, dtype)
    prim = primfunc(kind, d, n_ff, dtype, sched, ACTS[kind], bias=True)
    fitted = sched.fitted(d, dtype)
    calls = quant_calls(kind, np.random.default_rng(seed), d, n_ff, dtype, frac, x8=True)
    for i, (call, out) in enumerate(zip(calls, run_native(prim, calls))):
        x, blob = call.args[0], call.args[3]
        h = h_of(kind, call, dtype, d, round_x8(x), ACTS[kind])
        call.kept = ((round_x8(x).astype(np.float64) @ dequantize(call.args[1], dtype, d).T) > 0).any(0)
        ref = np.zeros_like(call.ref)
        slack = np.zeros_like(call.ref)
        for m in range(x.shape[0]):
            ref[m], slack[m] = down_rounded(h[m], blob, dtype, d, steps_of(kind, call, fitted, n_ff, m), levels)
        call.ref, call.slack = ref, slack * 1.01
        try:
            call.check(out)  # fp32 tolerance (scaled by Σ|terms|) + the undecidable roundings
        except AssertionError as err:
            raise AssertionError(f"{kind} {dtype} {dot} call {i} (M={x.shape[0]}): {err}") from None
        # and within the rounding's bound of the unrounded down projection
        wd = dequantize(blob, dtype, d).astype(np.float64)
        exact_down = h @ wd
        bound = down_bound(np.abs(h), blob, dtype, d, levels) + 1e-4 * (call.scale + 1e-3)
        assert np.all(np.abs(out - exact_down) <= bound), np.max(np.abs(out - exact_down) - bound)


@needs_a_dot
@pytest.mark.parametrize("kind", ("threshold", "dense"))
@settings(max_examples=examples(6), suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from([dt for dot, dt in COMBOS if dot == (HERE or AXPY_DOTS)[0]]),
       d=st.integers(33, 160).filter(lambda d: d % 32), n_ff=st.integers(8, 64), frac=st.floats(0.05, 0.95),
       seed=st.integers(0, 999))
def test_integer_down_projection_is_within_its_bound_and_close_end_to_end(kind, dtype, d, n_ff, frac, seed):
    """Threshold (its kept set can differ near the threshold, so no step-exact reference): the rounding bound on
    top of the kernel's own tolerance; dense: within 5% (relative, L2) of float64 on unrounded x and h."""
    from actsparse.ir.quant import dequantize, round_x8

    sched = host_sched()
    prim = primfunc(kind, d, n_ff, dtype, sched, ACTS[kind], bias=True)
    calls = quant_calls(kind, np.random.default_rng(seed), d, n_ff, dtype, frac, x8=True)
    for call, out in zip(calls, run_native(prim, calls)):
        x, blob = call.args[0], call.args[3]
        h = h_of(kind, call, dtype, d, round_x8(x), ACTS[kind])
        call.slack = call.slack + down_bound(np.abs(h), blob, dtype, d, levels_of(HERE[0], dtype))
        call.check(out)
        ws = [dequantize(b, dtype, d) for b in call.args[1:4]]
        full, _ = mlp_reference(x, *ws, *ACTS[kind][:3]) if kind == "dense" else (call.ref, None)
        if kind == "dense":  # x and h unrounded: the whole 8-bit effect. A sanity figure, not a bound (the step
            # check above is the bound): with few terms (n_ff 8, d 33) two 8-bit roundings reached 2.6% of the
            # norm in a valid case; a wrong row, scale or group gives tens of percent
            norm = np.linalg.norm(full)
            assert norm == 0 or np.linalg.norm(out - full) <= 0.05 * norm, np.linalg.norm(out - full) / norm


@needs_a_dot
def test_the_down_projection_is_built_with_the_hosts_dot():
    """The dense kernel's second parallel region (the down axpy) holds the host's dot (vpdpbusd, or vpmaddubsw on
    AVX2); with `int8_axpy=False` only the row dots do, so the count drops (the float axpy: vpmovzxbd + vcvtdq2ps +
    FMA)."""
    import tvm

    from actsparse import targets

    sched = host_sched()
    counts = {}
    for flag in (True, False):
        prim = primfunc("dense", 100, 8, "q4_0", replace(sched, int8_axpy=flag))
        lib = tvm.compile(tvm.IRModule({"main": prim}), target=targets.get("x86").tvm_target())
        asm = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
        counts[flag] = asm.count(MNEMONIC[HERE[0]] + "\t")
    assert counts[True] > counts[False] > 0, counts


# (dot, fp32 lanes, LLVM CPU, dots per 8 rows x one iteration's columns, most instructions in that loop, layout):
# AVX-512's iteration is one group (32 columns), AVX2's two (64 columns: one 32-byte load per row, in-lane unpacks)
TABLED_LOOPS = (("vpdpbusd512", 16, "znver4", 4, 60, "q4_0"), ("pmaddubsw256", 8, "haswell", 16, 170, "q4_0"),
                ("pmaddubsw256", 8, "haswell", 16, 185, "q4_1"))


@pytest.mark.parametrize("dot,lanes,mcpu,dots,most,dtype", TABLED_LOOPS)
def test_the_integer_down_loop_of_split_rows_reads_its_coefficients_from_the_table(dot, lanes, mcpu, dots, most,
                                                                                      dtype):
    """AVX-512 and AVX2, split q4_0 / q4_1 rows (`Int8Dot.coefficient_table`): the down projection's group loop takes
    each group's int8 coefficients, t and -z Σ a_j (q4_1: and its offset constant) from the step's table: per 8 rows
    x 32 columns 4 vpdpbusd (AVX2: per 8 rows x 64 columns, two groups, 16 vpmaddubsw) and no z dots, no per-row
    scale gather (vpinsrw), no conversion of scales or offsets, no division (AVX-512 main, session 10: 82
    instructions with 6 vpdpbusd, 8 vpinsrw and a vdivss; now ~44; AVX2, 2 rows per int16 lane: ~102 per group in
    session 18, now ~158 per two groups, no vpmaddwd). The table itself is filled 16 groups per vector (vdivps).
    Compiled only: any host."""
    import tvm

    from actsparse.codegen.kernels.schedule import CpuSchedule

    from .test_kernels_int8 import innermost_loops

    sched = CpuSchedule(lanes=lanes, threads=2, vector_registers=32 if lanes == 16 else 16, int8_dot=dot,
                        int8_axpy=True)
    prim = primfunc("exact", 4096, 64, dtype, sched, ACTS["exact"])
    lib = tvm.compile(tvm.IRModule({"main": prim}), target=tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))
    asm = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
    # the row dots convert their scales in the loop (vcvtph2ps); the down loop does not
    op = MNEMONIC[dot]
    loops = [body for body in innermost_loops(asm) if op in body and "vcvtph2ps" not in body]
    assert len(loops) == 1, loops
    body = loops[0]
    assert body.count(op) == dots, body
    assert not [op for op in body if op.startswith(("vpinsrw", "vdiv", "vcvtph2ps", "vmaxps", "vrndscale",
                                                    "vroundps", "vpmaddwd"))], body
    assert len(body) < most, len(body)
    if dot == "pmaddubsw256":  # two groups' code bytes per 32-byte load, rows interleaved in-lane (no broadcasts)
        assert "vpunpckhbw" in body and "vbroadcasti128" not in body, body
    fills = [body for body in innermost_loops(asm) if "vdivps" in body]
    assert fills and all(op not in body for body in fills), fills


def test_the_int16_q8_0_down_loop_holds_only_the_pair_sums():
    """AVX2, q8_0 rows (`Int8Dot.int16_axpy`, quant_axpy16.py): the down projection's group loop is, per 8 rows x 32
    columns, 16 sign-extending loads (vpmovsxbw), 16 word unpacks, 16 vpmaddwd, 4 conversions and 4 FMAs: no scale
    load, conversion or division (the coefficient table holds them), no byte pair sum: 94 instructions in the dense
    kernel on one thread (znver3), 117 here (22 movq reloading gathered rows' pointers), where main's float loop took
    148 (32 vpmovsxbd, 32 vcvtdq2ps, 28 FMAs, 8 vpinsrw + 8 vcvtph2ps of scales). Compiled only: any host."""
    import tvm

    from actsparse.codegen.kernels.schedule import CpuSchedule

    from .test_kernels_int8 import innermost_loops

    sched = CpuSchedule(lanes=8, threads=2, vector_registers=16, int8_dot="pmaddubsw256", int8_axpy=True)
    prim = primfunc("exact", 4096, 64, "q8_0", sched, ACTS["exact"])
    lib = tvm.compile(tvm.IRModule({"main": prim}), target=tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}))
    asm = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
    loops = [body for body in innermost_loops(asm) if "vpmaddwd" in body and "vpmaddubsw" not in body]
    assert len(loops) == 1, loops
    body = loops[0]
    assert body.count("vpmaddwd") == 16 and body.count("vpmovsxbw") == 16 and body.count("vcvtdq2ps") == 4, body
    assert not [op for op in body if op.startswith(("vpinsrw", "vdiv", "vcvtph2ps", "vpmovsxbd", "vpsignb"))], body
    assert len(body) < 125, len(body)


def test_the_integer_axpy_follows_the_dot_table():
    """The VNNI dots, sdot and the AVX2 dot serve q4_0 / q4_1 axpys, the AVX2 dot q8_0's too (int16 coefficients on
    vpmaddwd; q8_0's float axpy is as fast on VNNI); float dtypes never."""
    from actsparse.codegen.kernels.quant_axpy8 import uses_int8_axpy
    from actsparse.codegen.kernels.schedule import CpuSchedule

    for dot, lanes in {**DOTS, "sdot128": 4}.items():
        sched = CpuSchedule(lanes=lanes, threads=2, int8_dot=dot)
        assert dot in (*AXPY_DOTS, "sdot128")
        want = {*AXPY_LAYOUTS, *WORD_LAYOUTS.get(dot, ())}
        assert {dt for dt in QUANT_DTYPES if uses_int8_axpy(dt, sched, "dense")} == want
        assert not uses_int8_axpy("q4_0", replace(sched, int8_axpy=False), "dense")
    assert not uses_int8_axpy("float16", CpuSchedule(lanes=16, threads=2, int8_dot="vpdpbusd512"), "dense")
    assert not uses_int8_axpy("q4_0", CpuSchedule(lanes=16, threads=2), "dense")


def test_each_kernel_takes_the_down_projection_path_the_target_table_gives_it():
    """`Target.int8_axpy_kernels` (data) -> `CpuSchedule.int8_axpy` -> each kernel's down projection: integer
    (vpdpbusd in the down region) for the kernels the table names, float for the others; the path is in the symbol."""
    import tvm

    from actsparse import targets
    from actsparse.codegen.kernels.quant_axpy8 import uses_int8_axpy
    from actsparse.codegen.kernels.schedule import AXPY_KERNELS
    from actsparse.codegen.schedules import schedule_for

    host = targets.get("x86")
    # measured: integer pays for dense only (BENCHMARKS.md, session 8), on AVX512-VNNI with the coefficient table for
    # exact and indexed too (session 11) and the input-sparse kernel (session 13), likewise on AVX2 (session 18); the
    # routed MoE kernel's experts run the exact / dense bodies (session 33)
    every = ("dense", "exact", "indexed", "input", "routed")
    vnni = {"avx512_vnni", "avx_vnni"} & set(host.features)
    table = (every if host.vector_bits == 512 and "avx512_vnni" in host.features
             or host.vector_bits == 256 and "avx2" in host.features and not vnni else ("dense",))
    assert host.int8_axpy_kernels == table
    assert schedule_for(host).int8_axpy == table
    from actsparse.targets.x86 import gathered_int8_axpy

    assert gathered_int8_axpy({"avx2", "avx_vnni"}, 256) == ("dense",)  # no coefficient table on 256-bit VNNI
    assert gathered_int8_axpy({"avx512f", "avx512_vnni"}, 512) == every
    assert gathered_int8_axpy({"avx2", "fma"}, 256) == every
    if not HERE:
        pytest.skip("no x86 int8 dot with an integer axpy executes on this host")
    sched = detected_sched(HERE[0])
    op = MNEMONIC[HERE[0]]
    assert [k for k in AXPY_KERNELS if uses_int8_axpy("q4_0", sched, k)] == list(table)
    flipped = replace(host, int8_axpy_kernels=("exact", "indexed"))   # another target's table: followed as given
    assert schedule_for(flipped).int8_axpy == ("exact", "indexed")
    with pytest.raises(ValueError, match="no kernel with a down projection"):
        replace(sched, int8_axpy=("linear",))
    counts = {}
    for kind in ("dense", "exact", "indexed"):
        for table in (("dense",), ("exact", "indexed")):
            prim = primfunc(kind, 100, 8, "q4_0", replace(sched, int8_axpy=table))
            lib = tvm.compile(tvm.IRModule({"main": prim}), target=host.tvm_target())
            asm = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
            counts[kind, kind in table] = (asm.count(op + "\t"), str(prim.attrs["global_symbol"]))
    for kind in ("dense", "exact", "indexed"):   # integer > float (the row dots use the dot on both)
        (integer, sym_i), (floating, sym_f) = counts[kind, True], counts[kind, False]
        assert integer > floating > 0 and sym_i != sym_f, (kind, counts)


@needs_a_dot
@pytest.mark.parametrize("kind", ("exact", "dense"))
def test_a_non_finite_input_reaches_the_output_through_the_integer_paths(kind):
    """A NaN in one token's x: that token's outputs are all NaN (x's 8-bit blocks carry it in dx, the down axpy in t;
    `max` alone drops NaN), the other token's stay finite — as on the float path."""
    from actsparse.ir.quant import quantize

    from .kernel_cases import Call

    sched = host_sched()
    d, n_ff = 70, 20
    rng = np.random.default_rng(3)
    prim = primfunc(kind, d, n_ff, "q4_0", sched, ACTS[kind])
    x = rng.standard_normal((2, d)).astype(np.float32)
    x[1, 5] = np.nan
    blobs = [quantize(rng.standard_normal((n_ff, d)).astype(np.float32), "q4_0").blob for _ in range(3)]
    (out,) = run_native(prim, [Call([x, *blobs, np.zeros((2, d), np.float32)], None, None, "q4_0")])
    assert np.isnan(out[1]).all() and np.isfinite(out[0]).all()


def test_a_pair_sum_dot_widens_before_its_int16_sums_could_wrap():
    """On AVX2's pair-sum dot the int16 sums of a step's rows widen every `SETS_PER_WIDENING` pairs: 32 rows of down
    codes 15 (0..15) under 32 equal coefficients (all a_j = 127) sum to 32 * 15 * 127 = 60960 per column, past int16
    (one sum would wrap to a wrong sign); the kernel's output equals the float64 MLP."""
    from actsparse.ir.quant import dequantize, quantize

    from .kernel_cases import Call

    if "pmaddubsw256" not in HERE:
        pytest.skip("the AVX2 pair-sum dot does not execute on this host")
    sched = replace(host_sched("pmaddubsw256"), rows=32, threads=1)
    d, n_ff = 64, 32
    gate_up = np.tile(np.linspace(0.5, 1.0, d, dtype=np.float32), (n_ff, 1))   # every neuron alike: equal h
    down = np.full((n_ff, d), 7.0, np.float32)
    down[:, ::32] = -8.0   # a group's largest magnitude -8: scale 1, the 7s stored as code 15
    blobs = [quantize(w, "q4_0").blob for w in (gate_up, gate_up, down)]
    x = np.ones((1, d), np.float32)
    prim = primfunc("dense", d, n_ff, "q4_0", sched, ("relu", "identity", 0.0))
    (out,) = run_native(prim, [Call([x, *blobs, np.zeros((1, d), np.float32)], None, None, "q4_0")])
    ws = [dequantize(b, "q4_0", d) for b in blobs]
    ref, _ = mlp_reference(x, *ws, "relu", "identity", 0.0)
    np.testing.assert_allclose(out, ref, rtol=0.02, atol=0.02 * np.abs(ref).max())


def q8_0_blob(codes, scales):
    """A q8_0 blob from codes [n, G * 32] (int, -128..127) and scales [n, G] (exact in fp16), byte for byte (GGUF's
    blocks, then split per row as ir.quant stores them)."""
    from actsparse.ir.quant import from_gguf_blocks

    n, G = scales.shape
    blocks = np.zeros((n, G, 34), np.uint8)
    blocks[..., :2] = scales.astype(np.float16)[..., None].view(np.uint8)
    blocks[..., 2:] = codes.astype(np.int8).reshape(n, G, 32).view(np.uint8)
    return from_gguf_blocks(blocks.reshape(n, G * 34), "q8_0", G * 32)


def exact_h_inputs(gate_a, gate_e, up_b, d):
    """(x [3, d], gate and up blobs) whose h the kernel computes exactly: gate row j holds codes a_j (column 0) and e_j
    (column 1), up row j b_j (column 0), all scales 1; x is 127 at column 0 (token 0: every neuron with a_j > 0
    active), -127 there (token 1: none) or 5 there and 127 at column 1 (token 2: those with 5 a_j + 127 e_j > 0), so
    x rounds to itself (dx = 1) and h is an integer below 2^24, e.g. relu(127 a_j) * 127 b_j on token 0."""
    n, G = len(gate_a), -(-d // 32)
    ones = np.ones((n, G))
    gate, up = np.zeros((n, G * 32)), np.zeros((n, G * 32))
    gate[:, 0], gate[:, 1], up[:, 0] = gate_a, gate_e, up_b
    x = np.zeros((3, d), np.float32)
    x[0, 0], x[1, 0], x[2, 1] = 127, -127, 127
    x[2, 0] = 5  # token 2's up is 5 b_j
    return x, q8_0_blob(gate, ones), q8_0_blob(up, ones)


def run_word_axpy(sched, d, gate_a, gate_e, up_b, down_codes, down_scales):
    """(out [3, d], h [3, n] float64) of the dense q8_0 kernel on `exact_h_inputs` and the given down blob."""
    from .kernel_cases import Call

    x, gate, up = exact_h_inputs(gate_a, gate_e, up_b, d)
    down = q8_0_blob(down_codes, down_scales)
    prim = primfunc("dense", d, len(gate_a), "q8_0", sched, ("relu", "identity", 0.0))
    (out,) = run_native(prim, [Call([x, gate, up, down, np.zeros((3, d), np.float32)], None, None, "q8_0")])
    a, e, b = (np.asarray(v, float) for v in (gate_a, gate_e, up_b))
    g, u = np.stack([127 * a, -127 * a, 5 * a + 127 * e]), np.stack([127 * b, -127 * b, 5 * b])
    return out, np.maximum(g, 0) * u, down


@pytest.mark.parametrize("d", (1100, 80))
def test_the_int16_q8_0_axpy_is_step_exact_on_exact_coefficients(d):
    """AVX2's q8_0 down axpy (int16 coefficients on vpmaddwd, quant_axpy16.py) on inputs whose h is exact in float32:
    the output equals the numpy model of its steps (t = max|h s| / 32767, a_j = rint(h_j s_j / t)) within 2e-6 of
    Σ|terms| (float32's per-step conversion and sums), where the unrounded down projection is off by more (rows
    whose h is 10-1000x below their step's largest: a_j of tens to hundreds, a visible rounding) and an int8
    rounding far more. Tokens at 100%, 0% and about half active; rows of 1100 columns (the 16-group table, one group
    more and a partial group per task) and of 80 (groups one by one)."""
    if "pmaddubsw256" not in HERE:
        pytest.skip("the AVX2 pair-sum dot does not execute on this host")
    from actsparse.codegen.kernels.quant_axpy8 import uses_int8_axpy

    sched = host_sched("pmaddubsw256")
    assert uses_int8_axpy("q8_0", sched, "dense")
    rng = np.random.default_rng(11)
    n, G = 20, -(-d // 32)
    gate_a = rng.integers(1, 4, n)          # every neuron active on token 0, none on token 1
    gate_a[::8] = 40                        # each step's largest h (steps of sched.rows = 8 rows)
    gate_e = rng.choice([-3, -1, 1, 2], n)  # token 2: the rows with e_j > 0
    up_b = rng.integers(1, 4, n) * rng.choice([-1, 1], n)
    up_b[::8] = 25
    codes = rng.integers(-128, 128, (n, G * 32))
    scales = rng.integers(32, 128, (n, G)) / 64  # exact in fp16
    out, h, down = run_word_axpy(sched, d, gate_a, gate_e, up_b, codes, scales)
    steps = [range(i, min(i + sched.rows, n)) for i in range(0, n, sched.rows)]
    wd = codes[:, :d] * np.repeat(scales, 32, axis=1)[:, :d]
    terms = np.abs(h) @ np.abs(wd)
    assert not out[1].any()  # 0% active: h = 0, every a_j and t 0
    assert (h[0] != 0).all() and 0 < np.count_nonzero(h[2]) < n
    for m in (0, 2):
        model, slack = down_rounded(h[m], down, "q8_0", d, steps, levels=32767)
        err = np.abs(out[m] - model)
        assert np.all(err <= 2e-6 * terms[m] + slack), np.max((err - slack) / terms[m])
    # token 0, each step's first row ~200x the others: their a_j of tens to hundreds round visibly
    unrounded = np.max(np.abs(h[0] @ wd - out[0]) / terms[0])
    int8, _ = down_rounded(h[0], down, "q8_0", d, steps, levels=127)
    assert unrounded > 4e-6 and np.max(np.abs(int8 - out[0]) / terms[0]) > 1e-4, unrounded


def test_the_int16_q8_0_axpy_holds_the_int32_bound():
    """The extremes of vpmaddwd's int32 sums: 32 rows in one step (16 row pairs) with equal h, so every a_j is
    32767, over codes -128 (even columns) and 127 (odd ones): per column 32 * 32767 * -128 = -134213632 and
    32 * 32767 * 127, exact in int32; the output equals the model and the float64 down projection."""
    if "pmaddubsw256" not in HERE:
        pytest.skip("the AVX2 pair-sum dot does not execute on this host")
    sched = replace(host_sched("pmaddubsw256"), rows=32, threads=1)
    d, n = 70, 32
    codes = np.tile(np.where(np.arange(96) % 2, 127, -128), (n, 1))
    scales = np.full((n, 3), 0.5)
    out, h, down = run_word_axpy(sched, d, np.full(n, 2), np.full(n, -1), np.full(n, 3), codes, scales)
    model, _ = down_rounded(h[0], down, "q8_0", d, [range(n)], levels=32767)
    exact = h[0] @ (codes[:, :d] * 0.5)
    np.testing.assert_allclose(model, exact, rtol=1e-7)  # equal coefficients: a_j = 32767, t's float32 rounding only
    np.testing.assert_allclose(out[0], exact, rtol=1e-6)
    assert exact[0] == 32 * 254 * 381 * 0.5 * -128 and not out[1].any() and not out[2].any()
