"""A routed MoE whose down stack runs by outputs (ir/moe.py's `down_rows="outputs"`: a MoE GGUF's `ffn_down_exps` as
stored, an output per row): the CPU routed kernel on x86 (the float path and the host's int8-dot path, where h is
rounded to 8-bit blocks as x is) and on ARM under qemu, the CUDA per-slot kernel under the SIMT emulator (and on a
lent GPU), each against a float64 reference on the dequantized weights, with the unchosen experts' float rows NaN;
the op's type rule and reference; the quantize pass that stores it so (dense experts, a pre-quantized source, a
family whose routed kernel reads it) and where it does not (exact experts, a family without such a kernel); the
lowering's refusal where no routed kernel takes it."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from actsparse.ir.moe import down_stack_by_outputs, routed_moe_ref
from actsparse.ir.quant import quantize, round_x8
from actsparse.ir.sparse_variants import dense_intermediate

from .kernel_cases import (
    Call,
    check_on_gpu,
    check_on_simt,
    cross_kernels,
    examples,
    kernel_weights,
    mlp_reference,
    require_cross_tools,
    run_batch,
)

tvm = pytest.importorskip("tvm")

E, K = 4, 2


def _case(rng, M, d, n_ff, gate, down, bias=False):
    """x, the stacks (gate / up a neuron per row in `gate`, down an output per row in `down`; "float32": plain
    arrays with the unchosen experts' rows NaN), the routing (experts E-1 never chosen) and the biases."""
    x = rng.standard_normal((M, d)).astype(np.float32)
    floats = [rng.standard_normal((E * n_ff, d)).astype(np.float32) / d**0.5 for _ in range(2)]
    floats.append(rng.standard_normal((E * d, n_ff)).astype(np.float32) / n_ff**0.5)
    stored, values = [], []
    for w, layout, unchosen in zip(floats, (gate, gate, down), (n_ff, n_ff, d)):
        if layout == "float32":
            w[(E - 1) * unchosen:] = np.nan   # a kernel that read an unchosen expert's row would return NaN
            stored.append(w)
            values.append(w)
        else:
            q = quantize(w, layout)
            stored.append(q.blob)
            values.append(q.dequantize())
    route_i = np.stack([rng.choice(E - 1, K, replace=False) for _ in range(M)]).astype(np.int64)
    route_w = rng.random((M, K)).astype(np.float32)
    biases = ((rng.standard_normal(E * n_ff).astype(np.float32), rng.standard_normal(E * n_ff).astype(np.float32),
               rng.standard_normal((E, d)).astype(np.float32)) if bias else None)
    return x, stored, values, route_w, route_i, biases


def _reference(x, values, route_w, route_i, biases, attrs, x8: bool, h8: bool):
    """float64 per token and slot; x (`x8`) and each expert's h (`h8`) rounded to 8-bit blocks where the kernel's
    row dots run on the int8 dot."""
    w_gate, w_up, w_down = (np.asarray(v, np.float64) for v in values)
    d, n_ff = x.shape[1], w_gate.shape[0] // E
    x = round_x8(x) if x8 else x
    out = np.zeros((len(x), d))
    for m in range(len(x)):
        for s in range(route_i.shape[1]):
            e = route_i[m, s]
            rows = slice(e * n_ff, (e + 1) * n_ff)
            extra = (biases[0][rows], biases[1][rows]) if biases else ()
            h = dense_intermediate(x[m:m + 1].astype(np.float64), w_gate[rows], w_up[rows], attrs, *extra)
            h = round_x8(h.astype(np.float32)).astype(np.float64) if h8 else h
            y = h @ w_down[e * d:(e + 1) * d].T + (biases[2][e] if biases else 0.0)
            out[m] += route_w[m, s] * y[0]
    return out


def _kernel(d, n_ff, gate, down, sched, bias):
    from actsparse.codegen.kernels.routed_moe import routed_moe

    return routed_moe(d, n_ff, E, exact=False, gate_act="silu", dtype=gate,
                      down_dtype=None if down == gate else down, down_rows="outputs", bias=bias, sched=sched)


ATTRS = {"experts": E, "gate_act": "silu", "up_act": "identity", "threshold": 0.0, "mode": "dense",
         "down_rows": "outputs"}


@pytest.mark.parametrize("path", ["float", "int8-dot"])
@settings(max_examples=examples(8), suppress_health_check=[HealthCheck.too_slow])
@given(layouts=st.sampled_from([("q4_0", "q4_0"), ("q4_1", "q4_0"), ("q4_0", "q8_0"), ("q8_0", "q4_1"),
                                ("float32", "float32")]),
       d=st.integers(1, 100), n_ff=st.integers(1, 80), M=st.integers(1, 4), bias=st.booleans(),
       seed=st.integers(0, 999))
def test_x86_routed_kernel_reads_a_down_stack_by_outputs(path, layouts, d, n_ff, M, bias, seed):
    """Gate / up a neuron per row, down an output per row (ragged d and n_ff: partial last groups along both), with
    and without biases; the int8-dot path is skipped where the host's x86 target has none for the down layout."""
    from actsparse import targets
    from actsparse.codegen.kernels.common import x_operand
    from actsparse.codegen.kernels.routed_moe import absent_biases
    from actsparse.codegen.schedules import schedule_for

    from .test_kernels_x86 import run

    gate, down = layouts
    host = schedule_for(targets.get("x86"))
    x8 = path == "int8-dot"
    if x8 and not x_operand(32, "q4_0", host)[0]:   # the host, not the example: the same for every draw
        pytest.skip("this host's x86 target has no int8 dot for q4_0 rows")
    assume(not x8 or (x_operand(d, gate, host)[0] and x_operand(n_ff, down, host)[0]))   # float32 rows: no int8 dot
    sched = host if x8 else replace(host, int8_dot="")
    x, stored, values, route_w, route_i, biases = _case(np.random.default_rng(seed), M, d, n_ff, gate, down, bias)
    kernel = _kernel(d, n_ff, gate, down, sched, bias)
    assert ("routeddbo" if bias else "routeddo") in str(kernel.attrs["global_symbol"])
    got = run(kernel, x, *stored, route_w, route_i, *(biases or absent_biases(d)), out_shape=(M, d))
    want = _reference(x, values, route_w, route_i, biases, ATTRS, x8, x8)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))


