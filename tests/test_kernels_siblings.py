"""The CPU kernels that save a decode step calls: the gate / up kernel (kernels/gate_up.py: act_g(x Wg^T + bg) *
act_u(x Wu^T + bu)), the sibling linears (kernels/sibling_linears.py: q / k / v reading one x) and the linear kernel
adding a residual as it stores (kernels/linear.py `residual`), against float64 on the weights' exact (dequantized)
values, x86 natively and ARM under qemu; and their lowering: a dense quantized build calls them, and equals the
interpreter.

Hypothesis draws the layout (float and every quantized one), input dims not a multiple of the 32-column group,
output sizes from 1 (fewer rows than threads), the token count, biases and the activations. On a host whose
schedule has an int8 dot, quantized rows take x rounded to 8-bit blocks: the reference does too (`x_seen`).
"""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actsparse
from actsparse.ir.activations import ACTIVATIONS

from .helpers import gated_mlp_graph, mlp_input
from .kernel_cases import QUANT_DTYPES, Call, assert_close, cross_kernels, examples, kernel_weights, run_native, x_seen

pytest.importorskip("tvm")

DTYPES = ("float32", "float16", *QUANT_DTYPES)
ACT_PAIRS = (("silu", "identity", 0.0), ("gelu_tanh", "identity", 0.0), ("fatrelu", "relu", 0.25),
             ("relu", "relu", 0.0))
ragged = st.integers(1, 100).filter(lambda d: d % 32)


def _schedule(target: str, float_x: bool):
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    sched = schedule_for(targets.get(target))
    return replace(sched, int8_dot="") if float_x else sched


def _x8(dtype, sched) -> bool:
    """Whether the kernel's row dots see x rounded to 8-bit blocks (the schedule's int8 dot serves the layout)."""
    from actsparse.codegen.kernels.int8_row_dots import int8_row_dots

    return int8_row_dots(dtype, sched, "") is not None


def _weights(rng, shapes, dtype):
    ws = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    if dtype == "float16":
        ws = [w.astype(np.float16) for w in ws]
    return kernel_weights(ws, dtype)


def gate_up_case(rng, M, k, n, dtype, acts, bias, sched, fused=False, gate_first=True):
    """(prim, args with the output last, reference, scale). `fused`: gate and up the halves of one matrix (and bias),
    the gate's first where `gate_first`."""
    from actsparse.codegen.kernels import kernel

    gate_act, up_act, threshold = acts
    prim = kernel("gate_up", k, n, gate_act=gate_act, up_act=up_act, threshold=threshold, dtype=dtype, sched=sched,
                  bias=bias, fused=fused, gate_first=gate_first)
    x = rng.standard_normal((M, k)).astype(np.float32)
    bs = [rng.standard_normal(n).astype(np.float32) for _ in range(2)] if bias else []
    if fused:   # one matrix [2n, k] quantized as one; the reference takes its halves
        kw, (w,) = _weights(rng, [(2 * n, k)], dtype)
        halves = (w[:n], w[n:]) if gate_first else (w[n:], w[:n])
        wg, wu = halves
        kw = [*kw, *kw]   # the one matrix as the gate's and the up's (and the one bias likewise)
        bias_args = [np.concatenate(bs if gate_first else bs[::-1])] * 2 if bias else []
    else:
        kw, (wg, wu) = _weights(rng, [(n, k), (n, k)], dtype)
        bias_args = bs
    xs = x_seen(x, _x8(dtype, sched)).astype(np.float64)
    bg, bu = bs or (np.zeros(n), np.zeros(n))
    g, u = xs @ wg.astype(np.float64).T + bg, xs @ wu.astype(np.float64).T + bu
    act_g, act_u = ACTIVATIONS[gate_act].reference(g, threshold), ACTIVATIONS[up_act].reference(u, 0.0)
    ref = act_g * act_u
    # each projection's float32 summation error (linear_reference's scale) through the product (the activations'
    # slopes are at most ~1.13), plus the activations' own float32 rounding
    sg, su = (np.abs(xs) @ np.abs(w.astype(np.float64)).T + np.abs(b) for w, b in ((wg, bg), (wu, bu)))
    scale = 1.2 * (sg * (np.abs(act_u) + 1) + np.abs(act_g) * su) + np.abs(ref)
    return prim, [x, *kw, *bias_args, np.full((M, n), np.nan, np.float32)], ref, scale


