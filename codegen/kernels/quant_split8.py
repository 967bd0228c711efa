"""Row dots of split q8_0 rows (ir.quant: a row's 32 code bytes of every group, then every group's fp16 scale) on a
pair-sum int8 dot with the sign trick (AVX2 `vpmaddubsw` + `vpmaddwd`, `Int8Dot.split_q8`), against x quantized to
8-bit groups as in `quant_int8.py`.

Why a kernel of its own: the 4-rows form of `quant_int8.py` puts 16 codes of each of 2 rows in a vector, so every
row's scale is gathered and spread over its lanes per group (on GGUF's 34-byte blocks, 2 scalar loads, inserts and
a conversion per 2 rows and group). In a split row a group's 32 codes are one vector load and 4 groups' scales one
8-byte load, so the kernel takes one row per vector and 4 groups (a quad) per iteration:

    d_k = dot(|codes_k|, sign(x̂_k, codes_k))           int32 x 8, every lane group 4c + k's (k = 0..3)
    q   = hadd(hadd(d_0, d_1), hadd(d_2, d_3))           lane v: part of group 4c + v % 4's sum (exact int32 adds)
    acc[row] += float(q) * (scales_c * dx_c)             scales_c, dx_c: the quad's 4 values, lane v -> v % 4

with the quad's scales one load, one conversion (the 4 halves repeated in both 128-bit halves), and one horizontal
sum per row at the end. Each group's products stay in their own dot up to `vpmaddwd`: a sign-trick pair reaches
2 * 128 * 127, so two groups' int16 pair sums may not add. A row's last G % 4 groups (G its groups) are one more
quad with zero vectors (and zero scales) in the missing places; nothing is read past a row's codes and scales.

Prepared x (`SplitX8`, per token one byte row, Gs = G rounded up to a multiple of 4 with zero groups): x̂ of every
group (32 signed bytes), then per quad the 4 groups' dx as fp32, repeated twice (32 bytes); 40 * Gs bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T
from tvm.tirx import Shuffle

from ...ir.quant import GROUP, LAYOUTS, QuantLayout
from .int8_dots import INT8_DOTS
from .quant_blocks import half_at, lines_prefetch_macro, next_block_prefetch_macro
from .quant_int8 import quantized_x_groups, row_dots_frame
from .rows import CACHE_LINE, ROWS_PER_LOOP, per_token, row_sums_macro
from .schedule import CpuSchedule

QUAD = 4  # groups per iteration: their sums reduced to one lane each per 128-bit half (module docstring)


def is_split8(lay: QuantLayout, sched: CpuSchedule, kernel: str) -> bool:
    """Whether `lay` rows take these row dots on `sched` (an `int8_row_dots.INT8_ROW_DOTS` test): split 8-bit rows on
    an int8 dot whose entry says so, in every kernel."""
    return bool(sched.int8_dot) and lay.split and lay.bits == 8 and INT8_DOTS[sched.int8_dot].split_q8


@dataclass(frozen=True)
class SplitX8:
    """Byte offsets within a token's row of the prepared x (module docstring)."""

    stored: int  # groups, rounded up to a multiple of QUAD (zero groups)

    def codes(self, g):
        return GROUP * g

    def dx(self, c):
        """The quad c's dx: 8 fp32 lanes, lane v group QUAD * c + v % QUAD's."""
        return GROUP * self.stored + 8 * QUAD * c

    @property
    def nbytes(self) -> int:
        return (GROUP + 2 * QUAD) * self.stored


