"""The CUDA routed-experts kernel (codegen/kernels/cuda_routed.py) under the SIMT emulator (tests/simt.py), and the
lowering's glue around it (x spread over the slots, the slots' outputs summed by weight) on the CPU.

Each virtual token (a token's slot) runs the expert the router chose for it; the reference is float64 on the
dequantized weights, expert by expert. Float experts no slot chose are NaN, and in exact mode the up and down rows of
the neurons whose gate is zero, so a kernel that read them would return NaN: equality proves they are not read."""

import numpy as np
import pytest

from .kernel_cases import Call, check_on_gpu, check_on_simt, kernel_weights, mlp_reference

pytest.importorskip("tvm")

E = 4


def _slot_case(rng, V, d, n_ff, dtype, down_dtype, exact):
    """(args, reference, scale): x [V, d], stacked weights, each slot's expert among the first E - 1 (the last
    expert unchosen: NaN where its weights are floats)."""
    x = (np.abs(rng.standard_normal((V, d))) + 0.1).astype(np.float32)
    wg, wu, wd_t = (rng.standard_normal((E * n_ff, d)).astype(np.float32) / d**0.5 for _ in range(3))
    off = rng.random(E * n_ff) < (0.5 if exact else 0.0)   # exact: neurons off for every token (x > 0, gate < 0)
    wg[off] = -np.abs(wg[off])
    expert = rng.integers(0, E - 1, V).astype(np.int64)
    (kg, ku), (fg, fu) = kernel_weights([wg, wu], dtype)
    (kd,), (fd,) = kernel_weights([wd_t], down_dtype or dtype)
    if dtype == "float32":   # what the kernel must not read: NaN (the reference keeps the values)
        kg, ku, kd = (w.copy() for w in (kg, ku, kd))
        for w in (kg, ku, kd):
            w[(E - 1) * n_ff:] = np.nan   # the expert no slot chose
        ku[off], kd[off] = np.nan, np.nan   # the up and down rows of neurons whose gate is 0
    ref, scale = np.zeros((V, d)), np.zeros((V, d))
    for v, e in enumerate(expert):
        rows = slice(e * n_ff, (e + 1) * n_ff)
        ref[v], scale[v] = (r[0] for r in mlp_reference(x[v:v + 1], fg[rows], fu[rows], fd[rows],
                                                        "relu" if exact else "silu"))
    return [x, kg, ku, kd, expert, np.full((V, d), np.nan, np.float32)], ref, scale


CASES = [(exact, dtype, down) for exact in (True, False) for dtype, down in (("float32", None), ("q4_0", "q8_0"))]


def _jobs(d=72, n_ff=20):
    """(primfunc, calls) per case: exact (ReLU gate: the zero neurons' up and down rows skipped) and dense (SiLU)
    experts, float32 and a GGUF's q4_0 gate / up beside a q8_0 down, decode (V = 1) and prefill-sized (V = 5)
    calls, ragged d."""
    from actsparse import targets
    from actsparse.codegen.kernels.cuda_routed import routed_gated_mlp
    from actsparse.codegen.schedules import schedule_for

    sched = schedule_for(targets.get("cuda"))
    rng = np.random.default_rng(3)
    return [(routed_gated_mlp(d, n_ff, E, gate_act="relu" if exact else "silu", dtype=dtype, down_dtype=down,
                              exact=exact, sched=sched),
             [Call(*_slot_case(rng, V, d, n_ff, dtype, down, exact), dtype) for V in (1, 5)])
            for exact, dtype, down in CASES]


def test_the_cuda_routed_kernel_runs_each_slots_expert_under_simt():
    check_on_simt(_jobs())