@settings(max_examples=1, suppress_health_check=[HealthCheck.too_slow])
@given(d=st.integers(33, 60), n_ff=st.integers(40, 70), seed=st.integers(0, 99))
def test_arm_routed_kernel_reads_a_down_stack_by_outputs_under_qemu(d, n_ff, seed):
    """The same kernel built for aarch64 (NEON's dot product where the target has it: x and h in 8-bit blocks),
    run under qemu, decode and prefill."""
    from actsparse import targets
    from actsparse.codegen.kernels.common import x_operand
    from actsparse.codegen.kernels.routed_moe import absent_biases
    from actsparse.codegen.schedules import schedule_for

    require_cross_tools()
    sched = schedule_for(targets.get("arm"))
    rng = np.random.default_rng(seed)
    prims = {(gate, down): _kernel(d, n_ff, gate, down, sched, False) for gate, down in (("q4_0", "q4_0"),
                                                                                         ("q4_1", "q8_0"))}
    jobs = []
    for (gate, down), prim in prims.items():
        x8, h8 = x_operand(d, gate, sched)[0], x_operand(n_ff, down, sched)[0]   # NEON's dot: 8-bit blocks
        calls = []
        for M in (1, 3):
            x, stored, values, route_w, route_i, _ = _case(rng, M, d, n_ff, gate, down)
            want = _reference(x, values, route_w, route_i, None, ATTRS, x8, h8)
            out = np.full((M, d), np.nan, np.float32)
            calls.append(Call([x, *stored, route_w, route_i, *absent_biases(d), out], want,
                              np.full(d, max(1.0, np.abs(want).max())), "float32"))
        jobs.append((prim, calls))
    for (_, calls), outs in zip(jobs, run_batch(cross_kernels([p for p, _ in jobs]), jobs)):
        for call, out in zip(calls, outs):
            call.check(out)


def _slot_jobs(d, n_ff):
    """(primfunc, calls) of the CUDA per-slot kernel with the down stack by outputs: float32 (the unchosen expert's
    rows NaN), q4_0 throughout (a Q4_0 GGUF) and q4_1 gate / up beside a q8_0 down; V = 1 and 5 virtual tokens. The
    reference per slot is the expert's MLP with its down rows turned back a neuron per row."""
    from actsparse import targets
    from actsparse.codegen.kernels.cuda_routed import routed_gated_mlp
    from actsparse.codegen.schedules import schedule_for

    sched = schedule_for(targets.get("cuda"))
    rng = np.random.default_rng(5)
    jobs = []
    for gate, down in (("float32", "float32"), ("q4_0", "q4_0"), ("q4_1", "q8_0")):
        prim = routed_gated_mlp(d, n_ff, E, gate_act="silu", dtype=gate, down_dtype=None if down == gate else down,
                                exact=False, down_rows="outputs", sched=sched)
        calls = []
        for V in (1, 5):
            x = rng.standard_normal((V, d)).astype(np.float32)
            (kg, ku), (fg, fu) = kernel_weights([rng.standard_normal((E * n_ff, d)).astype(np.float32) / d**0.5
                                                 for _ in range(2)], gate)
            (kd,), (fd,) = kernel_weights([rng.standard_normal((E * d, n_ff)).astype(np.float32) / n_ff**0.5], down)
            if gate == "float32":   # the expert no slot chose: NaN where a read would show
                kg, ku, kd = (w.copy() for w in (kg, ku, kd))
                kg[(E - 1) * n_ff:], ku[(E - 1) * n_ff:], kd[(E - 1) * d:] = np.nan, np.nan, np.nan
            expert = rng.integers(0, E - 1, V).astype(np.int64)
            ref, scale = np.zeros((V, d)), np.zeros((V, d))
            for v, e in enumerate(expert):
                rows = slice(e * n_ff, (e + 1) * n_ff)
                ref[v], scale[v] = (r[0] for r in mlp_reference(x[v:v + 1], fg[rows], fu[rows],
                                                                fd[e * d:(e + 1) * d].T, "silu"))
            calls.append(Call([x, kg, ku, kd, expert, np.full((V, d), np.nan, np.float32)], ref, scale, gate))
        jobs.append((prim, calls))
    return jobs


