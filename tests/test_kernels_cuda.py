"""CUDA: the GPU kernels generate the intended code and nvcc compiles it to PTX (no GPU needed); their numerics match
numpy under the SIMT emulator (tests/simt.py: TVM's host code + the generated CUDA source run as CPU threads);
`compile(..., target="cuda")` builds a whole model (our kernels + dlight-scheduled TVM ops) and saves it; numerics
on a real GPU run only where one is present (`@pytest.mark.gpu`, skipped otherwise)."""

import re

import numpy as np
import pytest

from .kernel_cases import (
    DTYPES,
    KINDS,
    cuda_build,
    linear_call,
    mlp_call,
    primfunc,
    require_nvcc,
    run_batch,
    simt_kernels,
)

tvm = pytest.importorskip("tvm")

D, N_FF = 64, 53  # d a multiple of the 16-byte vectors, n_ff not of the 8 warps per block
ODD_D = 37  # no vector divides it: one-element loads, still one warp per row


def cuda_schedule():
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    return schedule_for(targets.get("cuda"))


def kernel_source(source: str, prim) -> str:
    """The CUDA source of one PrimFunc's launches (each `<symbol>_kernel[_i](...) {...}`)."""
    name = str(prim.attrs["global_symbol"])
    bodies = re.findall(rf"__global__ void __launch_bounds__\(\d+\) {name}_kernel(?:_\d+)?\([^)]*\) {{.*?\n}}\n",
                        source, re.S)
    assert bodies, f"no launches of {name} in the source"
    return "\n".join(bodies)


@pytest.fixture(scope="module")
def built():
    """Every kernel x dtype at (D, N_FF), built for CUDA in one module (one nvcc run)."""
    sched = cuda_schedule()
    prims = {(kind, dtype): primfunc(kind, D, N_FF, dtype, sched, ("relu", "identity", 0.0), bias=True)
             for kind in (*KINDS, "scored") for dtype in DTYPES}
    module, source = cuda_build(prims.values())
    return prims, module, source


