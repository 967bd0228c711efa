"""q8_0's integer row axpy on an int16 pair-sum dot (`Int8Dot.int16_axpy`: AVX2 `vpmaddwd`, hosts without VNNI): the
pieces quant_axpy8.py's step takes in place of its int8 ones for such a layout.

Why its own form: the u8 x s8 pair sum (`vpmaddubsw`) cannot take q8_0's codes in the down axpy. Biased (code + 128)
they saturate its int16 pairs; by the sign trick a pair reaches 2 * 128 * 127, so no two pairs may add in int16 and
every pair needs its own widening: no cheaper than the float axpy (BENCHMARKS.md, session 19). The int16 x int16 pair
sum to int32 (`vpmaddwd`) takes them as they are: each row's 16 codes of a half group one sign-extending load
(`vpmovsxbw`), a row pair's int16 interleaved in-lane (`vpunpck{l,h}wd`), times the pair's (a_j, a_j+1) in every
lane, each pair's int32 exact and added in int32, the sums put back in column order once per half group
(`word_half_sum`; the partial last group interleaves bytes, `word_pair_sum`). Per 8 rows x 32 columns the group loop
is 94 instructions (16 `vpmaddwd`) where the float axpy's is 148 (32 widenings, 32 conversions, 28 FMAs); the down
axpy alone, hot, 0.82x the time; kernels from DRAM 0.96-0.99x, hot 0.84-0.90x (BENCHMARKS.md, session 20).

The coefficients are the int8 axpy's rounding with 15 bits instead of 7 (the lanes are int16 anyway; same instruction
count): per step and group c_j = h_j * s_{j,g}, t = max_j |c_j| / 32767, a_j = round(c_j / t) (half to even),
out[c] += t * Σ_j a_j q_{j,c} (`coefficient_levels`). Each column is then off by at most (max_j |c_j| / 65534) *
Σ_j |q_{j,c}|: 256x less than the int8 axpy's, near the float32 noise of h itself. The int32 bound: |a_j| <= 32767 and
|q| <= 128 make a pair at most 2 * 32767 * 128 = 8388352, so a step's sums stay exact up to `MAX_ROWS` rows (a
schedule's `rows` is 8, or fewer for long rows).

q8_0 rows are split since session 22 (ir.quant): the coefficient table (16 groups per vector,
`Int8Dot.coefficient_table`) reads a row's 16 scales with one load (`row_scales`; GGUF's blocks took 16 scalar loads,
packed, ~21 of the ~133 instructions per group); the rounding then runs lane by lane. The table is stored pair-major
(`interleaved_pair`: row pair p's (a_2p, a_2p+1) of the task's groups one int32 each, two rows' vectors interleaved
by an unpack), so the group loop reads a pair's coefficients with one broadcast and the fill holds no 16 x 8
transpose (group-major as q4's, the fill took 650 instead of 438 instructions per 8 rows x 16 groups). Each 16
groups' entries are filled just ahead of their columns (`coefficient_table`: on blocks the scales' loads and the
codes' then met the rows' lines once; kept on split rows, which read the scales' lines apart anyway).
"""

from __future__ import annotations

from tvm.script import tirx as T
from tvm.tirx import Shuffle

from ...ir.quant import GROUP, QuantLayout
from .quant_blocks import split_scales

