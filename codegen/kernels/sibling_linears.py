"""Sibling linear layers in one CPU kernel: out_g[M, n_g] = x[M, k] @ w_g[n_g, k]^T (+ b_g[n_g]) for g < G (2 or 3).

An attention block's q / k / v projections read the same x; three linear kernels are three parallel launches, three
roundings of x for the int8 dots and three calls for the VM. At SmolLM2's size k and v (192 x 576) took 5.3 µs a call
for ~60 KB of q4_1 rows, about half of it the call's fixed cost (benchmarks/decode_profile.py). Here one launch: each
task streams its share of every matrix's rows in turn (the linear kernel's row dots, `common.dots_macro`), so the
work splits evenly whatever the sizes. Weights stay the separate buffers they are (one dtype for all: the
grouping, codegen/lower_kernels.py, groups only matrices of one layout); nothing is concatenated or sliced.

Buffers (destination passing): x [M, k] float32 (M symbolic), w_1..w_G, then b_1..b_G [n_g] float32 when `bias`, then
out_1..out_G [M, n_g] float32.
"""

from __future__ import annotations

from functools import cache

from tvm.script import tirx as T

from .common import check_dtype, dots_macro, symbol, x_operand
from .quant_blocks import weight_buffer
from .schedule import CpuSchedule

MAX_SIBLINGS = 3


@cache
def sibling_linears(k: int, ns: tuple[int, ...], *, dtype: str = "float32", sched: CpuSchedule, bias: bool = False):
    """PrimFunc (x, w_1..w_G[, b_1..b_G], out_1..out_G); global_symbol encodes all parameters."""
    check_dtype(dtype)
    ns = tuple(int(n) for n in ns)
    if not 2 <= len(ns) <= MAX_SIBLINGS:
        raise ValueError(f"sibling_linears takes 2..{MAX_SIBLINGS} matrices, got {len(ns)}")
    if k < 1 or min(ns) < 1:
        raise ValueError(f"k and every n must be positive, got k={k}, ns={ns}")
    sched = sched.fitted(k, dtype)
    threads, R = sched.threads, sched.rows
    name = symbol("linears", f"k{k}", "n" + "_".join(map(str, ns)), "bias" if bias else "nobias", dtype, sched.tag)
    x8, x8_bytes, prep_x = x_operand(k, dtype, sched)
    dots, _ = dots_macro(k, dtype, sched, gathered=False, x8=x8)
    shapes = [weight_buffer(n, k, dtype) for n in ns]

    def share(n: int):
        nper = (n + threads - 1) // threads

        @T.macro
        def rows(x, w, b, out, M, t):   # task t's rows of one matrix; the bias added as each step's outputs are stored
            j0: T.let = t * nper
            nj: T.let = T.max(T.min(nper, n - j0), 0)
            for st in range((nj + R - 1) // R):
                dots(w, x, M, w, j0, st * R, nj, out, j0)
                if bias:
                    for r in range(T.min(R, nj - st * R)):
                        for m in range(M):
                            out[m, j0 + st * R + r] = out[m, j0 + st * R + r] + b[j0 + st * R + r]
        return rows

    s0, s1, s2 = [share(n) for n in ns] + [None] * (MAX_SIBLINGS - len(ns))

    @T.macro
    def body2(x, w0, w1, b0, b1, o0, o1, M):
        for t in T.parallel(threads):
            s0(x, w0, b0, o0, M, t)
            s1(x, w1, b1, o1, M, t)

    @T.macro
    def body3(x, w0, w1, w2, b0, b1, b2, o0, o1, o2, M):
        for t in T.parallel(threads):
            s0(x, w0, b0, o0, M, t)
            s1(x, w1, b1, o1, M, t)
            s2(x, w2, b2, o2, M, t)

    @T.macro
    def run2(x, w0, w1, b0, b1, o0, o1, M):
        if x8:
            xb = T.alloc_buffer((M, x8_bytes), "uint8")
            prep_x(x, xb, M)
            body2(xb, w0, w1, b0, b1, o0, o1, M)
        else:
            body2(x, w0, w1, b0, b1, o0, o1, M)

    @T.macro
    def run3(x, w0, w1, w2, b0, b1, b2, o0, o1, o2, M):
        if x8:
            xb = T.alloc_buffer((M, x8_bytes), "uint8")
            prep_x(x, xb, M)
            body3(xb, w0, w1, w2, b0, b1, b2, o0, o1, o2, M)
        else:
            body3(x, w0, w1, w2, b0, b1, b2, o0, o1, o2, M)

    (ws0, wt), (ws1, _), *rest = shapes
    n0, n1 = ns[:2]
    if len(ns) == 2 and not bias:
        @T.prim_func
        def linears2(x_h: T.handle, w0: T.Buffer(ws0, wt), w1: T.Buffer(ws1, wt), o0_h: T.handle, o1_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            M = T.int64()
            x = T.match_buffer(x_h, (M, k), "float32")
            o0 = T.match_buffer(o0_h, (M, n0), "float32")
            o1 = T.match_buffer(o1_h, (M, n1), "float32")
            run2(x, w0, w1, w0, w1, o0, o1, M)
        return linears2.with_attr("global_symbol", name)

    if len(ns) == 2:
        @T.prim_func
        def linears2b(x_h: T.handle, w0: T.Buffer(ws0, wt), w1: T.Buffer(ws1, wt), b0: T.Buffer((n0,), "float32"),
                      b1: T.Buffer((n1,), "float32"), o0_h: T.handle, o1_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            M = T.int64()
            x = T.match_buffer(x_h, (M, k), "float32")
            o0 = T.match_buffer(o0_h, (M, n0), "float32")
            o1 = T.match_buffer(o1_h, (M, n1), "float32")
            run2(x, w0, w1, b0, b1, o0, o1, M)
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
            run3(x, w0, w1, w2, w0, w1, w2, o0, o1, o2, M)
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
        run3(x, w0, w1, w2, b0, b1, b2, o0, o1, o2, M)
    return linears3b.with_attr("global_symbol", name)