def _threshold_jobs(d=72, n_ff=24):
    """(primfunc, calls) of threshold mode's per-slot kernel (SwiGLU experts, two cuts per neuron: each slot keeps
    neuron i where |silu(g_i)| is above its expert's neuron i's gate cut, and then |h_i| above its cut on h): float32
    and q4_0 gate / up beside a q8_0 down, V = 1 and 5; the slot table [V, 1 + 2 n_ff] holds each slot's expert id and
    its expert's cuts. The reference per slot is the threshold kernel's (kernel_cases.threshold_reference: values
    within float32 rounding of a threshold may fall either way)."""
    from actsparse import targets
    from actsparse.codegen.kernels.cuda_routed import routed_gated_mlp
    from actsparse.codegen.schedules import schedule_for
    from actsparse.ir.activations import apply

    from .kernel_cases import threshold_reference

    sched = schedule_for(targets.get("cuda"))
    rng = np.random.default_rng(5)
    jobs = []
    for dtype, down in (("float32", None), ("q4_0", "q8_0")):
        prim = routed_gated_mlp(d, n_ff, E, gate_act="silu", dtype=dtype, down_dtype=down, exact=False,
                                thresholds=True, sched=sched)
        calls = []
        for V in (1, 5):
            x = rng.standard_normal((V, d)).astype(np.float32)
            wg, wu, wd_t = (rng.standard_normal((E * n_ff, d)).astype(np.float32) / d**0.5 for _ in range(3))
            (kg, ku), (fg, fu) = kernel_weights([wg, wu], dtype)
            (kd,), (fd,) = kernel_weights([wd_t], down or dtype)
            probe_x = rng.standard_normal((64, d)).astype(np.float32)
            a = apply("silu", probe_x @ fg.T)
            # per expert and cut its quantile (gate: 0.4, h: 0.6), scaled per neuron (0.5x .. 1.5x); expert 1 at 0:
            # every neuron kept
            cuts = [np.quantile(np.abs(values).reshape(64, E, n_ff), q, axis=(0, 2))[:, None]
                    * rng.uniform(0.5, 1.5, (E, n_ff)) for values, q in ((a, 0.4), (a * (probe_x @ fu.T), 0.6))]
            thresholds = np.stack(cuts, 1).astype(np.float32)   # [E, 2, n_ff]
            thresholds[1] = 0.0
            expert = rng.integers(0, E, V)
            slots = np.concatenate([expert.astype(np.float32)[:, None], thresholds[expert].reshape(V, 2 * n_ff)], 1)
            ref, scale, slack = (np.zeros((V, d)) for _ in range(3))
            for v, e in enumerate(expert):
                rows = slice(e * n_ff, (e + 1) * n_ff)
                ref[v], scale[v], slack[v] = (r[0] for r in threshold_reference(
                    x[v:v + 1], fg[rows], fu[rows], fd[rows], "silu", "identity", thresholds[e, 0], "gate",
                    h_cut=thresholds[e, 1]))
            calls.append(Call([x, kg, ku, kd, slots, np.full((V, d), np.nan, np.float32)], ref, scale, dtype, slack))
        jobs.append((prim, calls))
    return jobs


def test_the_cuda_routed_kernel_applies_each_slots_expert_threshold_under_simt():
    check_on_simt(_threshold_jobs())


@pytest.mark.gpu
def test_the_cuda_routed_kernel_applies_each_slots_expert_threshold_on_the_gpu():
    check_on_gpu(_threshold_jobs(d=4096 + 72, n_ff=200))


@pytest.mark.gpu
def test_the_cuda_routed_kernel_runs_each_slots_expert_on_the_gpu():
    check_on_gpu(_jobs(d=4096 + 72, n_ff=200))


def test_the_cuda_routed_kernel_refuses_what_it_cannot_run():
    from actsparse import targets
    from actsparse.codegen.kernels.cuda_routed import routed_gated_mlp
    from actsparse.codegen.schedules import schedule_for

    sched = schedule_for(targets.get("cuda"))
    with pytest.raises(ValueError, match="gate_act"):
        routed_gated_mlp(64, 8, E, gate_act="silu", exact=True, sched=sched)
    with pytest.raises(ValueError, match="at least one expert"):
        routed_gated_mlp(64, 8, 0, sched=sched)


