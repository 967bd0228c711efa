"""Sibling linear layers in one CPU kernel: out_g[M, n_g] = x[M, k] @ w_g[n_g, k]^T (+ b_g[n_g]) for g < G (2 or 3).

An attention block's q / k / v projections read the same x; three linear kernels are three parallel launches, three
roundings of x for the int8 dots and three calls for the VM. At SmolLM2's size k and v (192 x 576) took 5.3 µs a call
for ~60 KB of q4_1 rows, about half of it the call's fixed cost (benchmarks/decode_profile.py). Here one launch: each
task streams its share of every matrix's rows in turn (the linear kernel's row dots, `common.dots_macro`), so the
work splits evenly whatever the sizes. Weights stay the separate buffers they are (one dtype for all: the
grouping, codegen/lower_siblings.py, groups only matrices of one layout); nothing is concatenated or sliced.

Buffers (destination passing): x [M, k] float32 (M symbolic), w_1..w_G, then b_1..b_G [n_g] float32 when `bias`, then
out_1..out_G [M, n_g] float32.
"""

from __future__ import annotations

from functools import cache

from tvm.script import tirx as T

from .common import symbol, with_x_operand, x_operand
from .linear import fitted_schedule, row_share
from .quant_blocks import weight_buffer
from .schedule import CpuSchedule

MAX_SIBLINGS = 3


@cache
def sibling_linears(k: int, ns: tuple[int, ...], *, dtype: str = "float32", sched: CpuSchedule, bias: bool = False):
    """PrimFunc (x, w_1..w_G[, b_1..b_G], out_1..out_G); global_symbol encodes all parameters."""
    ns = tuple(int(n) for n in ns)
    if not 2 <= len(ns) <= MAX_SIBLINGS:
        raise ValueError(f"sibling_linears takes 2..{MAX_SIBLINGS} matrices, got {len(ns)}")
    sched = fitted_schedule(k, min(ns), dtype, sched)
    G = len(ns)
    name = symbol("linears", f"k{k}", "n" + "_".join(map(str, ns)), "bias" if bias else "nobias", dtype, sched.tag)

    s0, s1, s2 = [row_share(k, n, dtype, sched, x8=x_operand(k, dtype, sched)[0], bias=bias) for n in ns] + [
        None] * (MAX_SIBLINGS - G)

    @T.macro
    def body(x, M, *wbo):   # wbo: the G weights, the G biases (the weights again without), the G outputs
        for t in T.parallel(sched.threads):
            s0(x, wbo[0], wbo[G], wbo[2 * G], wbo[2 * G], M, t)
            s1(x, wbo[1], wbo[G + 1], wbo[2 * G + 1], wbo[2 * G + 1], M, t)
            if G > 2:
                s2(x, wbo[2], wbo[G + 2], wbo[2 * G + 2], wbo[2 * G + 2], M, t)

    run = with_x_operand(k, dtype, sched, body)
    (ws0, wt), (ws1, _), *rest = [weight_buffer(n, k, dtype) for n in ns]
    n0, n1 = ns[:2]
    if G == 2 and not bias:
        @T.prim_func
        def linears2(x_h: T.handle, w0: T.Buffer(ws0, wt), w1: T.Buffer(ws1, wt), o0_h: T.handle, o1_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            M = T.int64()
            x = T.match_buffer(x_h, (M, k), "float32")
            o0 = T.match_buffer(o0_h, (M, n0), "float32")
            o1 = T.match_buffer(o1_h, (M, n1), "float32")
            run(x, M, w0, w1, w0, w1, o0, o1)
        return linears2.with_attr("global_symbol", name)

    if G == 2:
        @T.prim_func
        def linears2b(x_h: T.handle, w0: T.Buffer(ws0, wt), w1: T.Buffer(ws1, wt), b0: T.Buffer((n0,), "float32"),
                      b1: T.Buffer((n1,), "float32"), o0_h: T.handle, o1_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            M = T.int64()
            x = T.match_buffer(x_h, (M, k), "float32")
            o0 = T.match_buffer(o0_h, (M, n0), "float32")
            o1 = T.match_buffer(o1_h, (M, n1), "float32")
            run(x, M, w0, w1, b0, b1, o0, o1)
        return linears2b.with_attr("global_symbol", name)

    (ws2, _), n2 = rest[0], ns[2]
    if not bias:
        @T.prim_func
        def linears3(x_h: T.handle, w0: T.Buffer(ws0, wt), w1: T.Buffer(ws1, wt), w2: T.Buffer(ws2, wt),
                     o0_h: T.handle, o1_h: T.handle, o2_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            M = T.int64()
            x = T.match_buffer(x_h, (M, k), "float32")
            o0 = T.match_buffer(o0_h, (M, n0), "float32")
            o1 = T.match_buffer(o1_h, (M, n1), "float32")
            o2 = T.match_buffer(o2_h, (M, n2), "float32")
            run(x, M, w0, w1, w2, w0, w1, w2, o0, o1, o2)
        return linears3.with_attr("global_symbol", name)

    @T.prim_func
    def linears3b(x_h: T.handle, w0: T.Buffer(ws0, wt), w1: T.Buffer(ws1, wt), w2: T.Buffer(ws2, wt),
                  b0: T.Buffer((n0,), "float32"), b1: T.Buffer((n1,), "float32"), b2: T.Buffer((n2,), "float32"),
                  o0_h: T.handle, o1_h: T.handle, o2_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        M = T.int64()
        x = T.match_buffer(x_h, (M, k), "float32")
        o0 = T.match_buffer(o0_h, (M, n0), "float32")
        o1 = T.match_buffer(o1_h, (M, n1), "float32")
        o2 = T.match_buffer(o2_h, (M, n2), "float32")
        run(x, M, w0, w1, w2, b0, b1, b2, o0, o1, o2)
    return linears3b.with_attr("global_symbol", name)
