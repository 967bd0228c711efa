"""The input-sparse (TEAL / WINA) kernels of every family against the IR semantics (`ir/input_sparse.py`): ARM NEON
under qemu and CUDA under the SIMT emulator (tests/simt.py); x86 is in test_sparsity_methods.py. Rows of input
channels no token keeps hold NaN, so a kernel that read them would fail."""

import numpy as np
import pytest

from actsparse.ir.input_sparse import input_sparse_reference

from .kernel_cases import Call, cross_kernels, run_batch, simt_kernels

tvm = pytest.importorskip("tvm")

CASES = [(64, 53, "product", "silu", "identity"), (37, 70, "gate", "gelu_tanh", "relu")]


def _calls(rng, d, n, criterion, gate_act, up_act) -> list[Call]:
    calls = []
    for m in (1, 3):
        x = rng.standard_normal((m, d)).astype(np.float32)
        wg, wu = (rng.standard_normal((d, n)).astype(np.float32) for _ in range(2))
        wd = rng.standard_normal((n, d)).astype(np.float32)
        x_thr, h_thr = np.full(d, 0.7, np.float32), np.full(n, 0.5, np.float32)
        ref = input_sparse_reference(x, wg, wu, wd, x_thr, h_thr,
                                     {"gate_act": gate_act, "up_act": up_act, "criterion": criterion})
        dead = ~(np.abs(x) > x_thr).any(0)
        assert dead.any()
        wg[dead], wu[dead] = np.nan, np.nan
        calls.append(Call([x, wg, wu, wd, x_thr, h_thr, np.full((m, d), np.nan, np.float32)], ref,
                          np.abs(ref).max(), "float32"))
    return calls


def _jobs(target_name: str):
    from actsparse import targets
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.schedules import schedule_for

    sched = schedule_for(targets.get(target_name))
    rng = np.random.default_rng(0)
    return [(kernel("input", d, n, gate_act=g, up_act=u, criterion=c, dtype="float32", sched=sched),
             _calls(rng, d, n, c, g, u)) for d, n, c, g, u in CASES]


def _check(jobs, outs):
    for (_, calls), results in zip(jobs, outs):
        for call, out in zip(calls, results):
            np.testing.assert_allclose(out, call.ref, rtol=1e-4, atol=1e-4 * float(call.scale))


def test_input_sparse_kernel_on_arm_matches_the_reference():
    jobs = _jobs("arm")
    _check(jobs, run_batch(cross_kernels([p for p, _ in jobs]), jobs))


def test_input_sparse_kernel_on_cuda_matches_the_reference_under_simt():
    jobs = _jobs("cuda")
    _check(jobs, run_batch(simt_kernels([p for p, _ in jobs]), jobs))
