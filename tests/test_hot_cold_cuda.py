"""memory_budget on a CUDA target (hybrid, as PowerInfer): hot neurons in VRAM on the GPU kernel, cold ones in host
memory on the CPU, the two results summed. Without a GPU: the build, the placement and the hybrid's numerics (the hot
part's CUDA kernel under the SIMT emulator + the cold part's host function) are checked; timing needs a GPU."""

import time

import numpy as np
import pytest

from .helpers import gated_mlp_graph, mlp_input
from .kernel_cases import Call, primfunc, require_nvcc, run_batch, simt_kernels

D, N = 64, 256
MLP = 3 * D * N * 4


def _compile(target, budget):
    import actsparse

    graph = gated_mlp_graph(d=D, n=N, gate_shift=0.5)
    calibration = [(mlp_input(d=D, seq=8, seed=s),) for s in range(4)]
    return graph, actsparse.compile(graph, (mlp_input(d=D, seq=3),), target=target, mode="exact",
                                    memory_budget=budget, calibration=calibration)


def test_cuda_budget_builds_the_hybrid_and_places_cold_neurons_in_host_memory():
    from actsparse.codegen.cuda_support import cuda_source
    from actsparse.runtime.cold_store import ColdStore, cold_layouts, cold_nodes

    require_nvcc()
    graph, cm = _compile("cuda", int(0.6 * MLP))
    assert cm.report.pass_stats["split-hot-cold"] == {"split": 1}
    hot_node = next(n for n in cm.graph.nodes if n.op == "sparse_gated_mlp" and n.attrs["mode"] == "exact")
    cold_node = cold_nodes(cm.graph)[0]
    hot = hot_node.inputs[1].shape[0]
    assert 0 < hot < N and hot % 64 == 0
    assert f"actsparse_cuda_gmlp_exact_d{D}_f{hot}" in cuda_source(cm.executable.mod)   # the hot part: a GPU kernel
    assert cm.cold_file is None and set(cm.placement.values()) == {"host"}               # the cold part: host memory
    assert {w.attrs["name"] for w in cold_node.inputs[2:]} == set(cm.placement)   # the gate rows stay in VRAM
    # the hybrid's numerics: hot CUDA kernel (emulated) + cold host function == the original block
    x2d = mlp_input(d=D, seq=5, seed=9).reshape(-1, D)
    hot_w = [np.ascontiguousarray(cm.weights[w.attrs["name"]]) for w in hot_node.inputs[1:4]]
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    prim = primfunc("exact", D, hot, "float32", schedule_for(targets.get("cuda")), ("relu", "identity", 0.0))
    out = np.full((len(x2d), D), np.nan, np.float32)
    (y_hot,), = run_batch(simt_kernels([prim]), [(prim, [Call([x2d, *hot_w, out], out, out, "float32")])])
    layout = cold_layouts(cm.graph)[cold_node.attrs["store"]]
    bundles = np.concatenate([cm.weights[layout.up], cm.weights[layout.down]], 1)
    store = ColdStore(layout, dict(cold_node.attrs), bundles=bundles)
    y_cold = store.compute(x2d, x2d @ cm.weights[cold_node.inputs[1].attrs["name"]].T)
    from actsparse.ir import evaluate

    expected = evaluate(graph, [x2d.reshape(1, -1, D)])[0].reshape(-1, D)
    np.testing.assert_allclose(y_hot + y_cold, expected, rtol=1e-4, atol=1e-5)
    assert store.misses > 0


@pytest.mark.gpu
def test_cuda_budget_on_the_gpu_matches_the_cpu_and_is_timed():
    import actsparse

    graph, hybrid = _compile("cuda", int(0.6 * MLP))
    full = actsparse.compile(graph, (mlp_input(d=D, seq=3),), target="cuda", mode="exact")
    x = mlp_input(d=D, seq=1, seed=3)
    np.testing.assert_allclose(hybrid(x), full(x), rtol=1e-4, atol=1e-5)
    times = {}
    for name, module in (("hybrid", hybrid), ("all in VRAM", full)):
        module(x)
        start = time.perf_counter()
        for _ in range(50):
            module(x)
        times[name] = (time.perf_counter() - start) / 50
    print(f"per call: {times}")
    assert all(t > 0 for t in times.values())
