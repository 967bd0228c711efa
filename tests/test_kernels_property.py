"""Property-based kernel tests: every kernel (exact, indexed, dense, linear, threshold) x target x dtype
(fp32, fp16 weights).

Hypothesis draws the sizes (d, n_ff in 1..70: mostly not multiples of any vector width or tile), the
activations, then a few calls for that build: tokens M in 1..5 and the active-neuron sets (empty, full, random
at any density, clustered runs; per token and in any order for the indexed kernel), i.e. sparsity from 0 to
100%. Every output is compared with numpy (float64 on the weights as the kernel sees them) within the dtype's
tolerance: fp32 rtol 1e-4, fp16 weights rtol 1e-3.

- x86: built for this machine and run natively.
- arm: built for aarch64 NEON, linked with a C harness and run under qemu-aarch64, all calls of an example in
  one emulator run (skipped with the reason when the cross tools cannot be installed).
- cuda: every kernel of a dtype built by TVM + nvcc into one module per example (so: compiles for any size),
  then run by the SIMT emulator (tests/simt.py: the generated CUDA source as threads on the CPU, with TVM's own
  host code) and compared with numpy; without a host C++ compiler or the CUDA headers, compile-only.

Kernel builds dominate the time, so each example is one build (cached for the session) shared by several calls.
The `ci` profile runs max_examples // 4 examples per CPU property (3) and // 6 per CUDA one (2);
ACTSPARSE_HYPOTHESIS=thorough runs 75 and 50.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .kernel_cases import (
    DTYPES,
    KINDS,
    cuda_build,
    dims,
    examples,
    linear_call,
    mlp_call,
    neuron_sets,
    primfunc,
    run_batch,
    run_cross,
    run_native,
    simt_kernels,
    tokens,
)

pytest.importorskip("tvm")

EXACT_ACTS = st.tuples(st.sampled_from(["relu", "fatrelu", "relu2", "relu6"]),
                       st.sampled_from(["identity", "relu", "unit"]),
                       st.sampled_from([0.0, 0.5, 2.0]))
ANY_ACTS = st.tuples(st.sampled_from(["relu", "fatrelu", "silu", "gelu", "gelu_tanh", "identity"]),
                     st.sampled_from(["identity", "relu", "unit"]), st.sampled_from([0.0, 1.0]))
THRESHOLD_ACTS = st.tuples(st.sampled_from(["relu", "fatrelu", "silu", "gelu", "gelu_tanh", "identity"]),
                           st.sampled_from(["identity", "relu"]), st.sampled_from([0.0, 0.5, 2.0]),
                           st.sampled_from(["gate", "product"]))
PROPERTY = settings(max_examples=examples(4), suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.function_scoped_fixture])


@st.composite
def builds(draw, kind):
    """(d, n_ff, activations, bias): one kernel build."""
    d, n_ff = draw(dims), draw(dims)
    acts = draw({"exact": EXACT_ACTS, "threshold": THRESHOLD_ACTS}.get(kind, ANY_ACTS))
    if acts[0] != "fatrelu" and kind != "threshold":  # only fatrelu and threshold kernels read the threshold
        acts = (acts[0], acts[1], 0.0)
    return d, n_ff, acts, draw(st.booleans()) if kind == "linear" else False


@st.composite
def calls(draw, kind, d, n_ff, dtype, acts, bias, max_calls=3):
    out = []
    for _ in range(draw(st.integers(1, max_calls))):
        M = draw(tokens)
        rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
        if kind == "linear":
            out.append(linear_call(rng, M, d, n_ff, dtype, bias))
            continue
        active = draw(neuron_sets(n_ff))
        token_sets = [draw(neuron_sets(n_ff, shuffle=True)) for _ in range(M)] if kind == "indexed" else None
        out.append(mlp_call(kind, rng, M, d, n_ff, dtype, acts, active, token_sets))
    return out


def check_all(cases, outs):
    for i, (case, out) in enumerate(zip(cases, outs)):
        try:
            case.check(out)
        except AssertionError as err:
            raise AssertionError(f"call {i} (M={case.args[0].shape[0]}): {err}") from None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@PROPERTY
@given(data=st.data())
def test_x86_kernel_matches_numpy(kind, dtype, data):
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    d, n_ff, acts, bias = data.draw(builds(kind), label="build")
    prim = primfunc(kind, d, n_ff, dtype, schedule_for(targets.get("x86")), acts, bias)
    cases = data.draw(calls(kind, d, n_ff, dtype, acts, bias), label="calls")
    check_all(cases, run_native(prim, cases))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@PROPERTY
@given(data=st.data())
def test_arm_kernel_matches_numpy_under_qemu(kind, dtype, data):
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    from .kernel_cases import require_cross_tools

    require_cross_tools()
    d, n_ff, acts, bias = data.draw(builds(kind), label="build")
    prim = primfunc(kind, d, n_ff, dtype, schedule_for(targets.get("arm")), acts, bias)
    cases = data.draw(calls(kind, d, n_ff, dtype, acts, bias, max_calls=4), label="calls")
    check_all(cases, run_cross(prim, cases))


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=examples(6), suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_cuda_kernels_compile_and_match_numpy_under_emulation(dtype, data):
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    from . import simt

    d, n_ff = data.draw(dims, label="d"), data.draw(dims, label="n_ff")
    acts = {"exact": data.draw(EXACT_ACTS, label="exact acts"), "indexed": data.draw(ANY_ACTS, label="indexed acts"),
            "dense": data.draw(ANY_ACTS, label="dense acts"), "linear": ("relu", "identity", 0.0),
            "threshold": data.draw(THRESHOLD_ACTS, label="threshold acts")}
    acts = {k: a if a[0] == "fatrelu" or k == "threshold" else (a[0], a[1], 0.0) for k, a in acts.items()}
    bias = data.draw(st.booleans(), label="linear bias")
    sched = schedule_for(targets.get("cuda"))
    prims = {kind: primfunc(kind, d, n_ff, dtype, sched, acts[kind], bias) for kind in KINDS}
    if simt.missing():  # nvcc still checks the generated source; the numeric check needs the emulator: a skip
        _, source = cuda_build(prims.values())
        for prim in prims.values():
            assert f"{prim.attrs['global_symbol']}_kernel(" in source
        pytest.skip(f"the CUDA emulator needs {simt.missing()} (compiled with nvcc only)")
    kernels = simt_kernels(prims.values())
    jobs = [(prims[kind], data.draw(calls(kind, d, n_ff, dtype, acts[kind], bias, max_calls=2), label=kind))
            for kind in KINDS]
    for (_, cases), outs in zip(jobs, run_batch(kernels, jobs)):
        check_all(cases, outs)
    for prim in prims.values():
        assert f"{prim.attrs['global_symbol']}_kernel(" in kernels.source


@pytest.mark.parametrize("target", ["x86", "arm", "cuda"])
def test_relu2_relu6_and_unit_up_exact_kernels_match_numpy_on_every_target(target):
    """The exactly-zero-below gates found by activation analysis (relu², ReLU6) and a non-gated MLP's `unit` up
    factor (no kernel reads up rows for it), fixed cases per target family: x86 natively, arm under qemu, cuda
    under the SIMT emulator (compile-only without it)."""
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    from . import simt
    from .kernel_cases import require_cross_tools

    if target == "arm":
        require_cross_tools()
    d, n_ff, dtype = 19, 37, "float32"
    sched = schedule_for(targets.get(target))
    acts = [("relu2", "identity"), ("relu6", "relu"), ("relu", "unit")]  # unit: a non-gated MLP, no up rows read
    prims = [primfunc("exact", d, n_ff, dtype, sched, (act, up, 0.0)) for act, up in acts]
    rng = np.random.default_rng(3)
    jobs = [(prim, [mlp_call("exact", rng, M, d, n_ff, dtype, (act, up, 0.0), active)
                    for M, active in ((1, np.arange(0, n_ff, 3)), (3, np.arange(5)), (2, np.arange(0)))])
            for prim, (act, up) in zip(prims, acts)]
    if target == "x86":
        outs = [run_native(prim, cases) for prim, cases in jobs]
    elif target == "arm":
        outs = [run_cross(prim, cases) for prim, cases in jobs]
    elif simt.missing():
        _, source = cuda_build(prims)
        assert all(f"{p.attrs['global_symbol']}_kernel(" in source for p in prims)
        pytest.skip(f"CUDA kernels compiled only: {simt.missing()}")
    else:
        outs = run_batch(simt_kernels(prims), jobs)
    for (_, cases), out in zip(jobs, outs):
        check_all(cases, out)
