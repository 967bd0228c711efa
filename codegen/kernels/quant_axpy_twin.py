"""Two groups per iteration of quant_axpy8.py's integer row axpy on a pair-sum dot (AVX2 `vpmaddubsw`, 2 rows per
int16 lane, `Int8Dot.axpy_interleave` 2) over split q4 rows with the coefficient table, and the widening of int16
pair sums (`SETS_PER_WIDENING`, `widened`) that every pair-sum form of that axpy shares.

With the coefficient table (split q4_0 and q4_1) a vector of 2W code bytes holds two groups' 16 bytes of a row: the
loop then takes two groups per iteration, one 32-byte load per row and in-lane unpacks (lane k: group g + k; no
broadcasts or cross-lane permutes of the codes): 158 instead of 2 x 95 instructions per 8 rows x 64 columns (znver3);
indexed 0.96x, dense 0.94x the time from DRAM, 1 thread (BENCHMARKS.md, session 19). A last odd group takes the
one-group loop.
"""

from __future__ import annotations

from tvm.script import tirx as T
from tvm.tirx import Shuffle

from ...ir.quant import GROUP, QuantLayout

HALF = GROUP // 2
# int16 pair sums per lane that add up before one widening on a pair-sum dot (`Int8Dot.pair_sum`: one per set of 4
# rows; `axpy_interleave` 2: one per row pair): q4 codes (<= 15, or z = 8) times |a_j| <= 127 make a pair <= 2 * 15 *
# 127 = 3810, so 8 stay within int16 (one widening per step of R <= 32 rows, or R <= 16 in row pairs)
SETS_PER_WIDENING = 32767 // (2 * 15 * 127)


def widened(acc, sums, W: int):
    """acc (int32 x W) + the int16 pair sums `sums`, added SETS_PER_WIDENING at a time, each total sign-extended."""
    for first_pair in range(0, len(sums), SETS_PER_WIDENING):
        total = sums[first_pair]
        for more in sums[first_pair + 1:first_pair + SETS_PER_WIDENING]:
            total = total + more
        acc = acc + T.Cast(f"int32x{W}", total)
    return acc


def twin_macros(ins, lay: QuantLayout, stored: int, R: int, NV: int, NG: int, W: int):
    """`twin_columns(wf, ro, abt, zt, tt, g, gi, out, m, part)`: out[m, groups g and g + 1's columns] += the step's
    sums (module docstring) for quant_axpy8.py's step: rows at byte offsets ro (past R read as row R - 1), a_j of
    table entries gi and gi + 1 in the group-major table abt (NV per group), -z Σ_j a_j at zt, t at tt (q4_1: the
    offset constant at tt[NG + ...]), part an int32 x W scratch; W columns per vector (2W code bytes: two groups'
    16)."""
    off = lay.offset

    def rr(ro, r):  # byte offset of the row at step position r (past R: a row read anyway)
        return ro[min(r, R - 1)]

    def twin_codes(w, ro, p, grp, u):
        """uint8 x 2W: rows 2p and 2p + 1's code bytes 8u .. 8u + 7 of groups grp (lane 0) and grp + 1 (lane 1),
        byte-interleaved: one load of both groups' bytes per row (2 x 16 contiguous in a split row), then what LLVM
        emits as one in-lane unpack (vpunpcklbw / vpunpckhbw)."""
        start = T.Cast("int64", lay.codes_byte(grp, stored))
        loads = [w[T.ramp(rr(ro, 2 * p + q) + start, T.int64(1), 2 * HALF)] for q in range(2)]
        return Shuffle(loads, [q * 2 * HALF + k * HALF + 8 * u + c
                               for k in range(2) for c in range(8) for q in range(2)])

    def twin_coefficients(ab, at, p):
        """int8 x 2W: (a_2p, a_2p+1) of the table's group at `at` in every int16 of lane 0, of the next group in
        lane 1."""
        raw = ab[T.ramp(at, 1, 2 * NV)]
        return Shuffle([raw, raw], [k * NV + 2 * p + c % 2 for k in range(2) for c in range(W)])

    def twin_sum(wf, ro, abt, zt, gi, g, u, nib):
        """int32 x W: lane k's sums for its group's columns nib * 16 + 8u .. + 7 (groups g, g + 1), plus -z Σ_j a_j of
        that group: the row pairs' int16 sums added (SETS_PER_WIDENING at most per widening), then widened."""
        sums = []
        for p in range(NV // 2):
            raw = twin_codes(wf, ro, p, g, u)
            codes = T.bitwise_and(T.shift_right(raw, T.Broadcast(T.Cast("uint8", nib * 4), 2 * W)),
                                  T.Broadcast(T.uint8(15), 2 * W))
            sums.append(T.call_llvm_pure_intrin(f"int16x{W}", ins.intrinsic, codes, T.reinterpret(
                f"int8x{2 * W}", twin_coefficients(abt, gi * NV, p))))
        acc = Shuffle([T.Broadcast(zt[gi], W // 2), T.Broadcast(zt[gi + 1], W // 2)], list(range(W)))
        return widened(acc, sums, W)

    @T.macro
    def twin_out(wf, ro, abt, zt, tt, g, gi, out, m, u, nib, part):
        part[T.ramp(0, 1, W)] = twin_sum(wf, ro, abt, zt, gi, g, u, nib)
        for k in T.unroll(2):
            if off:  # q4_1: the group's constant Σ_j h_j (o_j + 8 s_j) in every column (`coefficient_table`)
                out[m, T.ramp((g + k) * GROUP + nib * HALF + u * 8, 1, 8)] = out[
                    m, T.ramp((g + k) * GROUP + nib * HALF + u * 8, 1, 8)] + T.Cast(
                    "float32x8", part[T.ramp(k * 8, 1, 8)]) * T.Broadcast(tt[gi + k], 8) + T.Broadcast(
                    tt[NG + gi + k], 8)
            else:
                out[m, T.ramp((g + k) * GROUP + nib * HALF + u * 8, 1, 8)] = out[
                    m, T.ramp((g + k) * GROUP + nib * HALF + u * 8, 1, 8)] + T.Cast(
                    "float32x8", part[T.ramp(k * 8, 1, 8)]) * T.Broadcast(tt[gi + k], 8)

    @T.macro
    def twin_columns(wf, ro, abt, zt, tt, g, gi, out, m, part):
        # groups g and g + 1 (table entries gi, gi + 1) per unpack half u and nibble (literals: Python ints in
        # twin_sum), each vector of int16 sums widened once into part for both groups' 8 columns
        twin_out(wf, ro, abt, zt, tt, g, gi, out, m, 0, 0, part)
        twin_out(wf, ro, abt, zt, tt, g, gi, out, m, 0, 1, part)
        twin_out(wf, ro, abt, zt, tt, g, gi, out, m, 1, 0, part)
        twin_out(wf, ro, abt, zt, tt, g, gi, out, m, 1, 1, part)

    return twin_columns
