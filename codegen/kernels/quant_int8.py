"""Row dots of quantized weights as integer dot products against x quantized to 8-bit blocks (x86 VNNI or AVX2,
ARM sdot).

What llama.cpp does for its quantized types: x is quantized once per call, per token and group of 32 columns,
to x̂ = round(x / dx) int8 with dx = max|x| / 127, and a weight block's dot product with x becomes an integer one,
scaled once per block:

    sum_j w_j x_j  ~=  scale_w * dx * sum_j code_j x̂_j          (+ offset_w * dx * sum_j x̂_j for q4_1)

The integer sum runs on a 4-way 8-bit -> i32 dot instruction (x86 `vpdpbusd`, u8 x s8: AVX512-VNNI on 512-bit
vectors, AVX-VNNI / AVX512-VNNI+VL on 256-bit; aarch64 `sdot`, s8 x s8: FEAT_DotProd on 128-bit NEON), named by
the schedule's `int8_dot` (from the target's feature flags, `codegen/schedules.py`) and looked up in `INT8_DOTS`.
x86 with AVX2 and no VNNI takes llama.cpp's two-step form (`Int8Dot.pair_sum`): vpmaddubsw (u8 x s8, byte pairs
summed to int16, saturating) and vpmaddwd against ones. Its pairs must fit int16: q4 nibbles x x̂ do; q8_0 goes in
by the sign trick (`Int8Dot.sign_trick`: |code| x sign(x̂, code), x̂ signed as for sdot) rather than as x̂ + 128.
x's rounding costs at most dx / 2 per element: each dot is off by at most sum_groups (dx / 2) * sum_j |w_j|
(tests/test_kernels_int8.py checks that bound).

Layout of one dot: P = lanes / 4 rows side by side, 16 code bytes each (a q4 block's 16 bytes, masked to their
low nibbles for columns 0-15 and shifted for columns 16-31; a q8_0 group's first and second 16 codes), against
the matching 16 bytes of x̂ repeated P times (prepared so by `x8_prep_macro`); lane 4p..4p+3 of the int32
result then sums row p's products. q4 nibbles (0..15) are the first operand, x̂ the second (both signed
instructions take them as they are); q4_0's "- 8" enters as -8 * sum(x̂) in lane 4p of the accumulator's initial
value. q8_0 codes are signed: with a u8 x s8 dot x̂ + 128 is the u8 operand and a second product with 128s
subtracts 128 * sum(code); with an s8 x s8 dot (sdot) codes and x̂ multiply as they are (session 13 tried codes xor
0x80 as the u8 operand from -128 * sum(x̂): two dots per block instead of four, 77 -> 73 instructions per 8 rows and
group, but 1.00-1.09x the time interleaved, BENCHMARKS.md: not kept). The per-row scale (x dx) is applied per
block in fp32 (lanes 4p..4p+3 carry row p's scale), and fp32 accumulates across blocks. Split q8_0 rows (session
22) are read through the layout's byte offsets here (VNNI, sdot); on AVX2 they take `quant_split8.py`.

q8_0 on AVX512-VNNI may take a layout of its own, a row's two groups per vector, in the kernels the schedule names
(`quant_paired8.py`). Which of these row dots a layout takes on a schedule is `int8_row_dots.INT8_ROW_DOTS`'s choice.

Prepared x (`XBlocks`): per token one byte row: per group the first-half operand, the second-half operand and
the initial accumulator (lanes * 4 bytes each), then every group's dx (fp32), then dx * sum(x̂) (fp32, for a block
layout with offsets: q4_1 had one until its rows were split, session 19; split rows take `quant_split.py`).
The last partial group of x is padded with zeros (x̂ = 0), so padded weight columns contribute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T
from tvm.tirx import Shuffle

from ...ir.quant import GROUP, LAYOUTS
from .int8_dots import INT8_DOTS
from .quant_blocks import flat_rows, group_prefetch_macro, next_block_prefetch_macro, offset, scale, step_start_macro
from .rows import per_token
from .schedule import CpuSchedule

HALF = GROUP // 2


def uses_int8_dot(dtype: str, sched: CpuSchedule) -> bool:
    """Whether rows of `dtype` take the integer path on `sched` (an int8 dot and a quantized layout)."""
    return bool(sched.int8_dot) and dtype in INT8_DOTS[sched.int8_dot].layouts


@dataclass(frozen=True)
class XBlocks:
    """Byte offsets, within a token's row of the prepared x, of group g's operands and scales."""

    groups: int
    lanes: int

    def operand(self, g, part: int):
        """part 0: x̂ of columns 0-15 repeated lanes/4 times; 1: columns 16-31; 2: the accumulator's initial value."""
        return (g * 3 + part) * 4 * self.lanes

    def dx(self, g):
        return self.groups * 12 * self.lanes + 4 * g

    def dx_sum(self, g):
        return self.groups * (12 * self.lanes + 4) + 4 * g

    @property
    def nbytes(self) -> int:
        return self.groups * (12 * self.lanes + 8)