def linears_case(rng, M, k, ns, dtype, bias, sched):
    """(prim, args with the outputs last, references, scales)."""
    from actsparse.codegen.kernels import kernel

    prim = kernel("linears", k, tuple(ns), dtype=dtype, sched=sched, bias=bias)
    x = rng.standard_normal((M, k)).astype(np.float32)
    kw, ws = _weights(rng, [(n, k) for n in ns], dtype)
    bs = [rng.standard_normal(n).astype(np.float32) for n in ns] if bias else []
    xs = x_seen(x, _x8(dtype, sched)).astype(np.float64)
    refs = [xs @ w.astype(np.float64).T + (bs[i] if bias else 0) for i, w in enumerate(ws)]
    scales = [np.abs(xs) @ np.abs(w.astype(np.float64)).T + 1 for w in ws]
    return prim, [x, *kw, *bs, *(np.full((M, n), np.nan, np.float32) for n in ns)], refs, scales


@settings(max_examples=examples(4), suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(DTYPES), k=ragged, n=st.integers(1, 48), M=st.sampled_from((1, 3)),
       acts=st.sampled_from(ACT_PAIRS), bias=st.booleans(), float_x=st.booleans(),
       fused=st.sampled_from((None, True, False)), seed=st.integers(0, 999))
def test_x86_gate_up_kernel_matches_the_reference(dtype, k, n, M, acts, bias, float_x, fused, seed):
    """fused None: two matrices; True / False: one, the gate's half first / second."""
    sched = _schedule("x86", float_x)
    prim, args, ref, scale = gate_up_case(np.random.default_rng(seed), M, k, n, dtype, acts, bias, sched,
                                          fused=fused is not None, gate_first=fused is not False)
    (out,) = run_native(prim, [Call(args, ref, scale, dtype)])
    assert_close(out, ref, scale, dtype)


@settings(max_examples=examples(4), suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(DTYPES), k=ragged, ns=st.lists(st.integers(1, 40), min_size=2, max_size=3),
       M=st.sampled_from((1, 3)), bias=st.booleans(), float_x=st.booleans(), seed=st.integers(0, 999))
def test_x86_sibling_linears_kernel_matches_the_reference(dtype, k, ns, M, bias, float_x, seed):
    import tvm

    from actsparse import targets
    from actsparse.codegen.kernels.common import build_standalone

    sched = _schedule("x86", float_x)
    prim, args, refs, scales = linears_case(np.random.default_rng(seed), M, k, ns, dtype, bias, sched)
    tensors = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args]
    build_standalone(prim, targets.get("x86").tvm_target())(*tensors)
    for out, ref, scale in zip(tensors[-len(ns):], refs, scales):
        assert_close(out.numpy(), ref, scale, dtype)


def residual_case(rng, M, k, n, dtype, sched, lead=1):
    """The linear kernel with a residual addend (kernels/linear.py `residual`): (prim, args, reference, scale); r and
    the output [M, n] (lead 1) or [1, M, n] (lead 2: a decoder's [batch, seq, n], taken as it is)."""
    from actsparse.codegen.kernels import kernel

    prim = kernel("linear", k, n, dtype=dtype, sched=sched, residual=lead)
    shape = (M, n) if lead == 1 else (1, M, n)
    x, r = rng.standard_normal((M, k)).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    (kw,), (w,) = _weights(rng, [(n, k)], dtype)
    xs = x_seen(x, _x8(dtype, sched)).astype(np.float64)
    ref = (xs @ w.astype(np.float64).T).reshape(shape) + r
    scale = (np.abs(xs) @ np.abs(w.astype(np.float64)).T + 1).reshape(shape)
    return prim, [x, kw, r, np.full(shape, np.nan, np.float32)], ref, scale


@settings(max_examples=examples(6), suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(DTYPES), k=ragged, n=st.integers(1, 48), M=st.sampled_from((1, 3)),
       float_x=st.booleans(), lead=st.sampled_from((1, 2)), seed=st.integers(0, 999))
def test_x86_linear_kernel_adds_the_residual_as_it_stores(dtype, k, n, M, float_x, lead, seed):
    prim, args, ref, scale = residual_case(np.random.default_rng(seed), M, k, n, dtype, _schedule("x86", float_x),
                                           lead)
    (out,) = run_native(prim, [Call(args, ref, scale, dtype)])
    assert_close(out, ref, scale, dtype)


