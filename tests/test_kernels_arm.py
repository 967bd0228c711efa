"""ARM (aarch64 NEON): the kernels built from the arm target's data, linked with a C harness, run under qemu-aarch64
and compared with numpy; the code uses NEON; `compile(..., target="arm")` cross-compiles a whole model.

Needs qemu-aarch64 and aarch64-linux-gnu-gcc: scripts/install-cross.sh installs them when missing (Debian/apt);
where that is impossible the tests skip and say why.
"""

import numpy as np
import pytest

from .kernel_cases import (
    DTYPES,
    cross_kernels,
    linear_call,
    mlp_call,
    primfunc,
    require_cross_tools,
)

tvm = pytest.importorskip("tvm")

D, N_FF = 37, 53  # not multiples of the 4 NEON lanes or of the 8-row steps


def arm_schedule():
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    return schedule_for(targets.get("arm"))


def all_kernels():
    sched = arm_schedule()
    prims = {}
    for dtype in DTYPES:
        prims["exact", dtype] = primfunc("exact", D, N_FF, dtype, sched, ("relu", "relu", 0.0))
        prims["indexed", dtype] = primfunc("indexed", D, N_FF, dtype, sched, ("silu", "identity", 0.0))
        prims["dense", dtype] = primfunc("dense", D, N_FF, dtype, sched, ("relu", "identity", 0.0))
        prims["linear", dtype] = primfunc("linear", D, N_FF, dtype, sched, bias=True)
    return prims


def test_arm_schedule_comes_from_the_target_data():
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    arm = targets.get("arm")
    sched = schedule_for(arm)
    assert (sched.lanes, sched.vector_registers, sched.threads) == (4, 32, arm.threads)
    assert arm.tvm["mtriple"].startswith("aarch64") and "+neon" in arm.tvm["mattr"]


def test_every_arm_kernel_matches_numpy_under_qemu():
    require_cross_tools()
    prims = all_kernels()
    kernels = cross_kernels(list(prims.values()))
    rng = np.random.default_rng(0)
    runs, checks = [], []
    for (kind, dtype), prim in prims.items():
        for M, frac in ((1, 0.5), (5, 0.1), (3, 0.0), (2, 1.0)):
            active = np.flatnonzero(rng.random(N_FF) < frac)
            if kind == "linear":
                call = linear_call(rng, M, D, N_FF, dtype, bias=True)
            elif kind == "indexed":
                sets = [np.sort(rng.choice(N_FF, rng.integers(0, N_FF + 1), replace=False)) for _ in range(M)]
                call = mlp_call(kind, rng, M, D, N_FF, dtype, ("silu", "identity", 0.0), active, sets)
            else:
                acts = ("relu", "relu" if kind == "exact" else "identity", 0.0)
                call = mlp_call(kind, rng, M, D, N_FF, dtype, acts, active)
            runs.append((str(prim.attrs["global_symbol"]), call.args, [len(call.args) - 1]))
            checks.append((kind, dtype, M, call))
    outs = kernels.run(runs)  # one qemu process for all 32 calls
    for (kind, dtype, M, call), (out,) in zip(checks, outs):
        try:
            call.check(out)
        except AssertionError as err:
            raise AssertionError(f"{kind} {dtype} M={M}: {err}") from None


def test_arm_code_uses_neon_vector_fma_and_fp16_conversion():
    require_cross_tools()
    prims = all_kernels()
    text = cross_kernels(list(prims.values())).disassembly()
    fmla = [line for line in text.splitlines() if "\tfmla\t" in line and ".4s" in line]
    assert len(fmla) > 50, "expected NEON fmla on v-registers (4 x fp32)"
    assert all("v" in line.split("\tfmla\t")[1][:3] for line in fmla)
    assert "fcvtl" in text  # fp16 weights widened to fp32 four lanes at a time


def test_arm_code_loads_q_registers_prefetches_once_per_line_and_splits_the_down_fma_chain():
    """The ARM kernels' design read from their disassembly at a longer row (d = 512; objdump only, nothing run):
    - every loop that prefetches reads at least one 64-byte cache line per prefetch (was 8 per line for fp16);
    - fp16 weights load whole q registers (ldr q, widened by fcvtl + fcvtl2) and no 64-bit ldr d in every stream:
      the decode streams (the loops over `rows` rows) and the token-blocked prefill dots (`block_rows` rows);
    - the down projection's axpy (the prefetching loops that multiply) sums its 8 rows in 2 independent chains:
      per output vector 2 fmul start them, so at most 3 fmla follow each (one chain: 7)."""
    from actsparse import targets
    from actsparse.codegen.asm_stats import disassemble, innermost_loops, opcode_counts
    from actsparse.codegen.kernels.common import build_kernels

    require_cross_tools()
    arm, sched = targets.get("arm"), arm_schedule()
    assert sched.accumulators == arm.accumulators == 2
    for dtype in DTYPES:
        prims = [primfunc(kind, 512, 64, dtype, sched) for kind in ("exact", "indexed", "dense", "linear")]
        asm = disassemble(build_kernels(prims, arm.tvm_target()))
        streams = [loop for loop in innermost_loops(asm) if loop.prefetches]
        assert len(streams) >= 8
        for loop in streams:
            assert loop.bytes_per_prefetch >= 64, (dtype, hex(loop.start), loop)
        decode = [loop for loop in streams if loop.prefetches == sched.rows]
        assert decode and all(loop.loads["ldr", "q"] + loop.loads["ldp", "q"] > 0 for loop in decode)
        prefill = [loop for loop in streams if loop.prefetches == sched.block_rows < sched.rows]
        assert prefill and all(loop.vector_ops["fmla"] and not loop.vector_ops["fmul"] for loop in prefill)
        if dtype == "float16":
            assert opcode_counts(asm)["fcvtl2"] > 0
            assert all(loop.loads["ldr", "d"] + loop.loads["ldp", "d"] == 0 for loop in streams), streams
            assert all(loop.vector_ops["fcvtl2"] > 0 for loop in prefill), prefill
        axpy = [loop for loop in decode if loop.vector_ops["fmul"]]
        assert axpy and all(loop.vector_ops["fmla"] <= 3 * loop.vector_ops["fmul"] for loop in axpy), axpy