def x_blocks(d: int, sched: CpuSchedule) -> XBlocks:
    return XBlocks(-(-d // GROUP), INT8_DOTS[sched.int8_dot].lanes)


def reduce_lanes(buf, op, lanes: int):
    """buf[0] = op over buf[0:lanes] (lanes a power of two), by vector halving."""

    @T.macro
    def red():
        if lanes >= 32:
            for v in T.vectorized(16):
                buf[v] = op(buf[v], buf[v + 16])
        if lanes >= 16:
            for v in T.vectorized(8):
                buf[v] = op(buf[v], buf[v + 8])
        if lanes >= 8:
            for v in T.vectorized(4):
                buf[v] = op(buf[v], buf[v + 4])
        if lanes >= 4:
            for v in T.vectorized(2):
                buf[v] = op(buf[v], buf[v + 2])
        buf[0] = op(buf[0], buf[1])

    return red


def x8_prep_macro(d: int, dtype: str, sched: CpuSchedule):
    """`prep(x, xb, M)`: xb [M, x_blocks(d, sched).nbytes] uint8 <- x [M, d] float32 quantized (module docstring)."""
    lay = LAYOUTS[dtype]
    xl = x_blocks(d, sched)
    L, P, G = xl.lanes, xl.lanes // 4, xl.groups
    q8, centered = lay.bits == 8, lay.bits == 4 and not lay.offset  # q4_0: the -8 term
    biased = q8 and not INT8_DOTS[sched.int8_dot].signed_codes  # q8_0 on a u8 x s8 dot: x̂ + 128 unsigned

    @T.macro
    def store(xb, m, g, q, s, dx):
        for h in T.unroll(2):
            for p in T.unroll(P):
                for v in T.vectorized(HALF):
                    xb[m, xl.operand(g, h) + p * HALF + v] = T.Cast("uint8", q[h * HALF + v] + (128 if biased else 0))
        for v in T.vectorized(4 * L):
            xb[m, xl.operand(g, 2) + v] = T.uint8(0)
        if centered:  # lane 4p: -8 * sum(x̂)
            for p in T.unroll(P):
                xb[m, T.ramp(xl.operand(g, 2) + p * 16, 1, 4)] = T.reinterpret("uint8x4", s[0] * -8)
        xb[m, T.ramp(xl.dx(g), 1, 4)] = T.reinterpret("uint8x4", dx)
        xb[m, T.ramp(xl.dx_sum(g), 1, 4)] = T.reinterpret("uint8x4", dx * T.Cast("float32", s[0]))

    return quantized_x_groups(d, G, store)


def quantized_x_groups(d: int, groups: int, store):
    """The macro prep(x, xb, M) that rounds every token's groups of GROUP x values to int8 (module docstring:
    x̂ = round(x / dx), dx = max|x| / 127) and hands each group to `store(xb, m, g, q, s, dx)`: q [GROUP] int32 the
    x̂, s[0] their sum, dx the scale (NaN if some x of the group is not finite, so its dot products are NaN as on
    the float path): the rounding every 8-bit x layout shares, `store` its own byte layout."""

    @T.macro
    def group(xb, m, g, v32):
        mx = T.alloc_buffer((HALF,), "float32", scope="global")
        for v in T.vectorized(HALF):
            mx[v] = T.max(T.abs(v32[v]), T.abs(v32[v + HALF]))
        reduce_lanes(mx, T.max, HALF)()
        nan = T.alloc_buffer((HALF,), "float32", scope="global")  # 0, or NaN if some x is not finite (max drops NaN)
        for v in T.vectorized(HALF):
            nan[v] = T.if_then_else(T.And(T.isfinite(v32[v]), T.isfinite(v32[v + HALF])), T.float32(0),
                                    T.float32(float("nan")))  # (x * 0 would be folded to 0 by TVM's simplifier)
        reduce_lanes(nan, lambda a, b: a + b, HALF)()
        inv: T.let = T.if_then_else(mx[0] > T.float32(0), T.float32(127) / mx[0], T.float32(0))
        q = T.alloc_buffer((GROUP,), "int32", scope="global")
        for v in T.vectorized(GROUP):
            q[v] = T.Cast("int32", T.nearbyint(v32[v] * inv))
        s = T.alloc_buffer((HALF,), "int32", scope="global")
        for v in T.vectorized(HALF):
            s[v] = q[v] + q[v + HALF]
        reduce_lanes(s, lambda a, b: a + b, HALF)()
        store(xb, m, g, q, s, mx[0] / T.float32(127) + nan[0])

    return each_x_group(d, groups, group)


def each_x_group(d: int, groups: int, group):
    """The macro prep(x, xb, M) that hands every token's groups of GROUP x values, as float32, to the per-group
    macro `group(xb, m, g, v32)` (the partial last group zero-padded): the walk every 8-bit x layout shares."""
    n_full = d // GROUP

    @T.macro
    def prep(x, xb, M):
        for m in range(M):
            v32 = T.alloc_buffer((GROUP,), "float32", scope="global")
            for g in range(n_full):
                for v in T.vectorized(GROUP):
                    v32[v] = x[m, g * GROUP + v]
                group(xb, m, g, v32)
            if n_full < groups:  # the partial last group, zero-padded
                for v in range(GROUP):
                    v32[v] = T.if_then_else(n_full * GROUP + v < d, x[m, T.min(n_full * GROUP + v, d - 1)],
                                            T.float32(0))
                group(xb, m, n_full, v32)

    return prep


def row_dots_frame(gathered: bool, rows: int, row_bytes: int, acc_lanes: int, body):
    """`dots(w, x, m, row_list, base, i, end, dst, dcol)` of an integer row-dot kernel (here and `quant_split.py`):
    w's flat view wf (`flat_rows`), the step's row byte offsets ro [2 rows] and fp32 accumulators acc [acc_lanes]
    set up (`step_start_macro`), then the kernel's `body(wf, x, m, ro, acc, i, end, dst, dcol)`. (TVMScript macros
    return no buffers, so the shared start calls the body rather than handing ro and acc back.)"""
    start = step_start_macro(gathered, rows, row_bytes, acc_lanes)

    @T.macro
    def dots(w, x, m, row_list, base, i, end, dst, dcol):
        wf = flat_rows(w, w.shape[0], row_bytes)
        ro = T.alloc_buffer((2 * rows,), "int64", scope="global")  # byte offsets of the step's rows, then the next's
        acc = T.alloc_buffer((acc_lanes,), "float32", scope="global")
        start(ro, acc, row_list, base, i, end)
        body(wf, x, m, ro, acc, i, end, dst, dcol)

    return dots


def int8_dots_macro(d: int, dtype: str, sched: CpuSchedule, *, gathered: bool, store=None, prefetch=None):
    """`common.dots_macro` on the integer path: (`dots_all`, `dots`) with the same arguments, except that x is
    the prepared byte buffer of `x8_prep_macro`."""
    lay = LAYOUTS[dtype]
    ins = INT8_DOTS[sched.int8_dot]
    L = ins.lanes
    xl = x_blocks(d, sched)
    P, VB, R, G = L // 4, L * 4, sched.rows, xl.groups
    S = -(-R // P)  # row sets per step
    q8, off = lay.bits == 8, lay.offset
    prefetch = sched.prefetch if prefetch is None else bool(prefetch)
    store = store or (lambda v: v)
    ivec = f"int32x{L}"

    row_bytes, stored = lay.row_bytes(d), lay.stored_groups(d)
    # q8_0's rows here (split, read through the layout's byte offsets); split q4 rows: quant_split.py
    pf_group, pf_scales = group_prefetch_macro(lay, stored, R)
    streamed = prefetch and not gathered  # a task's own rows: the next step as one block, a share per group
    pf_block = next_block_prefetch_macro(R, row_bytes, G)

    def rr(ro, s, p):  # byte offset of row p of set s (past the step's rows: its last row again, not stored)
        return ro[T.min(s * P + p, R - 1)]

    def dot(acc, a, b):  # acc + the 4-way a (u8; s8 if `signed_a`) x b (s8) dot per int32 lane; the bytes go in as
        # byte vectors (TVM 0.27's LLVM declares vpdpbusd with <64 x i8> operands; <16 x i32> ones fail its verifier)
        return ins.dot(acc, a, b)

    def codes(w, ro, s, grp, second: bool):
        """uint8 x VB: the set's P rows' code bytes of columns 0-15 (second: 16-31) side by side."""
        start = T.Cast("int64", lay.codes_byte(grp, stored) + (HALF if q8 and second else 0))
        raw = Shuffle([w[T.ramp(rr(ro, s, p) + start, T.int64(1), HALF)] for p in range(P)], list(range(VB)))
        if q8:
            return raw
        return T.shift_right(raw, T.Broadcast(T.uint8(4), VB)) if second else T.bitwise_and(
            raw, T.Broadcast(T.uint8(15), VB))

    def per_row(values, fill=None):
        """float32 x L from P fp16 values: lanes 4p..4p+3 hold values[p] (fill: lane 4p values[p], the other three
        `fill`), widened as one vector (one vcvtph2ps rather than one conversion per row)."""
        vecs = [T.Broadcast(v, 4) for v in values]
        if fill is None:
            halves = Shuffle(vecs, list(range(L)))
        else:
            halves = Shuffle([*vecs, T.Broadcast(fill, 4)], [v if v % 4 == 0 else 4 * P for v in range(L)])
        return T.Cast(f"float32x{L}", halves)

    def xvec(xb, m, grp, part):
        return xb[m, T.ramp(xl.operand(grp, part), 1, VB)]

    def int_dot(w, xb, m, ro, s, grp):
        """int32 x L: per lane 4p..4p+3, row p's integer products with x̂ (summed over the 4 lanes: the block's)."""
        lo, hi = codes(w, ro, s, grp, False), codes(w, ro, s, grp, True)
        if q8 and ins.signed_codes:  # code . x̂ (each half widened apart: a sign-trick pair may near int16's limit)
            zero = T.Broadcast(T.int32(0), L)
            return ins.signed_dot(ins.signed_dot(zero, lo, xvec(xb, m, grp, 0)), hi, xvec(xb, m, grp, 1))
        if q8:  # (x̂ + 128) . code - 128 . code
            zero, c128 = T.Broadcast(T.int32(0), L), T.Broadcast(T.uint8(128), VB)
            return dot(dot(zero, xvec(xb, m, grp, 0), lo), xvec(xb, m, grp, 1), hi) - dot(dot(zero, c128, lo), c128, hi)
        # nibbles . x̂, from -8 * sum(x̂) (q4_0) or 0 (q4_1) in lane 4p
        return ins.dots(T.reinterpret(ivec, xvec(xb, m, grp, 2)), (lo, xvec(xb, m, grp, 0)), (hi, xvec(xb, m, grp, 1)))

    def block_sum(w, xb, m, ro, s, grp, dx, dx_sum):
        """float32 x L: the set's block dot products (lanes 4p..4p+3 of row p); w the flat view, ro the rows'
        byte offsets (`flat_rows`)."""
        scales = per_row([scale(lay, w, rr(ro, s, p), grp, widen=False, stored=stored) for p in range(P)])
        v = T.Cast(f"float32x{L}", int_dot(w, xb, m, ro, s, grp)) * (scales * dx)
        if off:
            v = v + per_row([offset(lay, w, rr(ro, s, p), grp, widen=False, stored=stored) for p in range(P)],
                            T.float16(0)) * dx_sum
        return v

    @T.macro
    def body(wf, xb, m, ro, acc, i, end, dst, dcol):
        if prefetch and gathered:  # the next step's scales (split rows: behind the codes), all at once
            pf_scales(wf, ro, R, 0, G)
        for grp in range(G):
            if streamed:
                pf_block(wf, ro, grp)
            elif prefetch:  # the next step's rows, one prefetch per row and block (q8_0) or line
                pf_group(wf, ro, R, grp)
            dx: T.let = T.reinterpret("float32", xb[m, T.ramp(xl.dx(grp), 1, 4)])
            dx_sum: T.let = T.reinterpret("float32", xb[m, T.ramp(xl.dx_sum(grp), 1, 4)])
            for s in T.unroll(S):
                acc[T.ramp(s * L, 1, L)] = acc[T.ramp(s * L, 1, L)] + block_sum(wf, xb, m, ro, s, grp, dx,
                                                                                dx_sum)
        for s in T.unroll(S):
            for p in T.unroll(P):
                if s * P + p < R:
                    if i + s * P + p < end:
                        dst[m, dcol + i + s * P + p] = store(acc[s * L + p * 4] + acc[s * L + p * 4 + 1]
                                                             + acc[s * L + p * 4 + 2] + acc[s * L + p * 4 + 3])

    dots = row_dots_frame(gathered, R, row_bytes, S * L, body)
    return per_token(dots), dots