def split8_x(d: int) -> SplitX8:
    return SplitX8(-(-LAYOUTS["q8_0"].groups(d) // QUAD) * QUAD)


def split8_prep_macro(d: int):
    """`prep(x, xb, M)`: xb [M, split8_x(d).nbytes] uint8 <- x [M, d] float32 quantized per group."""
    xl = split8_x(d)
    G = LAYOUTS["q8_0"].groups(d)

    @T.macro
    def store(xb, m, g, q, s, dx):
        for v in T.vectorized(GROUP):
            xb[m, xl.codes(g) + v] = T.Cast("uint8", q[v])
        for h in T.unroll(2):  # lanes g % 4 and g % 4 + 4 of its quad
            xb[m, T.ramp(xl.dx(g // QUAD) + 4 * (g % QUAD + QUAD * h), 1, 4)] = T.reinterpret("uint8x4", dx)

    walk = quantized_x_groups(d, G, store)

    @T.macro
    def prep(x, xb, M):
        walk(x, xb, M)
        for m in range(M):
            for v in range(xl.codes(G), xl.codes(xl.stored)):  # padded groups: x̂ = 0, dx = 0
                xb[m, v] = T.uint8(0)
            for g in range(G, xl.stored):
                for h in T.unroll(2):
                    for v in T.vectorized(4):
                        xb[m, xl.dx(g // QUAD) + 4 * (g % QUAD + QUAD * h) + v] = T.uint8(0)

    return prep


def split8_dots_macro(d: int, dtype: str, sched: CpuSchedule, *, gathered: bool, store=None, prefetch=None):
    """`common.dots_macro` for split q8_0 rows on the integer path: (`dots_all`, `dots`), x the prepared bytes of
    `split8_prep_macro`."""
    lay = LAYOUTS[dtype]
    ins = INT8_DOTS[sched.int8_dot]
    L, R = ins.lanes, sched.rows
    assert L == 2 * QUAD and lay.split and lay.bits == 8, "split q8_0 rows on 8 int32 lanes (two 128-bit halves)"
    xl = split8_x(d)
    G, stored = lay.groups(d), lay.stored_groups(d)
    quads, tail = G // QUAD, G % QUAD
    RB = ROWS_PER_LOOP if R % ROWS_PER_LOOP == 0 else R  # rows per quad loop
    row_bytes = lay.row_bytes(d)
    prefetch = sched.prefetch if prefetch is None else bool(prefetch)
    store = store or (lambda v: v)
    row_sums = row_sums_macro(R, L, store)
    fvec = f"float32x{L}"
    scales_at = lay.scale_byte(0, stored)
    pf_scales = lines_prefetch_macro(R, -(-2 * G // CACHE_LINE))  # a row's scales' cache lines
    pf_quad = lines_prefetch_macro(RB, QUAD * GROUP // CACHE_LINE)  # a quad's codes' cache lines
    streamed = prefetch and not gathered  # a task's own rows: the next step as one block, a share per pass and quad
    pf_block = next_block_prefetch_macro(R, row_bytes, R // RB * quads)

    def group_dot(wf, xb, m, ro_r, g):
        codes = wf[T.ramp(ro_r + T.Cast("int64", lay.codes_byte(g, stored)), T.int64(1), GROUP)]
        return ins.signed_dot(T.Broadcast(T.int32(0), L), codes, xb[m, T.ramp(xl.codes(g), 1, GROUP)])

    def hadd(a, b):  # per 128-bit half h: (a[4h] + a[4h+1], a[4h+2] + a[4h+3], b[4h] + b[4h+1], b[4h+2] + b[4h+3])
        first = [k + 4 * h for h in range(2) for k in (0, 2, L, L + 2)]
        return Shuffle([a, b], first) + Shuffle([a, b], [k + 1 for k in first])

    def quad_scales(wf, ro_r, c, n):
        """float32 x L: lane v the scale of the quad's group v % 4 (one load; a partial quad's n one by one, 0 past)."""
        if n < QUAD:
            halves = [half_at(wf, ro_r, scales_at + 2 * (QUAD * c + k)) if k < n else T.float16(0)
                      for k in range(QUAD)]
            return T.Cast(fvec, Shuffle([T.Broadcast(h, 2) for h in halves], [2 * (v % QUAD) for v in range(L)]))
        raw = wf[T.ramp(ro_r + T.Cast("int64", scales_at + 2 * QUAD * c), T.int64(1), 2 * QUAD)]
        halves = T.reinterpret(f"float16x{QUAD}", raw)
        return T.Cast(fvec, Shuffle([halves, halves], list(range(L))))

    def quad_sum(wf, xb, m, ro_r, c, dxv, n=QUAD):
        zero = T.Broadcast(T.int32(0), L)
        dots = [group_dot(wf, xb, m, ro_r, QUAD * c + k) if k < n else zero for k in range(QUAD)]
        q = hadd(hadd(dots[0], dots[1]), hadd(dots[2], dots[3]))
        return T.Cast(fvec, q) * (quad_scales(wf, ro_r, c, n) * dxv)

    @T.macro
    def body(wf, xb, m, ro, acc, i, end, dst, dcol):
        if prefetch and gathered:  # the next step's scales, all at once (a conditional prefetch per quad: LLVM
            # speculates it)
            pf_scales(wf, ro, R, scales_at)
        for b in T.unroll(R // RB):  # RB rows at a time (`ROWS_PER_LOOP`)
            for c in range(quads):
                if streamed:
                    pf_block(wf, ro, b * quads + c)
                elif prefetch:  # the next step's codes, one prefetch per row and cache line
                    pf_quad(wf, ro, R + b * RB, lay.codes_byte(QUAD * c, stored))
                dxv: T.let = T.reinterpret(fvec, xb[m, T.ramp(xl.dx(c), 1, 4 * L)])
                for r in T.unroll(RB):
                    acc[T.ramp((b * RB + r) * L, 1, L)] = acc[T.ramp((b * RB + r) * L, 1, L)] + quad_sum(
                        wf, xb, m, ro[b * RB + r], c, dxv)
        if tail > 0:  # the last partial quad (x's side is zero past the row's groups)
            for r in T.unroll(R):
                acc[T.ramp(r * L, 1, L)] = acc[T.ramp(r * L, 1, L)] + quad_sum(
                    wf, xb, m, ro[r], quads, T.reinterpret(fvec, xb[m, T.ramp(xl.dx(quads), 1, 4 * L)]), tail)
        row_sums(acc, m, i, end, dst, dcol)

    dots = row_dots_frame(gathered, R, row_bytes, R * L, body)
    return per_token(dots), dots
