"""Gemma 3n's cut-gate MLP on CUDA without a GPU: the cutoff variant's CUDA kernel
(codegen/kernels/cuda_cutoff_mlp.py: the exact kernel's launches, the gate dots replaced by reading the given
activated gate a) has the exact kernel's design in its generated source (3 launches, full warp masks, w_gate never
read), matches a float64 numpy reference under the SIMT emulator (tests/simt.py) at odd sizes where lanes diverge,
0% / ~5% / 100% active, with NaN in the rows it must not read; so does its dense twin (`cutoff-dense`, every row
read); and a tiny Gemma 3n decoder built for "cuda" runs its cut layer exact and builds its twin."""

import re

import numpy as np
import pytest

from .kernel_cases import Call, cuda_build, require_nvcc, run_batch, simt_kernels
from .test_kernels_cuda import check_jobs, cuda_schedule, kernel_source

tvm = pytest.importorskip("tvm")

D, N_FF = 37, 70  # d: one-element loads, lanes own no column in the 2nd slice; n_ff: no multiple of the 8 warps
DTYPES = ("float32", "float16", "q8_0")
ACTIVE = (0.0, 0.05, 1.0)  # share of (token, neuron) pairs with a != 0


def cutoff_kernel(dtype, d=D, n_ff=N_FF, up_act="identity", name="cutoff"):
    from actsparse.codegen.kernels import kernel

    return kernel(name, d, n_ff, up_act=up_act, dtype=dtype, sched=cuda_schedule())


def up_value(kind, v):
    return np.maximum(v, 0) if kind == "relu" else v


def cutoff_calls(dtype, d=D, n_ff=N_FF, up_act="identity", seed=0, sparse=True):
    """Decode (1 token) and prefill (3 tokens) calls per active share; a is gelu_tanh-like (positive) where active,
    one token's activity independent of the other's (so a flagged neuron may be 0 for some token: lanes of a warp
    and warps of a block diverge). w_gate is all NaN (the kernel must not read it), the up and down rows of neurons no
    token activates are NaN (rows it must not read; `sparse` False: the dense twin reads them, they stay finite).
    Reference in float64 on the weights' stored values."""
    from .kernel_cases import QUANT_DTYPES, kernel_weights

    rng, calls = np.random.default_rng(seed), []
    for frac in ACTIVE:
        for M in (1, 3):
            x = rng.standard_normal((M, d)).astype(np.float32)
            ws = [rng.standard_normal((n_ff, d)).astype(np.float32) for _ in range(3)]
            a = np.where(rng.random((M, n_ff)) < frac, rng.random((M, n_ff)) + 0.05, 0).astype(np.float32)
            if frac == 0.05:
                a[0, 3] = 0.7  # at least one active neuron in the first token
            idle = ~(a != 0).any(0)
            kw, ref_ws = kernel_weights([w if dtype in QUANT_DTYPES else w.astype(dtype) for w in ws], dtype)
            _, wu, wd = (np.asarray(w, np.float64) for w in ref_ws)
            x64, a64 = x.astype(np.float64), a.astype(np.float64)
            u = x64 @ wu.T
            want = (a64 * up_value(up_act, u)) @ wd
            scale = (a64 * (np.abs(x64) @ np.abs(wu).T)) @ np.abs(wd)
            kw = [np.full_like(kw[0], np.nan) if dtype not in QUANT_DTYPES else kw[0], *kw[1:]]
            if dtype not in QUANT_DTYPES and sparse:
                kw[1][idle], kw[2][idle] = np.nan, np.nan
            calls.append(Call([x, *kw, a, np.full((M, d), np.nan, np.float32)], want, scale,
                              dtype if dtype != "q8_0" else "float32"))
    return calls


@pytest.mark.parametrize("dtype", ("float32", "float16"))
def test_cutoff_cuda_kernel_has_the_exact_kernels_design_and_never_reads_the_gate_weights(dtype):
    """Issue 18's rules, read from the source as tests/test_kernels_cuda.py reads them for the exact kernel: 3
    launches (decide + up, down parts, their sum), full warp masks only (no __activemask after a divergent branch),
    the down launch's ballot-compacted list; the first launch reads a and the up rows, never w_gate, and stages x
    only for the up rows (after the block-wide "some warp kept a neuron" vote)."""
    from actsparse.codegen.kernels.scratch import scratch_count

    prim = cutoff_kernel(dtype, d=64, n_ff=53)
    _, source = cuda_build([prim])
    code = kernel_source(source, prim)
    launches = code.split("__global__")[1:]
    assert len(launches) == 3 and scratch_count(prim) == 3
    assert [p.name for p in prim.params][4:] == ["a", "out", "h", "flag", "part"]
    assert "__activemask" not in code
    assert all(call.startswith("(uint)4294967295") for call in re.findall(r"__shfl_\w+_sync\(([^,]+)", code))
    first = launches[0]
    assert "a_ptr[" in first and "w_up_ptr" in first and "w_gate_ptr[" not in code and "w_gate_ptr +" not in code
    assert "__syncthreads_or" in first  # up rows only where some warp of the block kept a neuron
    body = first.split("{", 1)[1]
    assert body.index("__syncthreads_or") < body.index("x_ptr")  # x read (or staged) for the up rows only
    assert "__ballot_sync((uint)4294967295" in launches[1] and "__popc(" in launches[1]
    vector_load = "*(float4*)(w" if dtype == "float32" else "*(uint4*)(w"
    assert vector_load in code  # 16 bytes per lane where d allows