HALF = GROUP // 2
WORD_LEVELS = 32767  # int16 coefficients: |a_j| <= 32767 (never -32768: vpmaddwd's one wrapping pair is -32768^2 x 2)
BYTE_LEVELS = 127    # the int8 axpy's (quant_axpy8.py)
MAX_ROWS = 2 * ((2 ** 31 - 1) // (2 * WORD_LEVELS * 128))  # rows per step whose int32 sums cannot wrap: 512


def coefficient_levels(ins, dtype: str) -> int:
    """The largest |a_j| of `dtype`'s axpy coefficients on int8 dot `ins`: int16 on its int16 pair sum, else int8."""
    return WORD_LEVELS if dtype in ins.int16_axpy else BYTE_LEVELS


def row_scales(lay: QuantLayout, stored: int, wf, ro_r, grp, n: int):
    """float32 x n: a row's scales of groups grp .. grp + n - 1, one load and one conversion (split rows: every layout
    since session 22; on GGUF's blocks this packed n 16-bit loads 4 per 64-bit integer, BENCHMARKS.md session 20)."""
    assert lay.split, f"{lay.name}: split rows only"
    return split_scales(lay, stored, wf, ro_r, grp, n)


def word_pair_sum(ins, lay: QuantLayout, stored: int, w, row_at, ab, pair_at, grp, hf, v, rows: int):
    """int32 x 8: Σ_j a_j q_{j,c} over `rows` (even) rows for the 8 columns grp * 32 + hf * 16 + v * 8 + 0..7, the
    int16 (a_2p, a_2p+1) at ab[pair_at(p)], row_at(j) row j's byte offset: per row pair one vpmaddwd of the
    codes, byte-interleaved (8 bytes a row: no load passes the group) and sign-extended, and (a_2p, a_2p+1), the
    pairs' int32 added. Any hf and v (loop variables too): the partial last group and the groups one by one."""
    start = T.Cast("int64", lay.codes_byte(grp, stored) + hf * HALF + v * 8)
    acc = None
    for p in range(rows // 2):
        loads = [w[T.ramp(row_at(2 * p + q) + start, T.int64(1), 8)] for q in range(2)]
        pair = Shuffle(loads, [q * 8 + c for c in range(8) for q in range(2)])  # vpunpcklbw
        codes = T.Cast("int16x16", T.reinterpret("int8x16", pair))  # vpmovsxbw
        term = T.call_llvm_pure_intrin("int32x8", ins.pair_sum, codes, pair_coefficients(ab, pair_at(p)))
        acc = term if acc is None else acc + term
    return acc


def word_half_sum(ins, lay: QuantLayout, stored: int, w, row_at, ab, pair_at, grp, hf: int, rows: int):
    """int32 x 16: `word_pair_sum` for the 16 columns grp * 32 + hf * 16 + 0..15 (hf a Python int), fewer
    instructions: each row's 16 codes one sign-extending load (vpmovsxbw from memory), a row pair's int16 interleaved
    in-lane (vpunpcklwd: columns 0-3 and 8-11; vpunpckhwd: 4-7 and 12-15), the two sums put back in column order
    once per step and half group (2 vperm2i128): per 8 rows x 32 columns 16 loads-and-extends and 16 unpacks where
    the byte interleave takes 16 loads, 16 unpacks and 16 extends."""
    start = T.Cast("int64", lay.codes_byte(grp, stored) + hf * HALF)
    sums = []
    for v in range(2):
        acc = None
        for p in range(rows // 2):
            rows_16 = [T.Cast("int16x16", T.reinterpret("int8x16", w[T.ramp(row_at(2 * p + q) + start, T.int64(1),
                                                                             HALF)])) for q in range(2)]
            codes = Shuffle(rows_16, [q * HALF + 8 * k + 4 * v + c for k in range(2) for c in range(4)
                                      for q in range(2)])
            term = T.call_llvm_pure_intrin("int32x8", ins.pair_sum, codes, pair_coefficients(ab, pair_at(p)))
            acc = term if acc is None else acc + term
        sums.append(acc)
    return Shuffle(sums, [*range(4), *range(8, 12), *range(4, 8), *range(12, 16)])


def pair_coefficients(ab, at):
    """int16 x 16: the int16 pair (ab[at], ab[at + 1]) in every int32 lane (one vpbroadcastd)."""
    return T.reinterpret("int16x16", T.Broadcast(T.reinterpret("int32", ab[T.ramp(at, 1, 2)]), 8))


def interleaved_pair(q, pair, lanes: int):
    """int16 x 2 lanes: rows 2 pair and 2 pair + 1's a_j (int32 at q[r * lanes], `lanes` groups) interleaved, so each
    group's (a_2p, a_2p+1) is one int32 of the pair-major table (one unpack per 8 groups)."""
    rows = [T.Cast(f"int16x{lanes}", q[T.ramp((2 * pair + k) * lanes, 1, lanes)]) for k in range(2)]
    return Shuffle(rows, [(k % 2) * lanes + k // 2 for k in range(2 * lanes)])


def word_macros(ins, lay: QuantLayout, stored: int, R: int, NV: int, NG: int):
    """(`word_sum(w, ro, ab, grp, hf, v, at)`: int32 x 8, `word_pair_sum` of a step's NV rows (byte offsets ro, rows
    past R read as row R - 1) with a_j at ab[at + j]; `word_columns(wf, ro, abt, tt, g, gi, out, m, half_sums)`:
    out[m, group g's 32 columns] += t * the sums, from table entry gi of the pair-major table abt (row pair p of
    entry gi at (p * NG + gi) * 2, t at tt[gi]), half_sums an int32 x 16 scratch) for quant_axpy8.py's step."""

    def row_at(ro):
        return lambda j: ro[min(j, R - 1)]

    def word_sum(w, ro, ab, grp, hf, v, at):
        return word_pair_sum(ins, lay, stored, w, row_at(ro), ab, lambda p: at + 2 * p, grp, hf, v, NV)

    def table_half_sum(wf, ro, abt, g, gi, hf):
        # a plain function: TVMScript's evaluator does not take a lambda written in a macro's body
        return word_half_sum(ins, lay, stored, wf, row_at(ro), abt, lambda p: (p * NG + gi) * 2, g, hf, NV)

    @T.macro
    def word_out(wf, ro, abt, tt, g, gi, out, m, hf, half_sums):
        # hf a literal (a Python int in word_half_sum)
        half_sums[T.ramp(0, 1, HALF)] = table_half_sum(wf, ro, abt, g, gi, hf)
        for v in T.unroll(2):
            out[m, T.ramp(g * GROUP + hf * HALF + v * 8, 1, 8)] = out[
                m, T.ramp(g * GROUP + hf * HALF + v * 8, 1, 8)] + T.Cast(
                "float32x8", half_sums[T.ramp(v * 8, 1, 8)]) * T.Broadcast(tt[gi], 8)

    @T.macro
    def word_columns(wf, ro, abt, tt, g, gi, out, m, half_sums):
        word_out(wf, ro, abt, tt, g, gi, out, m, 0, half_sums)
        word_out(wf, ro, abt, tt, g, gi, out, m, 1, half_sums)

    return word_sum, word_columns