def test_cuda_routed_kernel_reads_a_down_stack_by_outputs_under_simt():
    jobs = _slot_jobs(d=72, n_ff=40)
    assert all("routeddo" in str(prim.attrs["global_symbol"]) for prim, _ in jobs)
    check_on_simt(jobs)


@pytest.mark.gpu
def test_cuda_routed_kernel_reads_a_down_stack_by_outputs_on_the_gpu():
    check_on_gpu(_slot_jobs(d=2048 + 72, n_ff=768))


def test_the_op_checks_its_down_stack_by_outputs():
    """The type rule takes an output per row in dense mode and names the valid forms otherwise; the reference
    equals the same experts with the down stack a neuron per row."""
    from actsparse.ir.moe import routed_moe_type
    from actsparse.ir.types import TensorType

    rng = np.random.default_rng(0)
    d, n_ff, M = 8, 6, 3
    x, _, values, route_w, route_i, _ = _case(rng, M, d, n_ff, "float32", "float32")
    values = [np.nan_to_num(v) for v in values]
    by_neurons = values[2].reshape(E, d, n_ff).transpose(0, 2, 1).reshape(E * n_ff, d)
    got = routed_moe_ref(x, values[0], values[1], values[2], route_w, route_i, ATTRS, {})
    want = routed_moe_ref(x, values[0], values[1], by_neurons, route_w, route_i, {**ATTRS, "down_rows": "neurons"},
                          {})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    types = [TensorType((M, d), "f32"), TensorType((E * n_ff, d), "f32"), TensorType((E * n_ff, d), "f32"),
             TensorType((E * d, n_ff), "f32"), TensorType((M, K), "f32"), TensorType((M, K), "i64")]
    assert routed_moe_type(types, ATTRS).shape == (M, d)
    with pytest.raises(TypeError, match="down_rows 'outputs' with mode 'exact'.*valid: neurons"):
        routed_moe_type(types, {**ATTRS, "mode": "exact"})
    with pytest.raises(TypeError, match="down_rows outputs"):
        routed_moe_type([*types[:3], TensorType((E * d, n_ff + 1), "f32"), *types[4:]], ATTRS)


def test_the_routed_kernels_refuse_a_down_stack_by_outputs_in_exact_mode():
    """Exact experts skip a zero neuron's down row, which an output per row cannot: both families' kernels say so."""
    from actsparse import targets
    from actsparse.codegen.kernels.cuda_routed import routed_gated_mlp
    from actsparse.codegen.kernels.routed_moe import routed_moe
    from actsparse.codegen.schedules import schedule_for

    for kernel, target in ((routed_moe, "x86"), (routed_gated_mlp, "cuda")):
        with pytest.raises(ValueError, match="down_rows 'outputs' with mode 'exact'; valid: neurons"):
            kernel(64, 32, E, exact=True, down_rows="outputs", sched=schedule_for(targets.get(target)))


def _routed_with_a_source(mode: str, layout: str = "q4_0"):
    """The golden MoE through `mode`'s pipeline (one routed_moe), its down stack's values replaced by those of a
    `layout` [E·d, n] source (as a GGUF's `ffn_down_exps`, transposed back expert by expert; q8_0: a K-quant's 6-bit
    values held at 8 bits), and that source."""
    from actsparse.ir import Graph
    from actsparse.passes import pipeline_for, run_pipeline

    from .test_passes_golden import _load

    graph = run_pipeline(_load("moe_routed"), pipeline_for(mode)).graph
    (moe,) = [n for n in graph.nodes if n.op == "routed_moe"]
    name, experts = moe.inputs[3].attrs["name"], moe.attrs["experts"]
    down_t = graph.weights[name]
    n_ff, d = down_t.shape[0] // experts, down_t.shape[1]
    source = quantize(down_stack_by_outputs(down_t, experts), layout)
    stacked = source.dequantize().reshape(experts, d, n_ff).transpose(0, 2, 1).reshape(-1, d)
    weights = {**graph.weights, name: np.ascontiguousarray(stacked, np.float32)}
    return Graph(graph.inputs, graph.outputs, weights), source


