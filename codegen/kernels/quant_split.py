"""Row dots of split q4 rows (ir.quant: a row's code bytes, then its fp16 scales, then q4_1's fp16 offsets) on the
int8 dot (x86 VNNI `vpdpbusd`, AVX2 `vpmaddubsw`, aarch64 `sdot`), against x quantized to 8-bit blocks as in
`quant_int8.py`.

Why a kernel of its own: on GGUF's 18-byte blocks a vector held 16 code bytes of each of lanes / 4 rows, so every
row's scale had to be gathered and spread over its lanes per group (4 `vpbroadcastw` + 2 inserts + a blend per 4
rows and group, ~40% of the loop: BENCHMARKS.md, session 8). In a split row K = lanes / 4 consecutive groups are
one contiguous vector load (AVX-512: 64 bytes = 4 groups) and their K scales one 2K-byte load, converted together
and spread by one shuffle; x's side of the same K groups is laid out to match, so the dot needs no row shuffles:

    lanes 4k..4k+3 (group g = K c + k of chunk c):  dot(dot(init, nibbles & 15, x̂ lo), nibbles >> 4, x̂ hi)
    acc[row] += float(that) * (scale_g * dx_g)        (init: -8 * sum(x̂_g) in lane 4k, the q4_0 offset)

then q4_1's offsets, after the chunks, `lanes` groups a load: acc[row] += float(offset[g .. g + lanes]) *
(dx * sum(x̂))[g .. g + lanes] (session 48: per chunk, an fp16 load, a conversion, a shuffle, a multiply and an add,
they were ~30% of the loop; a q4_1 linear at k = 576 took 0.81-0.87x the time in cache, 0.90-0.95x from DRAM), and
one horizontal sum per row at the end. A row's last G % K groups (G its groups) are one more chunk, emitted on
its own: its groups loaded one by one, zeros in the missing lanes (nothing is read past a row's codes and scales).

Where the dot is in `PAIRED_CHUNKS` (AVX2), a row's float work is per two chunks (4 groups) instead of per chunk: the
two chunks' int32 dots (without init) are summed pairwise in-lane (vpunpckldq / vpunpckhdq, one vpaddd: exact), so

    lane v (group g = 2 (v % 2) + v // 4 of the pair, 2 lanes each):
        acc[row] += scale_g * (float(its 2 of g's 4 lanes) * dx_g + init_g * dx_g)   (init_g in one of g's 2 lanes)

with the pair's 4 scales one 8-byte load, one shuffle and one conversion, x's dx and init * dx gathered into that
order once per pair for all rows (a last odd chunk takes the per-chunk form). Session 20 (znver3): 120 instead of 150
instructions per 8 rows x 64 columns; 0.80-0.89x the time with the weights in the caches, within the noise from DRAM
at Mistral-7B dims on one thread (BENCHMARKS.md). Four chunks per iteration, reduced to one lane per group (vphaddd
or unpacks), counted 105 but ran 1.1x slower from DRAM: the 4-chunk loop alone did.

Prepared x (`SplitX`, per token one byte row, Gs = G rounded up to a multiple of 4 with zero groups, whole
chunks for every K): x̂ of every group's columns 0-15 (16 B per group), of its columns 16-31, the int32 accumulator
start (4 lanes per group: -8 * sum(x̂_g), 0, 0, 0), and dx_g as fp32 repeated 4 times; 64 * Gs bytes. Layouts with
offsets (q4_1) add dx_g * sum(x̂_g), one fp32 per group, zero-padded to a multiple of OFFSET_LANES groups. q4_1's
offset term is float work rather than part of the integer start (offset_g / scale_g is no integer).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T
from tvm.tirx import Shuffle

from ...ir.quant import GROUP, LAYOUTS, QuantLayout
from .int8_dots import INT8_DOTS
from .quant_blocks import block_prefetch_macro, half_at, lines_prefetch_macro, next_block_prefetch_macro
from .quant_int8 import quantized_x_groups, row_dots_frame
from .rows import CACHE_LINE, per_token, row_sums_macro
from .schedule import CpuSchedule

HALF = GROUP // 2
OFFSET_LANES = 16  # q4_1's per-group x sums are padded to a multiple of this (the widest vector's float32 lanes)
# int8 dots (`int8_dots.INT8_DOTS` names) whose split-row dots take two chunks per iteration and sum each group's int32
# lanes pairwise (in-lane unpacks and adds) before the float scaling: AVX2, where the float work per row and chunk
# (init add, conversion, scale load / shuffle / conversion, product, FMA) was ~half the loop's instructions
PAIRED_CHUNKS = ("pmaddubsw256",)


def is_split(lay: QuantLayout, sched: CpuSchedule, kernel: str) -> bool:
    """Whether `lay` rows take these row dots (an `int8_row_dots.INT8_ROW_DOTS` test): split rows of 4-bit codes
    (q8_0's: quant_split8.py, or the 4-rows form of quant_int8.py, which reads them through the layout's byte
    offsets), on every int8 dot and in every kernel."""
    return lay.split and lay.bits == 4


@dataclass(frozen=True)
class SplitX:
    """Byte offsets within a token's row of the prepared x (module docstring)."""

    stored: int  # groups, rounded up to a multiple of 4 (zero groups)
    offsets: bool = False  # the layout has offsets: dx * sum(x̂) per group follows

    def lo(self, g):
        return 16 * g

    def hi(self, g):
        return 16 * (self.stored + g)

    def init(self, g):
        return 16 * (2 * self.stored + g)

    def dx(self, g):
        return 16 * (3 * self.stored + g)

    def dx_sum(self, g):  # one float32 per group, OFFSET_LANES of them per load
        return 16 * (4 * self.stored) + 4 * g

    @property
    def nbytes(self) -> int:
        return 64 * self.stored + (4 * -(-self.stored // OFFSET_LANES) * OFFSET_LANES if self.offsets else 0)


def split_x(d: int, dtype: str) -> SplitX:
    lay = LAYOUTS[dtype]
    return SplitX(-(-lay.groups(d) // 4) * 4, lay.offset)


def split_prep_macro(d: int, dtype: str, sched: CpuSchedule):
    """`prep(x, xb, M)`: xb [M, split_x(d, dtype).nbytes] uint8 <- x [M, d] float32 quantized per group."""
    lay = LAYOUTS[dtype]
    xl = split_x(d, dtype)
    G = lay.groups(d)
    centered = lay.bits == 4 and not lay.offset
    assert lay.split and lay.bits == 4, "split rows of 4-bit codes only"

    @T.macro
    def store(xb, m, g, q, s, dx):
        for v in T.vectorized(HALF):
            xb[m, xl.lo(g) + v] = T.Cast("uint8", q[v])
        for v in T.vectorized(HALF):
            xb[m, xl.hi(g) + v] = T.Cast("uint8", q[HALF + v])
        for v in T.vectorized(16):
            xb[m, xl.init(g) + v] = T.uint8(0)
        if centered:  # lane 4k: -8 * sum(x̂)
            xb[m, T.ramp(xl.init(g), 1, 4)] = T.reinterpret("uint8x4", s[0] * -8)
        for k in T.unroll(4):
            xb[m, T.ramp(xl.dx(g) + 4 * k, 1, 4)] = T.reinterpret("uint8x4", dx)
        if xl.offsets:  # dx * sum(x̂), one float32 per group
            xb[m, T.ramp(xl.dx_sum(g), 1, 4)] = T.reinterpret("uint8x4", dx * T.Cast("float32", s[0]))

    walk = quantized_x_groups(d, G, store)

    @T.macro
    def prep(x, xb, M):
        walk(x, xb, M)
        for m in range(M):
            for v in range(xl.lo(G), xl.hi(0)):  # padded groups: x̂ = 0, dx = 0
                xb[m, v] = T.uint8(0)
            for v in range(xl.hi(G), xl.init(0)):
                xb[m, v] = T.uint8(0)
            for v in range(xl.init(G), xl.dx(0)):
                xb[m, v] = T.uint8(0)
            for v in range(xl.dx(G), xl.dx(0) + 16 * xl.stored):
                xb[m, v] = T.uint8(0)
            if xl.offsets:
                for v in range(xl.dx_sum(G), xl.nbytes):
                    xb[m, v] = T.uint8(0)

    return prep


def split_dots_macro(d: int, dtype: str, sched: CpuSchedule, *, gathered: bool, store=None, prefetch=None):
    """`common.dots_macro` for split rows on the integer path: (`dots_all`, `dots`), x the prepared bytes of
    `split_prep_macro`."""
    lay = LAYOUTS[dtype]
    ins = INT8_DOTS[sched.int8_dot]
    L = ins.lanes
    K, VB, R = L // 4, 4 * L, sched.rows  # groups per vector, bytes per vector, rows per step
    xl = split_x(d, dtype)
    G = lay.groups(d)
    chunks, tail = G // K, G % K  # whole chunks, groups of the last partial one
    scales_at = lay.scale_byte(0, lay.stored_groups(d))
    offsets_at = lay.offset_byte(0, lay.stored_groups(d)) if lay.offset else None
    row_bytes = lay.row_bytes(d)
    prefetch = sched.prefetch if prefetch is None else bool(prefetch)
    store = store or (lambda v: v)
    pf = block_prefetch_macro()
    row_sums = row_sums_macro(R, L, store)
    ivec, fvec = f"int32x{L}", f"float32x{L}"
    code_lines = max(1, CACHE_LINE // VB)  # chunks per cache line of codes
    pf_scales = lines_prefetch_macro(R, -(-lay.header_bytes * G // CACHE_LINE))  # a row's scales' (and offsets') lines
    pf_pair = lines_prefetch_macro(R, -(-2 * VB // CACHE_LINE))  # a pair's codes' lines

    def xvec(xb, m, byte):
        return xb[m, T.ramp(byte, 1, VB)]

    def scales(wf, ro_r, c, n, at=scales_at):
        """float32 x L: lanes 4k..4k+3 hold the scale of the chunk's group k (one load, one conversion; the n < K
        groups of a last partial chunk one by one, 0 past them); at=offsets_at: the offsets."""
        if n < K:
            halves = [half_at(wf, ro_r, at + (c * K + k) * 2) if k < n else T.float16(0) for k in range(K)]
            return T.Cast(fvec, Shuffle([T.Broadcast(h, 4) for h in halves], list(range(L))))
        raw = wf[T.ramp(ro_r + T.Cast("int64", at + c * 2 * K), T.int64(1), 2 * K)]
        halves = T.reinterpret(f"float16x{K}" if K > 1 else "float16", raw)
        # (TVM's Shuffle takes no more indices than input lanes: the halves 4 times)
        spread = Shuffle([halves] * 4, [v // 4 for v in range(L)]) if K > 1 else T.Broadcast(halves, L)
        return T.Cast(fvec, spread)

    def codes(wf, ro_r, c, n):
        """uint8 x VB: the code bytes of the chunk's groups (n < K: its n groups, then zeros)."""
        if n == K:
            return wf[T.ramp(ro_r + T.Cast("int64", c * VB), T.int64(1), VB)]
        parts = [wf[T.ramp(ro_r + T.Cast("int64", (c * K + k) * HALF), T.int64(1), HALF)] if k < n
                 else T.Broadcast(T.uint8(0), HALF) for k in range(K)]
        return Shuffle(parts, list(range(VB)))

    def chunk_sum(wf, xb, m, ro_r, c, dxv, xlo, xhi, init, n=K):
        raw = codes(wf, ro_r, c, n)
        lo = T.bitwise_and(raw, T.Broadcast(T.uint8(15), VB))
        hi = T.shift_right(raw, T.Broadcast(T.uint8(4), VB))
        return T.Cast(fvec, ins.dots(init, (lo, xlo), (hi, xhi))) * (scales(wf, ro_r, c, n) * dxv)

    def offsets_dot(wf, xb, m, ro_r, g0, n):
        """float32 x L: the row's offsets of groups g0 .. g0 + n (n <= L; one load and one conversion when n = L, else
        one by one, 0 past them) times x's dx * sum(x̂) of the same groups (zero past the row's groups)."""
        if n == L:
            raw = wf[T.ramp(ro_r + T.Cast("int64", offsets_at + 2 * g0), T.int64(1), 2 * L)]
            halves = T.reinterpret(f"float16x{L}", raw)
        else:
            parts = [T.Broadcast(half_at(wf, ro_r, offsets_at + 2 * (g0 + k)) if k < n else T.float16(0), L)
                     for k in range(L)]
            halves = Shuffle(parts, [k * L + k for k in range(L)])
        return T.Cast(fvec, halves) * T.reinterpret(fvec, x_sums(xb, m, g0))

    def x_sums(xb, m, g0):
        return xb[m, T.ramp(xl.dx_sum(g0), 1, 4 * L)]

    # `PAIRED_CHUNKS`: two chunks per iteration, a group's lanes summed pairwise in int32, the float work per 4 groups.
    # Lane v of a pair's reduced vector: group K * (v % 2) + v // 4 of the pair (chunk v % 2, its 128-bit half v // 4);
    # two lanes per group (v % 4 < 2 the first: x's init and dx * sum(x̂) there, 0 in the second)
    pairs = chunks // 2 if sched.int8_dot in PAIRED_CHUNKS else 0
    streamed = prefetch and not gathered  # a task's own rows: the next step as one block, a share per pair and chunk
    pf_block = next_block_prefetch_macro(R, row_bytes, chunks - pairs)
    assert not pairs or L == 8, "paired chunks: 256-bit vectors of two groups"
    group_lanes = [(v % 2) * L + v // 4 * 4 for v in range(L)]  # from chunk v % 2's vector: a lane of v's group
    first_lanes = [k + (0 if v % 4 < 2 else 1) for v, k in enumerate(group_lanes)]  # ... its first lane, else a 0

    def pair_x(xb, m, p, section, vec, lanes=group_lanes):
        """vec (int32 / float32 x L): x's `section` (dx; with first_lanes: init, dx_sum) of the pair's chunks in the
        reduced order."""
        return Shuffle([T.reinterpret(vec, xvec(xb, m, section((2 * p + j) * K))) for j in range(2)], lanes)

    def pair_scales(wf, ro_r, p, at=scales_at):
        """float32 x L: the pair's 2K scales (at=offsets_at: offsets), one load and one conversion, reduced order."""
        raw = wf[T.ramp(ro_r + T.Cast("int64", at + p * 4 * K), T.int64(1), 4 * K)]
        halves = T.reinterpret(f"float16x{2 * K}", raw)  # (a Shuffle takes no more indices than its inputs' lanes)
        return T.Cast(fvec, Shuffle([halves] * (L // (2 * K)), [K * (v % 2) + v // 4 for v in range(L)]))

    def pair_sum(wf, xb, m, ro_r, p, init_dx, dxv):
        """float32 x L: the pair's 2K groups of row ro_r, two lanes each (reduced order): per chunk the dot without x's
        init, the two chunks' lanes summed pairwise by in-lane unpacks (vpunpck[lh]dq) and an add (exact int32), then
        scaled once, x's init folded in as init * dx (`init_dx`: a multiply-add instead of an int32 add and a
        product); q4_1: plus the offsets times x's dx * sum(x̂)."""
        sums = []
        for j in range(2):
            c = 2 * p + j
            raw = codes(wf, ro_r, c, K)
            lo = T.bitwise_and(raw, T.Broadcast(T.uint8(15), VB))
            hi = T.shift_right(raw, T.Broadcast(T.uint8(4), VB))
            sums.append(ins.dots(T.Broadcast(T.int32(0), L), (lo, xvec(xb, m, xl.lo(c * K))),
                                 (hi, xvec(xb, m, xl.hi(c * K)))))
        low = [k for h in (0, 4) for k in (h, L + h, h + 1, L + h + 1)]  # (a0, b0, a1, b1) per half
        paired = Shuffle(sums, low) + Shuffle(sums, [k + 2 for k in low])  # (a0 + a2, b0 + b2, a1 + a3, b1 + b3)
        return pair_scales(wf, ro_r, p) * (T.Cast(fvec, paired) * dxv + init_dx)

    @T.macro
    def chunk_step(wf, xb, m, ro, acc, c):
        if streamed:
            pf_block(wf, ro, c - pairs)
        elif prefetch:  # the next step's codes, one prefetch per row and cache line
            if c % code_lines == 0:
                for r in T.unroll(R):
                    pf(wf, ro[R + r], c * VB)
        dxv: T.let = T.reinterpret(fvec, xvec(xb, m, xl.dx(c * K)))
        xlo: T.let = xvec(xb, m, xl.lo(c * K))
        xhi: T.let = xvec(xb, m, xl.hi(c * K))
        init: T.let = T.reinterpret(ivec, xvec(xb, m, xl.init(c * K)))
        for r in T.unroll(R):
            acc[T.ramp(r * L, 1, L)] = acc[T.ramp(r * L, 1, L)] + chunk_sum(wf, xb, m, ro[r], c, dxv, xlo, xhi, init)

    @T.macro
    def body(wf, xb, m, ro, acc, i, end, dst, dcol):
        if prefetch and gathered:  # the next step's scales, all at once (a conditional prefetch per chunk: LLVM
            # speculates it)
            pf_scales(wf, ro, R, scales_at)
        if pairs > 0:
            for p in range(pairs):
                if streamed:
                    pf_block(wf, ro, p)
                elif prefetch:  # the next step's codes, one prefetch per row and cache line (a pair's 64 bytes)
                    pf_pair(wf, ro, R, p * 2 * VB)
                pdx: T.let = pair_x(xb, m, p, xl.dx, fvec)
                pinit: T.let = T.Cast(fvec, pair_x(xb, m, p, xl.init, ivec, first_lanes)) * pdx
                for r in T.unroll(R):
                    acc[T.ramp(r * L, 1, L)] = acc[T.ramp(r * L, 1, L)] + pair_sum(wf, xb, m, ro[r], p, pinit, pdx)
            for c in range(2 * pairs, chunks):
                chunk_step(wf, xb, m, ro, acc, c)
        else:
            for c in range(chunks):
                chunk_step(wf, xb, m, ro, acc, c)
        if tail > 0:  # the last partial chunk (x's side is zero past the row's groups)
            for r in T.unroll(R):
                acc[T.ramp(r * L, 1, L)] = acc[T.ramp(r * L, 1, L)] + chunk_sum(
                    wf, xb, m, ro[r], chunks, T.reinterpret(fvec, xvec(xb, m, xl.dx(chunks * K))),
                    xvec(xb, m, xl.lo(chunks * K)), xvec(xb, m, xl.hi(chunks * K)),
                    T.reinterpret(ivec, xvec(xb, m, xl.init(chunks * K))), tail)
        if offsets_at is not None:  # q4_1: sum over groups of offset * dx * sum(x̂), L groups a load
            for r in T.unroll(R):
                for j in T.unroll(G // L):
                    acc[T.ramp(r * L, 1, L)] = acc[T.ramp(r * L, 1, L)] + offsets_dot(wf, xb, m, ro[r], j * L, L)
                if G % L > 0:
                    acc[T.ramp(r * L, 1, L)] = acc[T.ramp(r * L, 1, L)] + offsets_dot(wf, xb, m, ro[r], G - G % L,
                                                                                      G % L)
        row_sums(acc, m, i, end, dst, dcol)

    dots = row_dots_frame(gathered, R, row_bytes, R * L, body)
    return per_token(dots), dots
