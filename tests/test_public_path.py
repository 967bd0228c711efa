"""The public path costs what the kernels cost: compile() runs no numpy forward of the model, holds no second
copy of the weights, and the runtime gives TVM's thread pool the threads the kernels were scheduled for."""

import json
import os

import numpy as np
import pytest
import torch

import actsparse
from actsparse.models import TinyConfig, TinyLlama
from actsparse.runtime import devices as runtime_devices
from actsparse.runtime import report as runtime_report
from actsparse.runtime.report import measure_blocks

from .helpers import gated_mlp_graph, mlp_input


def _tiny(d=64, n_ff=128, layers=2):
    torch.manual_seed(0)
    return TinyLlama(TinyConfig(d_model=d, n_layers=layers, n_heads=4, n_ff=n_ff, max_seq=32, mlp_act="drelu")).eval()


def _ids(seq=6):
    return torch.randint(0, 256, (1, seq), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("mode", ["exact", "dense"])
def test_report_from_the_compiled_run_equals_the_interpreters(mode):
    graph = gated_mlp_graph(up_relu=True)
    x = mlp_input(seq=7)
    cm = actsparse.compile(graph, (x,), mode=mode)
    interpreted = measure_blocks(cm.graph, [x])
    assert [b.location for b in cm.report.blocks] == [b.location for b in interpreted]
    assert cm.report.blocks[0].sparsity == pytest.approx(interpreted[0].sparsity)
    assert 0.2 < cm.report.blocks[0].sparsity < 0.9


def test_compile_runs_no_numpy_forward(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("compile() ran the reference interpreter over the whole model")

    monkeypatch.setattr(runtime_report, "evaluate", forbidden)
    model, ids = _tiny(), _ids()
    cm = actsparse.compile(model, (ids,), mode="exact")
    assert len(cm.report.blocks) == 2
    assert all(0.0 < b.sparsity < 1.0 for b in cm.report.blocks)  # dReLU: measured, neither empty nor full
    with torch.no_grad():
        np.testing.assert_allclose(cm(ids).numpy(), model(ids).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["dense", "exact"])
def test_compiled_module_views_the_torch_parameters(mode):
    """No copy of the weights: the TVM tensors the module runs on are the torch parameters' own memory; the fused
    MLP kernels (exact and dense) take the one layout copy they need (W_down transposed). Exact mode here reads
    every gate row: a target whose `exact_gate` is "certified" adds an int8 gate copy by design."""
    from dataclasses import replace

    from actsparse import targets

    model, ids = _tiny(), _ids()
    cm = actsparse.compile(model, (ids,), target=replace(targets.get("x86"), exact_gate="dense"), mode=mode)
    params = {name: p.data_ptr() for name, p in [*model.named_parameters(), *model.named_buffers()]}
    tensors = dict(zip(cm.weight_order, cm._weight_tensors))
    shared = [n for n, t in tensors.items() if params.get(n) == t.data_ptr()]
    copied = sorted(set(tensors) - set(shared))
    expected = [f"layers.{i}.mlp.down_proj.weight.t" for i in range(2)]
    assert copied == expected
    assert len(shared) == len(tensors) - len(expected)


@pytest.mark.slow
def test_compile_memory_grows_with_the_weights_once(tmp_path):
    """Peak RSS of a compile, in a subprocess per size: two models that differ only in their vocabulary (so in
    weights, not in code) differ in peak memory by about their weights' difference, not a multiple of it."""
    import subprocess
    import sys

    vocabs, rows, children = (16000, 200000), [], []
    for vocab in vocabs:  # side by side: each child measures its own peak RSS
        with open(tmp_path / f"{vocab}.out", "w") as out, open(tmp_path / f"{vocab}.err", "w") as err:
            children.append(subprocess.Popen([sys.executable, "-m", "actsparse.benchmarks.compile_scale", "--child",
                                              "1", "--small", "--vocab", str(vocab)], stdout=out, stderr=err))
    for vocab, child in zip(vocabs, children):
        assert child.wait(timeout=600) == 0, (tmp_path / f"{vocab}.err").read_text()[-2000:]
        rows.append(json.loads((tmp_path / f"{vocab}.out").read_text().splitlines()[-1].removeprefix("RESULT ")))
    extra_weights = rows[1]["weight_bytes"] - rows[0]["weight_bytes"]
    extra_peak = rows[1]["peak_over_base_bytes"] - rows[0]["peak_over_base_bytes"]
    assert extra_weights > 150e6
    assert extra_peak / extra_weights < 1.5, f"{extra_peak / extra_weights:.2f}x the added weights"
    assert rows[0]["sparsity"] is not None


def test_tvm_gets_the_targets_threads(monkeypatch):
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    runtime_devices.use_threads(3)
    assert os.environ["TVM_NUM_THREADS"] == "3"
    monkeypatch.setenv("TVM_NUM_THREADS", "1")  # the user's setting wins
    runtime_devices.use_threads(4)
    assert os.environ["TVM_NUM_THREADS"] == "1"


def test_dense_mode_runs_the_fused_dense_kernel():
    """Dense mode lowers each gated MLP to the one fused kernel benchmarks/ffn.py times (`dense_gated_mlp`), not
    to three linear kernels, and still equals torch."""
    model, ids = _tiny(), _ids()
    cm = actsparse.compile(model, (ids,), mode="dense")
    assert cm.report.pass_stats["fuse-gated-mlp"] == {"drelu": 2}
    assert cm.graph.count("gated_mlp") == 0 and cm.graph.count("sparse_gated_mlp") == 2
    assert all(n.attrs["mode"] == "dense" for n in cm.graph.nodes if n.op == "sparse_gated_mlp")
    calls = _kernel_calls(cm)
    assert sum("gmlp_dense" in c for c in calls) == 2  # one call per layer
    assert not any("linear_k64_n128" in c or "linear_k128_n64" in c for c in calls)  # no MLP-sized linears left
    assert [b.mode for b in cm.report.blocks] == ["dense", "dense"]
    with torch.no_grad():
        np.testing.assert_allclose(cm(ids).numpy(), model(ids).numpy(), rtol=1e-4, atol=1e-5)


def _kernel_calls(cm) -> list[str]:
    """The TIR function of each call_tir in the compiled graph's Relax main, in order."""
    from tvm import relax

    from actsparse.codegen.lower import lower_graph

    mod, _ = lower_graph(cm.graph, actsparse.targets.get("x86"))
    calls = []
    relax.analysis.post_order_visit(mod["main"], lambda e: calls.append(e.args[0].name_hint) if isinstance(
        e, relax.Call) and getattr(e.op, "name", "") == "relax.call_tir" else None)
    return calls


def test_compile_shows_its_progress(monkeypatch, capfd):
    """A bar on stderr names each step (import, every pass, build, report) as it runs; off with ACTSPARSE_PROGRESS=0."""
    monkeypatch.setenv("ACTSPARSE_PROGRESS", "1")
    actsparse.compile(gated_mlp_graph(), (mlp_input(),), mode="exact")
    err = capfd.readouterr().err
    for step in ("import", "pass canonicalize", "pass detect-gated-mlp", "pass sparsify-exact", "build", "report"):
        assert step in err, step
    monkeypatch.setenv("ACTSPARSE_PROGRESS", "0")
    actsparse.compile(gated_mlp_graph(), (mlp_input(),), mode="exact")
    assert "sparsify-exact" not in capfd.readouterr().err


def test_a_build_for_another_x86_cpu_holds_only_that_cpus_instructions(tmp_path):
    """`target="x86:x86-64-v3"` builds for any AVX2 machine whatever this host has (an AVX-512 host's own build
    stops on an AVX2 one): no 512-bit register in its library, outputs equal to torch, and the artifact records
    the features it needs (which `load` checks against the CPU it runs on)."""
    import shutil
    import subprocess

    if shutil.which("objdump") is None:
        pytest.skip("needs binutils' objdump to read the library's instructions")
    model, ids = _tiny(), _ids()
    cm = actsparse.compile(model, (ids,), target="x86:x86-64-v3", mode="exact")
    assert cm.target_info["vector_bits"] == 256 and set(cm.target_info["features"]) == {"avx2", "fma", "f16c"}
    with torch.no_grad():
        np.testing.assert_allclose(cm(ids).numpy(), model(ids).numpy(), rtol=1e-4, atol=1e-5)
    cm.save(tmp_path / "avx2")
    library = next((tmp_path / "avx2").glob("*.so"))
    code = subprocess.run(["objdump", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    assert "vfmadd" in code and "%ymm" in code and "%zmm" not in code
    loaded = actsparse.load(tmp_path / "avx2")
    assert loaded.target_info["features"] == ["avx2", "fma", "f16c"] and loaded.runnable
    with torch.no_grad():
        np.testing.assert_allclose(loaded(ids).numpy(), model(ids).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(actsparse.errors.TargetError, match="unknown x86 CPU 'pentium9'"):
        actsparse.compile(model, (ids,), target="x86:pentium9")


@pytest.mark.parametrize("cpu", ["x86-64-v2", "skylake-avx512"])
def test_the_float_kernels_of_other_x86_classes_run_where_this_cpu_can(cpu):
    """x86 classes the kernels distinguish besides the usual hosts: SSE only (x86-64-v2: 128-bit vectors, no FMA)
    and AVX-512 without VNNI (Skylake-X: 512-bit vectors, quantized rows on the float path, every gate row read).
    Built for that CPU and run here where this CPU has its features: fp32 exact equals torch, int4 equals the
    interpreter on the same quantized weights (the float path does not round x)."""
    from actsparse.ir import evaluate

    target = actsparse.targets.get(f"x86:{cpu}")
    if not target.runs_here:
        pytest.skip(f"{cpu}'s code does not run on this CPU: {target.run_hint}")
    model, ids = _tiny(), _ids()
    exact = actsparse.compile(model, (ids,), target=target, mode="exact")
    assert exact.report.pass_stats["sparsify-exact"] == {"drelu": 2}
    with torch.no_grad():
        np.testing.assert_allclose(exact(ids).numpy(), model(ids).numpy(), rtol=1e-4, atol=1e-5)
    int4 = actsparse.compile(model, (ids,), target=target, mode="exact", quantize="int4")
    reference = evaluate(int4.graph, [ids.numpy()])[0]
    np.testing.assert_allclose(int4(ids).numpy(), reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())
