"""Row dots of q8_0 rows on AVX512-VNNI with a row's two groups per vector, against x quantized to 8-bit groups as
in `quant_int8.py` (in its `XBlocks` buffer, laid out to match).

q8_0 on AVX512-VNNI (16 lanes, u8 x s8) may take a layout of its own (`paired_dots`): one row per vector, its two
consecutive 32-code groups side by side (one 64-byte load of a split row), xor 0x80 as the u8 operand against x̂ of both
groups, -128 * sum(x̂) in x's accumulator start: one dot per row and two groups, no row shuffles and no
128 * sum(code) correction (67 instead of 77 instructions per 8 rows and group; indexed q8_0 0.84x hot, 0.92-0.93x
from DRAM at 1 thread, BENCHMARKS.md session 15). Session 13's xor form on the 4-rows layout saved only 4 of 77.
Streamed rows (dense, exact's gate) were 1.03-1.04x slower with it, and x's layout is one per kernel, so the kernel
chooses (`CpuSchedule.paired_q8`: the indexed kernel by default; `paired_q8`, this module's test in
`int8_row_dots.INT8_ROW_DOTS`).
"""

from __future__ import annotations

from tvm.script import tirx as T
from tvm.tirx import Shuffle

from ...ir.quant import GROUP, LAYOUTS, QuantLayout
from .int8_dots import INT8_DOTS
from .quant_blocks import group_prefetch_macro, next_block_prefetch_macro, scale
from .quant_int8 import quantized_x_groups, row_dots_frame, x_blocks
from .rows import ROWS_PER_LOOP, per_token, row_sums_macro
from .schedule import CpuSchedule


def paired_q8(lay: QuantLayout, sched: CpuSchedule, kernel: str) -> bool:
    """Whether `kernel`'s `lay` rows take `paired_dots` (a row's two consecutive blocks in one vector; an
    `int8_row_dots.INT8_ROW_DOTS` test): q8_0 on a 16-lane u8 x s8 dot (AVX512-VNNI), for the kernels the schedule
    names (`CpuSchedule.paired_q8`)."""
    ins = INT8_DOTS[sched.int8_dot]
    return lay.bits == 8 and not ins.signed_a and ins.lanes == 16 and sched.pairs_q8(kernel)


