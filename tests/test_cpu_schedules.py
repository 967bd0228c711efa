"""The CPU schedules of what TVM legalizes (codegen/cpu_matmul.py, codegen/cpu_fused.py): a matmul of two
activations (a hybrid prefill's chunked scan) is scheduled inside the CPU pipeline and still computes numpy's matmul,
for static and symbolic rows, a batch, a broadcast batch, and dims that no block divides; a fused chain of
elementwise ops (a segment sum's mask, exp and transposes) has its intermediates inlined and still computes numpy's
result."""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

N = "n"  # a symbolic dim (a prompt's tokens)
CASES = [  # (A's shape, B's shape, the value of n)
    ((2, N, 8), (2, 8, 16), 5),
    ((6, 16), (16, 32), 0),
    ((1, 3, 4, 8), (2, 1, 8, 5), 0),  # broadcast batch, 5 columns: no vector block divides them
]


def _matmul_module(shape_a, shape_b):
    from tvm import relax

    n = tvm.tirx.Var(N, "int64")
    bb = relax.BlockBuilder()
    a, b = (relax.Var(name, relax.TensorType([n if d == N else d for d in shape], "float32"))
            for name, shape in (("a", shape_a), ("b", shape_b)))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(a, b))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("shape_a, shape_b, n", CASES)
def test_a_legalized_matmul_is_scheduled_and_equals_numpy(shape_a, shape_b, n):
    from tvm import relax

    from actsparse.codegen.build import _cpu_pipeline
    from actsparse.codegen.cpu_matmul import schedule_legalized_matmuls
    from actsparse.targets.x86 import host

    target = host()
    mod = _matmul_module(shape_a, shape_b)
    scheduled = schedule_legalized_matmuls(target.lanes)(relax.transform.LegalizeOps()(mod))
    prims = [f for f in scheduled.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert prims and all(f.attrs and "tirx.is_scheduled" in f.attrs for f in prims)  # the rewrite fired
    executable = tvm.compile(mod, target=target.tvm_target(), relax_pipeline=_cpu_pipeline(target.tvm_target(), target))
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal([n if d == N else d for d in s]).astype(np.float32) for s in (shape_a, shape_b))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()
    np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-4, atol=1e-5)


def test_a_fused_chain_is_inlined_and_equals_numpy():
    """tril mask (where) -> exp -> transpose -> multiply -> transpose, fused by FuseOps into one function of several
    blocks: scheduled where only a whole-prompt function calls it (here `main` stands for one), none left, and the
    result is numpy's, at a short and a long symbolic length; left alone where another function calls it."""
    from tvm import relax

    from actsparse.codegen.build import _cpu_pipeline
    from actsparse.codegen.cpu_fused import schedule_fused_functions
    from actsparse.targets.x86 import host

    n = tvm.tirx.Var(N, "int64")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([3, n, n], "float32"))
    y = relax.Var("y", relax.TensorType([n, n, 3], "float32"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            keep = bb.emit(relax.op.tril(relax.op.ones((n, n), "bool"), 0))
            masked = bb.emit(relax.op.where(keep, x, relax.const(-np.inf, "float32")))
            moved = bb.emit(relax.op.permute_dims(relax.op.exp(masked), [1, 2, 0]))
            out = bb.emit_output(relax.op.permute_dims(relax.op.multiply(moved, y), [2, 0, 1]))
        bb.emit_func_output(out)
    mod = bb.get()
    target = host()
    def intermediates(module):
        return sum(f.script().count("alloc_buffer") for f in module.functions.values()
                   if isinstance(f, tvm.tirx.PrimFunc))

    fused = relax.transform.FuseTIR()(relax.transform.FuseOps()(relax.transform.AnnotateTIROpPattern()(
        relax.transform.LegalizeOps()(mod))))
    assert intermediates(schedule_fused_functions(("prefill",))(fused)) == intermediates(fused)  # main's: left
    scheduled = schedule_fused_functions(("main",))(fused)
    assert intermediates(fused) >= 5 and intermediates(scheduled) == 0  # the rewrite fired: every one inlined
    pipeline = _cpu_pipeline(target.tvm_target(), target, ("main",))
    executable = tvm.compile(mod, target=target.tvm_target(), relax_pipeline=pipeline)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    rng = np.random.default_rng(0)
    for length in (4, 130):
        a = rng.standard_normal((3, length, length)).astype(np.float32)
        b = rng.standard_normal((length, length, 3)).astype(np.float32)
        out = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()
        expected = (np.exp(np.where(np.tril(np.ones((length, length), bool)), a, -np.inf)).transpose(1, 2, 0) * b)
        np.testing.assert_allclose(out, expected.transpose(2, 0, 1), rtol=1e-4, atol=1e-6)