@settings(max_examples=1, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(QUANT_DTYPES), k=st.integers(33, 60).filter(lambda d: d % 32), seed=st.integers(0, 99))
def test_arm_gate_up_sibling_linears_and_residual_match_the_reference_under_qemu(dtype, k, seed):
    rng, sched = np.random.default_rng(seed), _schedule("arm", False)
    gate_up = gate_up_case(rng, 2, k, 9, dtype, ACT_PAIRS[0], True, sched)
    linears = linears_case(rng, 1, k, (7, 3, 5), dtype, False, sched)
    residual = residual_case(rng, 2, k, 11, dtype, sched, lead=2)
    kernels = cross_kernels([gate_up[0], linears[0], residual[0]])
    (h,), outs, (y,) = kernels.run([(str(gate_up[0].attrs["global_symbol"]), gate_up[1], [len(gate_up[1]) - 1]),
                                    (str(linears[0].attrs["global_symbol"]), linears[1], [4, 5, 6]),
                                    (str(residual[0].attrs["global_symbol"]), residual[1], [3])])
    assert_close(h, gate_up[2], gate_up[3], dtype)
    for out, ref, scale in zip(outs, linears[2], linears[3]):
        assert_close(out, ref, scale, dtype)
    assert_close(y, residual[2], residual[3], dtype)


def _calls(cm) -> list[str]:
    return [line.split()[1] for line in cm.executable.as_text().splitlines() if line.strip().startswith("call ")]


def test_a_dense_quantized_build_calls_the_gate_up_kernel_and_the_sibling_linears():
    """Dense int4: each gated MLP is the gate / up kernel then the down projection's linear (no separate gate and up
    linears, no Relax activation), an attention block's q / k / v one sibling-linears call; the module equals the
    interpreter on the quantized weights."""
    from actsparse.ir.interpreter import evaluate

    from .helpers import assert_quantized_close, x_as_dots_see

    graph = gated_mlp_graph(d=40, n=72, act="silu")
    x = mlp_input(d=40, seq=3)
    cm = actsparse.compile(graph, (x,), mode="dense", quantize="int4")
    calls = _calls(cm)
    assert sum(c.startswith("actsparse_gate_up_k40_n72_silu_identity") for c in calls) == 1, calls
    assert sum(c.startswith("actsparse_linear_k72_n40") for c in calls) == 1, calls
    assert not any(c.startswith("actsparse_linear_k40_n72") for c in calls), calls
    assert_quantized_close(cm(x), evaluate(cm.graph, [x_as_dots_see(x, "q4_0")])[0], kernels=("dense",))


@pytest.mark.parametrize("up_first", [False, True])
def test_a_fused_gate_up_projection_takes_the_gate_up_kernel_on_its_two_halves(up_first):
    """A Phi-3-style MLP (one gate_up projection, here with a bias, split in two) under int4: dense mode keeps it
    `gated_mlp{fused}`, the gate / up kernel reads the halves of the one quantized matrix (the gate's half as the
    block says), and the module equals the interpreter on the quantized weights."""
    import torch
    from torch import nn

    from actsparse.ir.interpreter import evaluate

    from .helpers import assert_quantized_close, x_as_dots_see

    class FusedSwiGLU(nn.Module):
        def __init__(self, d, n):
            super().__init__()
            self.gate_up, self.down = nn.Linear(d, 2 * n), nn.Linear(n, d, bias=False)

        def forward(self, x):
            first, second = self.gate_up(x).chunk(2, dim=-1)
            gate, up = (second, first) if up_first else (first, second)
            return self.down(torch.nn.functional.silu(gate) * up)

    torch.manual_seed(0)
    model, x = FusedSwiGLU(40, 72).eval(), torch.randn(1, 3, 40)
    cm = actsparse.compile(model, (x,), mode="dense", quantize="int4")
    (block,) = [n for n in cm.graph.nodes if n.op == "gated_mlp"]
    assert block.attrs["fused"] and block.attrs["gate_first"] is not up_first
    calls = _calls(cm)
    assert sum(c.startswith(f"actsparse_gate_up_k40_n72_silu_identity_00000000_bias_fused{int(not up_first)}")
               for c in calls) == 1, calls
    xs = x.numpy()
    assert_quantized_close(cm(xs), evaluate(cm.graph, [x_as_dots_see(xs, "q4_0")])[0], kernels=("dense",))