def test_cuda_schedule_comes_from_the_target_data():
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    cuda = targets.get("cuda")
    sched = schedule_for(cuda)
    assert (sched.warp, sched.threads, sched.vector_bytes) == (cuda.warp_size, cuda.threads, cuda.vector_bits // 8)
    assert sched.multiprocessors == cuda.multiprocessors and sched.warps == cuda.threads // cuda.warp_size


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_kernel_source_has_warp_reductions_and_16_byte_loads(built, kind, dtype):
    prims, _, source = built
    code = kernel_source(source, prims[kind, dtype])
    # the design: gate/up, down parts, their sum (no single-block compaction kernel); at most 3 per MLP
    launches = {"exact": 3, "indexed": 3, "dense": 3, "linear": 1, "threshold": 3}[kind]
    assert code.count("__global__") == launches
    assert "__shfl_xor_sync" in code  # warp-shuffle butterfly of the row dot products
    # full warp masks only: __activemask() after a branch may name a subset of the lanes (undefined shuffles)
    assert "__activemask" not in code
    assert all(call.startswith("(uint)4294967295") for call in re.findall(r"__shfl_\w+_sync\(([^,]+)", code))
    vector_load = "*(float4*)(w" if dtype == "float32" else "*(uint4*)(w"
    assert vector_load in code  # 16 bytes per lane: a warp reads 512 contiguous bytes
    if kind != "linear":
        assert "__shared__" in code and "__syncthreads()" in code  # the down projection's block reduction
    if kind != "linear":  # the down projection's per-warp list: ballot, then the rows' loads all issued first
        assert "__ballot_sync((uint)4294967295" in code


MLP_KINDS = ("exact", "indexed", "dense", "threshold", "scored")  # scored: predictor mode's MLP (after its score)


def test_cuda_mlp_kernels_take_their_scratch_as_parameters_and_allocate_nothing(built):
    """The scratch between an MLP's launches (h, flags, split-K parts) are the parameters after `out`: the caller
    allocates them (Relax's memory planning, lifted into a CUDA graph's one-time allocation), and the kernels' host
    code asks TVM's workspace pool for nothing (a cudaMalloc inside a graph capture)."""
    from actsparse.codegen.kernels.scratch import scratch_count

    prims, module, _ = built
    counts = {kind: scratch_count(prims[kind, "float16"]) for kind in (*MLP_KINDS, "linear")}
    assert counts == {"exact": 3, "indexed": 2, "dense": 2, "threshold": 3, "scored": 3, "linear": 0}
    assert [p.name for p in prims["exact", "float16"].params][-4:] == ["out", "h", "flag", "part"]
    host = module.mod.inspect_source("ll")
    assert all(f"@{prim.attrs['global_symbol']}" in host for prim in prims.values())  # their host functions
    assert "TVMBackendAllocWorkspace" not in host


def test_scratch_shapes_take_the_token_count_and_list_width_from_the_arguments():
    from actsparse.codegen.kernels.cuda_blocks import down_splits
    from actsparse.codegen.kernels.scratch import scratch_shapes

    sched = cuda_schedule()
    prim = primfunc("indexed", D, N_FF, "float16", sched)
    shapes = [(3, D), *[(N_FF, D)] * 3, (3, 7), (3,), (3, D)]  # x, weights, idx [M, K], count, out
    assert scratch_shapes(prim, shapes) == [([3, 7], "float32"), ([down_splits(D, "float16", sched, N_FF), 3, D],
                                                                  "float32")]
    with pytest.raises(ValueError, match="6 argument shapes for the 7 non-scratch parameters"):
        scratch_shapes(prim, shapes[:-1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", MLP_KINDS)
def test_cuda_down_projection_lists_rows_once_per_warp_and_issues_them_unrolled(built, kind, dtype):
    """The issue's design, read from the generated source: 3 launches per MLP (gate/up, down parts, their sum); the
    down launch reads the list (index or flag) once per position, one lane each, compacts it by ballot into the
    warp's shared list and takes the row numbers from there; the `rows` row loads of a group (16 bytes per lane)
    are all issued before the first FMA, which go into `accumulators` independent sums."""
    from actsparse.codegen.kernels.cuda_blocks import vector_elems

    prims, _, source = built
    sched = cuda_schedule()
    launches = kernel_source(source, prims[kind, dtype]).split("__global__")[1:]
    assert len(launches) == 3
    down = launches[1]
    assert "__ballot_sync((uint)4294967295" in down and "__popc(" in down
    vec = "uint4" if dtype == "float16" else "float4"
    loads = [m.start() for m in re.finditer(rf"= \*\({vec}\*\)\(w_down_t_ptr \+ \(\(srow_ptr\[", down)]
    assert len(loads) == sched.rows == down.count("w_down_t_ptr +")  # every row load: unrolled, row from the list
    assert loads[-1] < down.index("hv_ptr[0], hv_ptr[0]")  # the group's first FMA after its last load
    if kind == "indexed":  # each index loaded by one lane per round position (`scan` of them), into the list
        reads = [line.strip() for line in down.splitlines() if "idx_ptr[" in line]
        assert len(reads) == sched.scan and all(line.startswith("srow_ptr[") for line in reads)
    V = vector_elems(D, dtype, sched)
    sums = set(re.findall(r"\*\(float4\*\)\(acc_ptr \+ (\d+)\) = ", down))
    assert len(sums) == min(sched.accumulators, sched.rows) * V // 4  # float4 slots of the independent sums


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kernels_compile_to_ptx_with_nvcc(built, dtype):
    from actsparse.codegen.cuda_support import compile_ptx

    prims, _, source = built
    ptx = compile_ptx(source, "sm_80")
    for kind in KINDS:
        name = str(prims[kind, dtype].attrs["global_symbol"])
        assert re.search(rf"\.entry {name}_kernel\b", ptx)
    assert "shfl.sync.bfly.b32" in ptx and "bar.sync" in ptx
    assert re.search(r"ld\.global(\.nc)?\.v4\.(f32|u32|b32)", ptx)


def fixed_calls(kind, d, n_ff, dtype, acts, seed=1):
    """Decode and prefill calls at 90%, 50%, 100% and 0% sparsity (per-token shuffled sets for indexed)."""
    rng = np.random.default_rng(seed)
    calls = []
    for M, frac in ((1, 0.1), (4, 0.5), (2, 0.0), (3, 1.0)):
        active = np.flatnonzero(rng.random(n_ff) < frac)
        if kind == "linear":
            calls.append(linear_call(rng, M, d, n_ff, dtype, bias=True))
        else:
            sets = [rng.permutation(active).astype(np.int32) for _ in range(M)] if kind == "indexed" else None
            calls.append(mlp_call(kind, rng, M, d, n_ff, dtype, acts, active, sets))
    return calls


ACTS = {"exact": ("relu", "relu", 0.0), "indexed": ("silu", "identity", 0.0), "dense": ("gelu", "identity", 0.0),
        "linear": ("relu", "identity", 0.0), "threshold": ("silu", "identity", 0.5, "product")}


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kernels_match_numpy_under_simt_emulation(dtype):
    sched = cuda_schedule()
    prims = {kind: primfunc(kind, D, N_FF, dtype, sched, ACTS[kind], bias=True) for kind in KINDS}
    jobs = [(prims[kind], fixed_calls(kind, D, N_FF, dtype, ACTS[kind])) for kind in KINDS]
    check_jobs([f"{kind} {dtype}" for kind in KINDS], jobs, run_batch(simt_kernels(prims.values()), jobs))


def check_jobs(labels, jobs, outs):
    """Every call of every job checked; a failure names its job and call."""
    for label, (_, calls), got in zip(labels, jobs, outs):
        for i, (call, out) in enumerate(zip(calls, got)):
            try:
                call.check(out)
            except AssertionError as err:
                raise AssertionError(f"{label} call {i}: {err}") from None


def test_cuda_down_projection_matches_numpy_over_many_rounds_partial_groups_and_idle_lanes():
    """A schedule that makes every path of the down projection run: one multiprocessor (no split-K), 1-position
    scan rounds (40 positions per warp: 2 rounds), 3-row groups (partial last groups) and d = 37 (one-element
    loads; in the second 32-column slice 27 lanes own no column but still take part in every ballot); predictor
    mode's scored kernel with it."""
    from dataclasses import replace

    sched = replace(cuda_schedule(), multiprocessors=1, blocks_per_sm=1, rows=3, accumulators=2, scan=1)
    kinds = ("exact", "indexed", "threshold")
    jobs = []
    for kind in kinds:
        prim = primfunc(kind, ODD_D, 320, "float16", sched, ACTS[kind])
        jobs.append((prim, fixed_calls(kind, ODD_D, 320, "float16", ACTS[kind], seed=3)[:2]))
    jobs.append((primfunc("scored", ODD_D, 320, "float16", sched, ACTS["indexed"]), scored_calls(ODD_D, 320)))
    outs = run_batch(simt_kernels([p for p, _ in jobs]), jobs)
    for (_, calls), got in zip(jobs, outs):
        for call, out in zip(calls, got):
            call.check(out)


def x16_calls(kind, d, n_ff, acts, monkeypatch, seed=5):
    """fp16-weight calls whose reference takes x rounded to fp16 (the kernels stage x as fp16 in shared memory),
    checked at float32's tolerance: the only rounding besides fp32 summation is x's, once."""
    from . import kernel_cases
    from .kernel_cases import Call

    monkeypatch.setattr(kernel_cases, "x_seen", lambda x, rounded: x.astype(np.float16).astype(np.float32))
    rng, calls = np.random.default_rng(seed), []
    for M, frac in ((1, 0.1), (3, 0.5)):
        active = np.flatnonzero(rng.random(n_ff) < frac)
        if kind == "linear":
            calls.append(kernel_cases.linear_call(rng, M, d, n_ff, "float16", bias=True, x8=True))
        elif kind == "scored":
            calls.append(scored_calls(d, n_ff, seed, x16=True)[M > 1])
        else:
            sets = [rng.permutation(active).astype(np.int32) for _ in range(M)] if kind == "indexed" else None
            calls.append(kernel_cases.mlp_call(kind, rng, M, d, n_ff, "float16", acts, active, sets, x8=True))
    return [Call(c.args, c.ref, c.scale, "float32", c.slack) for c in calls]


X16 = {"exact": 300, "threshold": 37, "scored": 300, "indexed": 37, "dense": 300, "linear": 37}  # d: 2 staging
# rounds of 256 threads with 4-half loads, or one-element loads where lanes and warps diverge; n_ff 53 (odd)
X16_ACTS = {**ACTS, "threshold": ("silu", "identity", 0.3, "gate"), "scored": ACTS["indexed"]}


def test_fp16_kernels_stage_x_once_per_block_as_fp16_and_sum_in_fp32(monkeypatch):
    """Gate/up (every mode, incl. threshold and predictor) and linear with fp16 weights: x[m] is copied into the
    block's shared memory as fp16 between barriers every thread reaches, the warps' dots read it there (16-byte
    lanes where d allows), convert both factors to fp32 and accumulate in fp32: equal to the fp16-rounded-x
    reference within fp32 summation error, at odd sizes where lanes and warps diverge."""
    sched = cuda_schedule()
    prims = {kind: primfunc(kind, d, 53, "float16", sched, X16_ACTS[kind], bias=True) for kind, d in X16.items()}
    _, source = cuda_build(prims.values())
    for kind, prim in prims.items():
        first = kernel_source(source, prim).split("__global__")[1]  # the gate/up (or linear) launch
        assert re.search(r"__shared__ alignas\(\d+\) half xs\w*\[" + str(X16[kind]) + r"\]", first), kind
        assert re.search(r"xs\w*\[[^]]+\] = \(\(half\)x_ptr\[", first), kind  # staged: x rounded to fp16
        assert len(re.findall(r"\bx_ptr\[", first)) == first.count("(half)x_ptr["), kind  # no other read of x
        assert "__hfma2" not in first and "__hmul" not in first, kind  # products in fp32, not half
        if X16[kind] % 8 == 0:
            assert "*(uint4*)(xs" in first, kind
    assert "__syncthreads_or" in kernel_source(source, prims["exact"])  # up rows only where some warp kept one
    jobs = [(prims[kind], x16_calls(kind, d, 53, X16_ACTS[kind], monkeypatch)) for kind, d in X16.items()]
    check_jobs(list(X16), jobs, run_batch(simt_kernels(prims.values()), jobs))


def scored_calls(d, n_ff, seed=4, x16=False):
    """Predictor mode's CUDA kernel: token m computes the neurons whose score beats the cutoff (a NaN score never).
    x16: the reference takes x rounded to fp16."""
    from .kernel_cases import Call, mlp_inputs, mlp_reference

    rng, calls = np.random.default_rng(seed), []
    for M, frac in ((1, 0.1), (3, 0.5)):
        x, ws = mlp_inputs(rng, M, d, n_ff, "float16", np.arange(n_ff), "silu")
        scores = rng.random((M, n_ff)).astype(np.float32)
        scores[0, :3] = np.nan
        cutoff = np.array([1 - frac], np.float32)
        xr = x.astype(np.float16).astype(np.float32) if x16 else x
        ref, scale = mlp_reference(xr, *ws, "silu", "identity", 0.0, mask=scores > cutoff)
        calls.append(Call([x, *ws, scores, cutoff, np.full((M, d), np.nan, np.float32)], ref, scale, "float16"))
    return calls


def test_simt_emulation_catches_a_wrong_kernel():
    """The emulator is a real check: a kernel whose warp reduction skips a round gives wrong sums."""
    from . import simt

    if simt.missing():
        pytest.skip(f"the CUDA emulator needs {simt.missing()}")
    prim = primfunc("linear", D, N_FF, "float32", cuda_schedule(), bias=True)
    broken = prim.with_attr("global_symbol", "actsparse_test_broken_linear")
    text = broken.script().replace("32 >> r + 1,", "32 >> r + 2,")  # skips the 16-lane round
    assert text != broken.script()
    calls = fixed_calls("linear", D, N_FF, "float32", ACTS["linear"])
    broken = tvm.script.from_source(text)
    (outs,) = run_batch(simt_kernels([broken]), [(broken, calls)])
    with pytest.raises(AssertionError):
        calls[0].check(outs[0])


def test_cuda_kernels_for_odd_sizes_use_narrow_loads_and_still_compile():
    sched = cuda_schedule()
    prims = [primfunc(kind, ODD_D, 1, "float16", sched, ("fatrelu", "relu", 0.5)) for kind in ("exact", "dense")]
    _, source = cuda_build(prims)
    code = kernel_source(source, prims[0])
    assert "uint4" not in code and "float4" not in code.split("{", 1)[1].replace("make_float4", "")


def test_cuda_kernels_refuse_a_cpu_schedule():
    from actsparse.codegen.kernels import cuda_mlp
    from actsparse.codegen.kernels.schedule import CpuSchedule

    with pytest.raises(TypeError, match="GpuSchedule"):
        cuda_mlp.sparse_gated_mlp(D, N_FF, sched=CpuSchedule(lanes=8, threads=2))


def test_compile_for_cuda_builds_the_whole_model_without_a_gpu(tmp_path):
    import actsparse
    from actsparse.codegen.cuda_support import cuda_source
    from actsparse.errors import TargetError

    from .helpers import gated_mlp_graph, mlp_input

    require_nvcc()
    graph, x = gated_mlp_graph(d=32, n=48), mlp_input(d=32, seq=3)
    cm = actsparse.compile(graph, (x,), target="cuda", mode="exact")
    source = cuda_source(cm.executable.mod)
    assert "actsparse_cuda_gmlp_exact_d32_f48" in source
    path = cm.save(tmp_path / "model.actsparse")
    assert (path / "model.so").exists()
    if not cm.runnable:
        with pytest.raises(TargetError, match="built for cuda; run it on a machine with an NVIDIA GPU"):
            cm(x)
        assert not actsparse.load(path).runnable


def test_compile_for_cuda_in_threshold_mode_uses_the_cuda_threshold_kernel():
    """Threshold mode picks the kernel by the target's schedule, like every other mode (no CPU kernel on CUDA)."""
    import actsparse
    from actsparse.codegen.cuda_support import cuda_source

    from .helpers import gated_mlp_graph, mlp_input

    require_nvcc()
    graph = gated_mlp_graph(d=32, n=48, act="silu")
    calibration = [(mlp_input(d=32, seq=4, seed=s),) for s in range(16)]
    cm = actsparse.compile(graph, calibration[0], target="cuda", mode="threshold", calibration=calibration,
                           sparsity=0.7, method="cats")  # cats: the per-neuron threshold kernel
    assert cm.report.pass_stats["sparsify-threshold"] == {"swiglu": 1}
    source = cuda_source(cm.executable.mod)
    launches = set(re.findall(r"__global__ void __launch_bounds__\(\d+\) (actsparse_\w+?)_kernel", source))
    assert any(name.startswith("actsparse_cuda_gmlp_thrgate_d32_f48_silu") for name in launches), launches
    assert "erff" not in source and "__ballot_sync" in source  # silu gate (no erf), the flag mask's ballot


# --- numerics on a real GPU: only where one is present ---------------------------------------------------
def run_gpu(prim, calls):
    from actsparse import targets
    from actsparse.codegen.kernels.common import build_standalone
    from actsparse.codegen.kernels.scratch import scratch_arrays

    module = build_standalone(prim, targets.get("cuda").tvm_target())
    dev = tvm.cuda(0)
    outs = []
    for call in calls:
        tensors = [tvm.runtime.tensor(np.ascontiguousarray(a), device=dev) for a in call.args]
        module(*tensors, *(tvm.runtime.empty(a.shape, str(a.dtype), dev) for a in scratch_arrays(prim, call.args)))
        outs.append(tensors[-1].numpy())
    return outs


@pytest.mark.gpu
@pytest.mark.parametrize("d,n_ff", [(D, N_FF), (ODD_D, 70), (4096, 1024)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_kernel_matches_numpy_on_the_gpu(kind, dtype, d, n_ff):
    sched = cuda_schedule()
    acts = ("relu", "identity", 0.0) if kind == "exact" else ("silu", "identity", 0.0)
    prim = primfunc(kind, d, n_ff, dtype, sched, acts, bias=True)
    calls = fixed_calls(kind, d, n_ff, dtype, acts)
    for call, out in zip(calls, run_gpu(prim, calls)):
        call.check(out)


@pytest.mark.gpu
def test_compiled_model_on_the_gpu_matches_the_cpu():
    import actsparse

    from .helpers import gated_mlp_graph, mlp_input

    graph, x = gated_mlp_graph(d=64, n=256), mlp_input(d=64, seq=5)
    gpu = actsparse.compile(graph, (x,), target="cuda", mode="exact")
    cpu = actsparse.compile(graph, (x,), target="x86", mode="exact")
    np.testing.assert_allclose(gpu(x), cpu(x), rtol=1e-4, atol=1e-5)


def test_cuda_input_sparse_kernel_sums_gate_and_up_parts_in_the_neuron_launch():
    """Input (TEAL) mode: channel flags, gate parts, up parts, [gate and up sums + h mask + neuron flags], down parts,
    their sum — 6 launches (8 when gate and up had a sum launch each); numerics: test_kernels_input.py (SIMT)."""
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.kernels.scratch import scratch_count

    prim = kernel("input", D, N_FF, gate_act="silu", up_act="identity", criterion="product", dtype="float16",
                  sched=cuda_schedule())
    _, source = cuda_build([prim])
    launches = kernel_source(source, prim).split("__global__")[1:]
    assert len(launches) == 6 and scratch_count(prim) == 8
    assert [p.name for p in prim.params][-8:] == ["fx", "xs", "pin", "pin_u", "g", "u", "fh", "pout"]
    neuron = launches[3]  # reads both parts' buffers and writes g, u
    assert all(re.search(rf"\b{name}_ptr\[", neuron) for name in ("pin", "pin_u", "g", "u"))