def _slot_kernel_on_cpu(d, n_ff, experts, *, gate_act, exact, sched, thresholds=False, **options):
    """A float32 CPU stand-in (te) for the per-slot kernel, same parameters: out[v] = the gated MLP of expert[v]
    (`thresholds`: the [V, 1 + 2 n_ff] slot table, expert id and its neurons' cuts, the activated gate kept above
    its neuron's gate cut, then h above its cut on h)."""
    from tvm import te, tirx

    V = tirx.Var("V", "int64")
    x = te.placeholder((V, d), "float32", "x")
    wg, wu, wd = (te.placeholder((experts * n_ff, d), "float32", n) for n in ("w_gate", "w_up", "w_down_t"))
    table = te.placeholder((V, 1 + 2 * n_ff) if thresholds else (V,), "float32" if thresholds else "int64", "expert")

    def expert(v):
        return table[v, 0].astype("int64") if thresholds else table[v]

    i, j = te.reduce_axis((0, d), "i"), te.reduce_axis((0, d), "i2")
    g = te.compute((V, n_ff), lambda v, n: te.sum(x[v, i] * wg[expert(v) * n_ff + n, i], axis=i), "g")
    u = te.compute((V, n_ff), lambda v, n: te.sum(x[v, j] * wu[expert(v) * n_ff + n, j], axis=j), "u")
    act = {"relu": lambda s: te.max(s, tirx.const(0.0, "float32")), "silu": lambda s: s * te.sigmoid(s)}[gate_act]

    def kept(v, n, a):
        return tirx.Select(te.abs(a) > table[v, 1 + n], a, tirx.const(0.0, "float32")) if thresholds else a

    def kept_h(v, n, hv):
        return tirx.Select(te.abs(hv) > table[v, 1 + n_ff + n], hv, tirx.const(0.0, "float32")) if thresholds else hv

    h = te.compute((V, n_ff), lambda v, n: kept_h(v, n, kept(v, n, act(g[v, n])) * u[v, n]), "h")
    k = te.reduce_axis((0, n_ff), "k")
    out = te.compute((V, d), lambda v, c: te.sum(h[v, k] * wd[expert(v) * n_ff + k, c], axis=k), "out")
    return te.create_prim_func([x, wg, wu, wd, table, out]).with_attr(
        "global_symbol", f"slots_{gate_act}_{exact}{'_t' if thresholds else ''}")


@pytest.mark.parametrize("mode", ["exact", "dense", "threshold"])
def test_the_per_slot_lowering_computes_the_routed_op(monkeypatch, mode):
    """The lowering a CUDA target takes (x repeated per slot, one per-slot call, the slots summed by the routing
    weights; threshold experts: the slot table of expert ids and their neurons' thresholds), run on the CPU with a
    float32 stand-in kernel in the CPU family's place: the compiled graph equals the original's interpretation
    (threshold mode's rewritten graph's), routing included."""
    import actsparse
    from actsparse.codegen import kernels
    from actsparse.ir import evaluate

    from .test_passes_golden import _inputs, _load

    cpu = {k: v for k, v in kernels.FAMILIES["CpuSchedule"].items() if k != "routed"}
    monkeypatch.setitem(kernels.FAMILIES, "CpuSchedule", {**cpu, "routed-slots": ("cuda_routed", "stand-in")})
    made, family_kernel = [], kernels.kernel

    def kernel(name, *args, **kwargs):
        if name != "routed-slots":
            return family_kernel(name, *args, **kwargs)
        made.append(kwargs["exact"])
        return _slot_kernel_on_cpu(*args, **kwargs)

    monkeypatch.setattr(kernels, "kernel", kernel)
    graph = _load("moe_routed")
    x = _inputs(graph, seq=4)
    lossy = {"calibration": tuple(tuple(_inputs(graph, seq=16, seed=s)) for s in range(8)), "sparsity": 0.7,
             "method": "cats"} if mode == "threshold" else {}
    cm = actsparse.compile(graph, tuple(x), mode=mode, **lossy)
    (routed,) = [n for n in cm.graph.nodes if n.op == "routed_moe"]
    assert routed.attrs["mode"] == mode and made == [mode == "exact"]
    np.testing.assert_allclose(cm(*x), evaluate(cm.graph, x)[0], rtol=1e-4, atol=1e-5)
    if mode != "threshold":
        np.testing.assert_allclose(cm(*x), evaluate(graph, x)[0], rtol=1e-4, atol=1e-5)
