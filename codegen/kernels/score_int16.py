"""The certified kernel's score pass on 16-bit integers: q8_0 rows against x rounded to int16 (issue 11).

The float path scores a q8_0 row per 16 weights with a widening (vpmovsxbd), a conversion and an fma: compute-bound
at ~22 GB/s where the fp16 exact kernel streams ~29. Here x is rounded once per call, per token and group of 32
columns, to x̂ = round(x / dx) in int16 (dx = max|x_g| / 32767), and a row's group is one sign extension of its 32
codes to int16 (vpmovsxbw) and 32 / (2 * lanes) chained 2-way int16 dots (`vpdpwssd`) into int32 lanes; each
lane holds at most 4 products (< 2^24: its conversion to fp32 is exact), scaled by the group's fp16 scale times dx
in fp32 and accumulated across groups, one horizontal sum per row at the end.

Exactness: x's rounding costs |x_k − dx x̂_k| <= 0.51 dx per element, so ‖x − x̂‖₂ <= 0.51·√32/32767·‖x‖₂ (plus
√G·2⁻¹⁰⁰ for groups below 2⁻¹⁰⁰, see `prep`), a term the bound's coefficients carry
(passes/certified_gate.X16_ROUNDING); the fp32 steps are fewer than the float path's, which the bound's γ covers.

Which instruction: `SCORE_DOTS`, keyed by the schedule's `int8_dot` (the VNNI extensions that bring vpdpbusd bring
vpdpwssd); a schedule without one keeps the float path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm.script import tirx as T

from ...ir.quant import GROUP, LAYOUTS
from .quant_blocks import flat_rows, group_prefetch_macro, scale
from .quant_int8 import reduce_lanes
from .rows import row_sums_macro
from .schedule import CpuSchedule

X_MAX = 32767
TINY = 2.0 ** -100  # groups whose max |x| is below this round against it (dx never subnormal, 1/dx finite)


@dataclass(frozen=True)
class Int16Dot:
    """A 2-way dot instruction: int32 lanes = acc + per lane the sum of 2 int16 products of a and b."""

    intrinsic: str
    lanes: int  # int32 lanes; a and b are 2 * lanes int16


SCORE_DOTS = {
    "vpdpbusd512": Int16Dot("llvm.x86.avx512.vpdpwssd.512", 16),
    "vpdpbusd256": Int16Dot("llvm.x86.avx512.vpdpwssd.256", 8),  # AVX-VNNI or AVX512-VNNI+VL
}


def has_int16_scores(sched: CpuSchedule) -> bool:
    return sched.int8_dot in SCORE_DOTS


def norm_floor(d: int) -> float:
    """What the kernel adds to ‖x‖₂ so that the rounding term's bound holds for groups below TINY too."""
    return math.sqrt(-(-d // GROUP)) * TINY


def x16_prep_macro(d: int):
    """`prep(x, xq, dxs, M)`: xq [M, G * 32] int16 and dxs [M, G] float32 <- x [M, d] (zero-padded last group)."""
    G, n_full = -(-d // GROUP), d // GROUP

    @T.macro
    def group(xq, dxs, m, g, v32):
        mx = T.alloc_buffer((GROUP // 2,), "float32", scope="global")
        for v in T.vectorized(GROUP // 2):
            mx[v] = T.max(T.abs(v32[v]), T.abs(v32[v + GROUP // 2]))
        reduce_lanes(mx, T.max, GROUP // 2)()
        dx: T.let = T.max(mx[0], T.float32(TINY)) / T.float32(X_MAX)
        inv: T.let = T.float32(1) / dx
        for v in T.vectorized(GROUP):
            xq[m, g * GROUP + v] = T.Cast("int16", T.max(T.min(T.nearbyint(v32[v] * inv), T.float32(X_MAX)),
                                                         T.float32(-X_MAX)))
        dxs[m, g] = dx

    @T.macro
    def prep(x, xq, dxs, M):
        for m in range(M):
            v32 = T.alloc_buffer((GROUP,), "float32", scope="global")
            for g in range(n_full):
                for v in T.vectorized(GROUP):
                    v32[v] = x[m, g * GROUP + v]
                group(xq, dxs, m, g, v32)
            if n_full < G:
                for v in range(GROUP):
                    v32[v] = T.if_then_else(n_full * GROUP + v < d, x[m, T.min(n_full * GROUP + v, d - 1)],
                                            T.float32(0))
                group(xq, dxs, m, n_full, v32)

    return prep


def int16_score_macro(d: int, sched: CpuSchedule):
    """`dot(w8, xq, dxs, m, j0, i, end, dst, dcol)`: dst[m, dcol + i + r] = the q8_0 row j0 + i + r's dot with
    dx·x̂ for the R rows of the step (rows past `end` computed on row end − 1, not stored), next step prefetched."""
    lay = LAYOUTS["q8_0"]
    ins = SCORE_DOTS[sched.int8_dot]
    L, R = ins.lanes, sched.rows
    K = 2 * L  # int16 per dot
    G, row_bytes = lay.stored_groups(d), lay.row_bytes(d)
    pf_group = group_prefetch_macro(lay, G, R)[0]
    sums = row_sums_macro(R, L, lambda total: total)

    def codes16(wf, ro, grp, h):  # the row's 32 codes -> K int16, sign-extended (vpmovsxbw)
        raw = wf[T.ramp(ro + T.Cast("int64", lay.codes_byte(grp, G) + h * K), T.int64(1), K)]
        return T.Cast(f"int16x{K}", T.reinterpret(f"int8x{K}", raw))

    def group_dot(wf, xq, m, ro, grp):  # int32 x L: the group's products, 32 / L per lane (<= 4: < 2^24, exact
        # in fp32); with a zero start LLVM emits vpmaddwd for the first dot, the same 2-way int16 dot
        p = T.Broadcast(T.int32(0), L)
        for h in range(GROUP // K):
            p = T.call_llvm_pure_intrin(f"int32x{L}", ins.intrinsic, p, codes16(wf, ro, grp, h),
                                        xq[m, T.ramp(grp * GROUP + h * K, 1, K)])
        return p

    @T.macro
    def dot(w8, xq, dxs, m, j0, i, end, dst, dcol):
        wf = flat_rows(w8, w8.shape[0], row_bytes)
        ro = T.alloc_buffer((2 * R,), "int64", scope="global")
        for r in T.unroll(2 * R):
            ro[r] = T.Cast("int64", j0 + T.min(i + r, end - 1)) * T.int64(row_bytes)
        acc = T.alloc_buffer((R * L,), "float32", scope="global")
        for v in T.vectorized(R * L):
            acc[v] = T.float32(0)
        for grp in range(G):
            if sched.prefetch:
                pf_group(wf, ro, R, grp)
            dx: T.let = dxs[m, grp]
            for r in T.unroll(R):
                sc: T.let = scale(lay, wf, ro[r], grp, stored=G) * dx
                acc[T.ramp(r * L, 1, L)] = acc[T.ramp(r * L, 1, L)] + T.Cast(
                    f"float32x{L}", group_dot(wf, xq, m, ro[r], grp)) * T.Broadcast(sc, L)
        sums(acc, m, i, end, dst, dcol)

    return dot