def paired_prep_macro(d: int, dtype: str, sched: CpuSchedule):
    """x for `paired_dots`, in an `x_blocks(d, sched)` buffer: group g's bytes go to its pair's slots (pair p = g // 2,
    half k = g % 2): x̂ (32 bytes) at operand(2p, 0) + 32k, -128 * sum(x̂) in int32 lane 8k of operand(2p, 2) (codes
    xor 0x80 are the u8 operand: the dot adds 128 * sum(x̂)), dx in fp32 lanes 8k..8k+7 of operand(2p, 1). A missing
    last group's half is zero."""
    xl = x_blocks(d, sched)
    G = xl.groups

    @T.macro
    def store(xb, m, g, q, s, dx):
        for v in T.vectorized(GROUP):
            xb[m, xl.operand(g // 2 * 2, 0) + g % 2 * GROUP + v] = T.Cast("uint8", q[v])
        for v in T.vectorized(GROUP):
            xb[m, xl.operand(g // 2 * 2, 2) + g % 2 * GROUP + v] = T.uint8(0)
        xb[m, T.ramp(xl.operand(g // 2 * 2, 2) + g % 2 * GROUP, 1, 4)] = T.reinterpret("uint8x4", s[0] * -128)
        for k in T.unroll(8):
            xb[m, T.ramp(xl.operand(g // 2 * 2, 1) + g % 2 * GROUP + 4 * k, 1, 4)] = T.reinterpret("uint8x4", dx)

    walk = quantized_x_groups(d, G, store)

    @T.macro
    def prep(x, xb, M):
        walk(x, xb, M)
        if G % 2 == 1:  # the last pair's missing second group: x̂ = 0, no init, dx = 0
            for m in range(M):
                for part in T.unroll(3):
                    for v in T.vectorized(GROUP):
                        xb[m, xl.operand(G - 1, part) + GROUP + v] = T.uint8(0)

    return prep


def paired_dots(d: int, dtype: str, sched: CpuSchedule, *, gathered: bool, store=None, prefetch=None):
    """`common.dots_macro` on the integer path for q8_0 on AVX512-VNNI (`paired_q8`): (`dots_all`, `dots`) as
    `int8_dots_macro`'s: one row per vector, its blocks 2c and
    2c + 1 (32 code bytes each, side by side in a split row: one 64-byte load) against x̂ of both groups
    (`paired_prep_macro`):

        acc[row] += float(dot(init, codes xor 0x80, x̂)) * (scales * dx)    (lanes 0-7: group 2c, 8-15: 2c + 1)

    codes xor 0x80 = code + 128 as the u8 operand; init (-128 * sum(x̂) in lanes 0 and 8) takes the 128 * sum(x̂)
    back. One dot per row and two groups instead of four per four rows and group, and no row shuffles: per 8 rows
    and group 77 -> 67 instructions (session 15's block rows). On split rows the pair's two scales are one 4-byte load
    and a vpermw, and a pass takes `ROWS_PER_LOOP` (4) rows, as quant_split8's quad loop: 8 rows' pointers and their
    next step's spilled (8 rows and pair 173 -> 153 -> 2 x 57 instructions; indexed q8_0 0.93-0.97x the time, session
    28). A row's odd last group: its half of the vector zero."""
    lay = LAYOUTS[dtype]
    ins = INT8_DOTS[sched.int8_dot]
    xl = x_blocks(d, sched)
    L, G, R = ins.lanes, xl.groups, sched.rows
    VB, pairs = 4 * L, G // 2
    prefetch = sched.prefetch if prefetch is None else bool(prefetch)
    store = store or (lambda v: v)
    row_bytes = lay.row_bytes(d)
    RB = ROWS_PER_LOOP if R % ROWS_PER_LOOP == 0 else R  # rows per pass of the pair loop
    pf_group = group_prefetch_macro(lay, lay.stored_groups(d), RB)[0]
    pf_scales = group_prefetch_macro(lay, lay.stored_groups(d), R)[1]
    streamed = prefetch and not gathered  # a task's own rows: the next step as one block, a share per pass and pair
    pf_block = next_block_prefetch_macro(R, row_bytes, R // RB * pairs)
    ivec, fvec = f"int32x{L}", f"float32x{L}"
    row_sums = row_sums_macro(R, L, store)

    dot = ins.dot

    def xvec(xb, m, grp, part):
        return xb[m, T.ramp(xl.operand(grp, part), 1, VB)]

    def codes(wf, ro_r, c, both: bool):
        """uint8 x 64: the code bytes of the row's groups 2c, 2c + 1 (both False: 2c, then zeros), xor 0x80."""
        first = [wf[T.ramp(ro_r + T.Cast("int64", lay.codes_byte(2 * c + k, lay.stored_groups(d))), T.int64(1), GROUP)]
                 for k in range(2 if both else 1)]
        if not both:
            first.append(T.Broadcast(T.uint8(128), GROUP))  # xor 0x80 below makes it 0
        return T.bitwise_xor(Shuffle(first, list(range(VB))), T.Broadcast(T.uint8(128), VB))

    def scales(wf, ro_r, c, both: bool):
        """float32 x 16: lanes 0-7 the scale of group 2c, 8-15 of 2c + 1 (both: the two adjacent fp16 of a split row
        in one 4-byte load, not two broadcasts and an insert; else 2c's, then 0)."""
        if both:
            raw = wf[T.ramp(ro_r + T.Cast("int64", lay.scale_byte(2 * c, lay.stored_groups(d))), T.int64(1), 4)]
            pair = T.reinterpret("float16x2", raw)  # (a Shuffle takes no more indices than its inputs' lanes)
            return T.Cast(fvec, Shuffle([pair] * (L // 2), [v // 8 for v in range(L)]))
        halves = [scale(lay, wf, ro_r, 2 * c + k, widen=False, stored=lay.stored_groups(d)) if k == 0 or both
                  else T.float16(0) for k in range(2)]
        return T.Cast(fvec, Shuffle([T.Broadcast(h, 8) for h in halves], list(range(L))))

    def pair_sum(wf, xb, m, ro_r, c, both: bool = True):
        v = dot(T.reinterpret(ivec, xvec(xb, m, 2 * c, 2)), codes(wf, ro_r, c, both), xvec(xb, m, 2 * c, 0))
        return T.Cast(fvec, v) * (scales(wf, ro_r, c, both) * T.reinterpret(fvec, xvec(xb, m, 2 * c, 1)))

    @T.macro
    def body(wf, xb, m, ro, acc, i, end, dst, dcol):
        if prefetch and gathered:  # the next step's scales, all at once
            pf_scales(wf, ro, R, 0, G)
        for b in T.unroll(R // RB):  # RB rows at a time (`ROWS_PER_LOOP`)
            for c in range(pairs):
                if streamed:
                    pf_block(wf, ro, b * pairs + c)
                elif prefetch:  # the next step's rows, one prefetch per row and line
                    pf_group(wf, ro, R + b * RB, 2 * c)
                    pf_group(wf, ro, R + b * RB, 2 * c + 1)
                for r in T.unroll(RB):
                    acc[T.ramp((b * RB + r) * L, 1, L)] = acc[T.ramp((b * RB + r) * L, 1, L)] + pair_sum(
                        wf, xb, m, ro[b * RB + r], c)
        if G % 2 == 1:  # the odd last group
            for r in T.unroll(R):
                acc[T.ramp(r * L, 1, L)] = acc[T.ramp(r * L, 1, L)] + pair_sum(wf, xb, m, ro[r], pairs, False)
        row_sums(acc, m, i, end, dst, dcol)

    dots = row_dots_frame(gathered, R, row_bytes, R * L, body)
    return per_token(dots), dots
