"""The CPU schedule of TVM's legalized matmuls (codegen/cpu_matmul.py): a matmul of two activations (a hybrid
prefill's chunked scan) is scheduled inside the CPU pipeline and still computes numpy's matmul, for static and
symbolic rows, a batch, a broadcast batch, and dims that no block divides."""

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



def test_a_module_without_matmul_builds_without_the_schedule_pass(monkeypatch):
    """The pass decides by a Schedule per PrimFunc (~2 ms each, ~0.15 s of a dense tiny Llama's build): a module
    calling no R.matmul leaves it out; one that calls it keeps it (the case above)."""
    from tvm import relax

    from actsparse.codegen import cpu_matmul
    from actsparse.codegen.build import _cpu_pipeline
    from actsparse.targets.x86 import host

    looked_at = []
    original = cpu_matmul.is_legalized_matmul
    monkeypatch.setattr(cpu_matmul, "is_legalized_matmul", lambda f: looked_at.append(f) or original(f))
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType([4, 8], "float32"))
    with bb.function("main", [a]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.add(relax.op.exp(a), a))
        bb.emit_func_output(out)
    plain = bb.get()
    assert not cpu_matmul.calls_matmul(plain) and cpu_matmul.calls_matmul(_matmul_module((6, 16), (16, 32)))
    target = host()
    tvm_target = target.tvm_target()
    executable = tvm.compile(plain, target=tvm_target, relax_pipeline=_cpu_pipeline(tvm_target, target))
    assert looked_at == []  # the pass never ran
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    out = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(out, np.exp(x) + x, rtol=1e-5)