@pytest.mark.parametrize("mode, family, source, stored", [
    ("dense", "cpu", "q4_0", "outputs"), ("dense", "cuda", "q4_0", "outputs"), ("exact", "cpu", "q4_0", "neurons"),
    ("dense", "vulkan", "q4_0", "neurons"), ("exact", "cpu", "q8_0", "neurons"), ("dense", "cpu", None, "outputs"),
    ("exact", "cpu", None, "neurons")])
def test_quantize_stores_a_routed_down_by_outputs_where_a_kernel_reads_it(mode, family, source, stored):
    """Dense experts on the CPU and CUDA families take the source's blocks as they are (down_rows outputs, stat
    routed-down-as-stored), or without a source (float weights) their values quantized an output per row
    (routed-down-by-outputs); exact experts (which skip a neuron's down row) and a family no `DOWN_ROWS` entry lists
    ("vulkan", none here) keep it a neuron per row: re-laid from a source at 8 bits under int4 (requantized-int8;
    from an 8-bit source, a K-quant's 6-bit values, wide-int8), from float weights at 4. The quantized graph computes
    what the float one did (gate and up rounded at 4 bits: a loose bound)."""
    from actsparse.ir import evaluate
    from actsparse.passes.base import apply_pass
    from actsparse.passes.quantize import Quantize

    from .test_passes_golden import _inputs

    graph, held = _routed_with_a_source(mode, source or "q4_0")
    prequantized = {"blk.ffn_down_exps": held} if source else {}
    result = apply_pass(Quantize(kind="int4", prequantized=prequantized, kernel_family=family), graph)
    out, stats = result.graph, result.stats
    (moe,) = [n for n in out.nodes if n.op == "routed_moe"]
    assert moe.attrs.get("down_rows", "neurons") == stored
    if stored == "outputs":
        assert stats["routed-down-as-stored" if source else "routed-down-by-outputs"] == 1, stats
        assert "requantized-int8" not in stats, stats
        assert moe.inputs[3].shape == tuple(held.shape)
        want_blob = held.blob if source else quantize(held.dequantize(), "int4").blob
        np.testing.assert_array_equal(out.weights[moe.inputs[3].attrs["name"]], want_blob)
    elif source:
        eight_bits = "requantized-int8" if held.layout == "q4_0" else "wide-int8"
        assert stats[eight_bits] == 1 and "routed-down-as-stored" not in stats, stats
        assert moe.inputs[3].attrs["layout"] == "q8_0"
    else:
        assert moe.inputs[3].attrs["layout"] == "q4_0" and "routed-down-by-outputs" not in stats, stats
    x = _inputs(graph, seq=4)
    want = evaluate(graph, x)[0]
    loose = 0.1 if source or stored == "outputs" else 0.2   # a 4-bit down across the source's groups: rounded twice
    np.testing.assert_allclose(evaluate(out, x)[0], want, atol=loose * np.abs(want).max())


@pytest.mark.parametrize("target", ["x86", "cuda"])
def test_lowering_calls_the_routed_kernel_with_its_down_stack_by_outputs(target):
    """Both families' routed kernels (x86's routed, CUDA's per-slot) take the down stack by outputs: one call."""
    from actsparse import targets
    from actsparse.codegen.lower import lower_graph
    from actsparse.passes.quantize import Quantize

    graph, source = _routed_with_a_source("dense")
    out = Quantize(kind="int4", prequantized={"blk.ffn_down_exps": source}, kernel_family="cpu").run(graph)
    module, _ = lower_graph(out, targets.get(target))
    assert str(module["main"]).count("_gmlp_routeddoe") == 1


def test_lowering_refuses_a_down_stack_by_outputs_without_a_routed_kernel(monkeypatch):
    """A family with no routed kernel runs each expert's dense kernel, which reads a neuron per row: a routed op
    whose down stack is by outputs gets one error that names the cause and the way out, not a wrong kernel call."""
    from actsparse import targets
    from actsparse.codegen import kernels
    from actsparse.codegen.context import LoweringError
    from actsparse.codegen.lower import lower_graph
    from actsparse.passes.quantize import Quantize

    cpu = {k: v for k, v in kernels.FAMILIES["CpuSchedule"].items() if k != "routed"}
    monkeypatch.setitem(kernels.FAMILIES, "CpuSchedule", cpu)
    graph, source = _routed_with_a_source("dense")
    out = Quantize(kind="int4", prequantized={"blk.ffn_down_exps": source}, kernel_family="cpu").run(graph)
    with pytest.raises(LoweringError, match="down stack by outputs needs a routed kernel.*a neuron per row"):
        lower_graph(out, targets.get("x86"))