def test_the_dense_twin_reads_every_row_in_the_dense_kernels_launches():
    """The twin (`actsparse bench`'s reference) is the dense kernel given a: 3 launches, no flags (no scratch for
    them, no ballot over flags in the down launch), w_gate never read, full warp masks."""
    from actsparse.codegen.kernels.scratch import scratch_count

    prim = cutoff_kernel("float16", d=64, n_ff=53, name="cutoff-dense")
    _, source = cuda_build([prim])
    code = kernel_source(source, prim)
    assert code.count("__global__") == 3 and scratch_count(prim) == 2
    assert [p.name for p in prim.params][4:] == ["a", "out", "h", "part"]
    assert "w_gate_ptr[" not in code and "w_gate_ptr +" not in code and "flag" not in code
    assert "__activemask" not in code and "a_ptr[" in code.split("__global__")[1]
    assert all(call.startswith("(uint)4294967295") for call in re.findall(r"__shfl_\w+_sync\(([^,]+)", code))


def test_cutoff_cuda_kernel_matches_numpy_under_simt_emulation():
    """fp32, fp16 and q8_0 weights at d = 37, n_ff = 70; 1 and 3 tokens at 0%, ~5% and 100% active; NaN in w_gate and
    in the idle neurons' up and down rows; a relu up activation once. Within the float32 summation bound of the
    float64 reference (fp16: x is staged as fp16, so that kernel's tolerance is the fp16 one). The dense twin
    (`cutoff-dense`) likewise, w_gate still NaN."""
    jobs = [(cutoff_kernel(dtype), cutoff_calls(dtype)) for dtype in DTYPES]
    jobs.append((cutoff_kernel("float32", up_act="relu"), cutoff_calls("float32", up_act="relu", seed=1)))
    jobs += [(cutoff_kernel(dtype, name="cutoff-dense"), cutoff_calls(dtype, seed=2, sparse=False))
             for dtype in ("float32", "float16")]
    labels = [*DTYPES, "relu up", "twin float32", "twin float16"]
    check_jobs(labels, jobs, run_batch(simt_kernels([p for p, _ in jobs]), jobs))


def test_a_nan_gate_value_reaches_the_output_as_torch_gives_it():
    """a = NaN (a NaN input upstream) lists the neuron: its token's output is NaN, the other token's is not."""
    x = np.ones((2, D), np.float32)
    ws = [np.ones((N_FF, D), np.float32) for _ in range(3)]
    a = np.zeros((2, N_FF), np.float32)
    a[0, 5] = np.nan
    prim = cutoff_kernel("float32")
    (outs,) = run_batch(simt_kernels([prim]), [(prim, [Call([x, *ws, a, np.full((2, D), 7, np.float32)],
                                                            np.zeros((2, D)), np.zeros((2, D)), "float32")])])
    assert np.isnan(outs[0][0]).all() and np.array_equal(outs[0][1], np.zeros(D, np.float32))


@pytest.mark.slow
def test_tiny_gemma3n_decoder_built_for_cuda_runs_its_cut_layer_exact():
    """Layer 0 cut at 95%, layer 1 a plain GeGLU: the KV-cache decoder built for "cuda" (nvcc, no GPU) runs the cut
    layer's cutoff kernel inside the one-token step's CUDA-graph captures, its report row says exact, no block was
    kept dense for want of a kernel; its dense twin (`actsparse bench`'s reference, runtime/bench.dense_twin) lowers
    for cuda to the twin kernel (lowered only: that kernel's nvcc build and its numbers are the tests above)."""
    import actsparse
    from actsparse.codegen.build import relax_module
    from actsparse.codegen.step_launches import vm_functions
    from actsparse.passes import run_pipeline
    from actsparse.passes.densify import Densify
    from actsparse.runtime.bench import artifact_target

    from .test_cutoff_gate import _gemma3n

    require_nvcc()
    lm = actsparse.compile(_gemma3n([0.95, 0.0]), target="cuda", mode="auto", max_seq=16)
    assert lm.report.pass_stats["sparsify-exact"] == {"geglu-cutoff": 1, "kept-dense": 1}  # layer 1: plain GeGLU
    calls = vm_functions(lm.module.executable.as_text())
    captured = [c for name, cs in calls.items() if name.startswith("step_cuda_graph_capture") for c in cs]
    assert sum(c.startswith("actsparse_cuda_gmlp_cutoff_") for c in captured) == 1, captured
    rows = [b for b in lm.report.blocks if b.pattern == "geglu-cutoff"]
    assert [(b.location, b.mode) for b in rows] == [("model.layers.0.mlp", "exact")]
    assert not any("no cuda kernel" in (b.reason or "") for b in lm.report.blocks)
    twin, _, _ = relax_module(run_pipeline(lm.module.graph, [Densify()]).graph, artifact_target(lm.module))
    kernels = [gv.name_hint for gv in twin.functions]
    assert any(k.startswith("actsparse_cuda_gmlp_cutoffdense_") for k in kernels), kernels
    assert not any(k.startswith("actsparse_cuda_gmlp_cutoff_") for k in kernels)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ("cutoff", "cutoff-dense"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_cutoff_cuda_kernel_matches_numpy_on_the_gpu(dtype, name):
    from .test_kernels_cuda import run_gpu

    prim = cutoff_kernel(dtype, name=name)
    calls = cutoff_calls(dtype, sparse=name == "cutoff")
    for call, out in zip(calls, run_gpu(prim, calls)):
        call.check(out)