def test_arm_fhm_target_uses_fmlal_for_fp16_dot_products_and_matches_numpy_under_qemu():
    """A target whose data declares fp16fml (FEAT_FHM, "arm-fhm") multiplies fp16 weights with x rounded to fp16
    into fp32 sums (fmlal / fmlal2: the products are exact) instead of widening the weights; within fp16 tolerance
    of numpy (qemu-aarch64 emulates FEAT_FHM)."""
    from actsparse import targets
    from actsparse.codegen.asm_stats import innermost_loops
    from actsparse.codegen.schedules import schedule_for

    require_cross_tools()
    fhm = targets.get("arm-fhm")
    assert "fp16fml" in fhm.features and "+fp16fml" in fhm.tvm["mattr"]
    assert targets.get(fhm.tvm).features == fhm.features  # a TVM target dict with +fp16fml finds the same data
    sched = schedule_for(fhm)
    assert sched.fp16fml and not arm_schedule().fp16fml
    d, acts = 64, ("relu", "identity", 0.0)
    prims = {kind: primfunc(kind, d, N_FF, "float16", sched, acts, bias=True) for kind in ("exact", "dense", "linear")}
    kernels = cross_kernels(list(prims.values()), fhm)
    text = kernels.disassembly()
    assert "\tfmlal\t" in text and "\tfmlal2\t" in text
    dots = [loop for loop in innermost_loops(text) if loop.prefetches == sched.rows and not loop.vector_ops["fmul"]]
    assert dots and all(loop.vector_ops["fmlal"] and not loop.vector_ops["fcvtl"] for loop in dots), dots
    rng = np.random.default_rng(5)
    runs, checks = [], []
    for kind, prim in prims.items():
        for M, frac in ((1, 0.3), (5, 0.6)):
            active = np.flatnonzero(rng.random(N_FF) < frac)
            call = (linear_call(rng, M, d, N_FF, "float16", bias=True) if kind == "linear"
                    else mlp_call(kind, rng, M, d, N_FF, "float16", acts, active))
            runs.append((str(prim.attrs["global_symbol"]), call.args, [len(call.args) - 1]))
            checks.append((kind, M, call))
    for (kind, M, call), (out,) in zip(checks, kernels.run(runs)):
        try:
            call.check(out)
        except AssertionError as err:
            raise AssertionError(f"{kind} M={M}: {err}") from None


def test_arm_kernel_errors_come_back_from_the_emulator():
    require_cross_tools()
    prim = primfunc("linear", D, N_FF, "float32", arm_schedule())
    kernels = cross_kernels([prim])
    x = np.ones((2, D + 1), np.float32)  # wrong inner size
    with pytest.raises(RuntimeError, match="failed under qemu"):
        kernels.run([(str(prim.attrs["global_symbol"]), [x, np.ones((N_FF, D), np.float32),
                                                          np.zeros((2, N_FF), np.float32)], [2])])


def test_compile_for_arm_saves_an_aarch64_library_and_refuses_to_run_here(tmp_path):
    import actsparse
    from actsparse.errors import TargetError

    from .helpers import gated_mlp_graph, mlp_input

    graph, x = gated_mlp_graph(d=24, n=40), mlp_input(d=24, seq=3)
    cm = actsparse.compile(graph, (x,), target="arm", mode="exact")
    assert not cm.runnable and cm.report.blocks[0].mode == "exact"
    with pytest.raises(TargetError, match="built for arm; run it on an aarch64 machine or under qemu"):
        cm(x)
    path = cm.save(tmp_path / "model.actsparse")
    library = next(p for p in path.iterdir() if p.name.startswith("model."))
    if library.suffix == ".so":  # linked by aarch64-linux-gnu-gcc
        header = library.read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    else:  # no cross linker here: the objects, to link on the target
        assert library.name == "model.tar"
    loaded = actsparse.load(path)
    assert not loaded.runnable and loaded.target_info["name"] == "arm"
    with pytest.raises(TargetError, match="built for arm"):
        loaded(x)
    loaded.save(tmp_path / "again.actsparse")  # a loaded cross artifact saves its library unchanged
    assert (tmp_path / "again.actsparse" / library.name).read_bytes() == library.read_bytes()
