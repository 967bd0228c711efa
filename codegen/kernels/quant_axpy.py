"""The float row axpy of quantized rows (the down projection of every gated-MLP kernel where the integer one,
quant_axpy8.py, does not serve), the output columns' split over the tasks it shares with the integer axpy, and the
zeroing of the output under that split.

Dequantization happens in registers as in the row dots (`quant_blocks`): per row and group, h times the scale (and
offset) is one scalar, the codes of a half group are widened, converted and multiplied in fp32; on AVX-512 the q4
codes are looked up in a 16-entry table instead (`lookup`).

On a target whose int8 dot serves the layout's axpys (`quant_axpy8.py`: x86 VNNI for q4_0 / q4_1) `axpy.axpy_macro`
takes the integer axpy instead of the float one here. The down projection's axpy splits the output columns over the
tasks by whole groups (each task owns groups
[t * G / threads, (t + 1) * G / threads); the columns of a last partial group go to the last task), and the
zeroing of the output uses the same split, so no task touches another's columns.
"""

from __future__ import annotations

from tvm.script import tirx as T

from ...ir.quant import GROUP, LAYOUTS
from .quant_blocks import (
    code,
    flat_rows,
    group_prefetch_macro,
    offset,
    row_offsets_macro,
    scale,
    split_scales,
    value_at,
    vector_lanes,
)
from .rows import row_index
from .schedule import CpuSchedule

HALF = GROUP // 2


def group_split(d: int, threads: int):
    """(groups, first, last): task t's whole groups are [first(t), last(t)); columns from groups * 32 on (a last
    partial group) belong to the last task."""
    n_full = d // GROUP
    return n_full, (lambda t: t * n_full // threads), (lambda t: (t + 1) * n_full // threads)


def quant_axpy_macro(d: int, dtype: str, sched: CpuSchedule, *, gathered: bool, prefetch=None, lookup: str = ""):
    """`axpy.axpy_macro` for quantized rows: (`axpy_all`, `axpy`) with the same arguments and results.

    `lookup` (`int8_dots.Int8Dot.nibble_lookup`, x86 AVX-512: `vpermps`): q4 codes become floats by a 16-entry
    table lookup on the widened bytes, the low nibble by the low 4 bits as they are and the high one after a 4-bit
    shift of the int32 lanes; q4_0's table holds nibble - 8. Per row and 32 columns that is one widening load, one
    shift and two lookups instead of mask, shift, two widenings and two conversions, and no -8 * sum(h * scale)."""
    lay = LAYOUTS[dtype]
    L, R, threads = vector_lanes(sched), sched.rows, sched.threads
    S = HALF // L
    prefetch = sched.prefetch if prefetch is None else bool(prefetch)
    n_full, first, last = group_split(d, threads)
    row = row_index(gathered)
    off = lay.offset
    lookup = lookup if lay.bits == 4 and L == 16 else ""  # the table has 16 lanes: one per nibble value
    looked = bool(lookup)
    # split rows hold a row's scales contiguously: the step's h * scale as a table, TV groups per vector
    tabled, TV, NG = looked and lay.split, L, -(-n_full // threads)  # NG: the most groups a task owns
    folded = lay.bits == 4 and not off and not looked  # q4_0: raw nibbles, the "- 8" once per group as -8 * sum(h * s)
    const = off or folded  # hs[R] is added once per output element
    fvec = f"float32x{L}"
    table = T.Cast(fvec, T.ramp(-8 if lay.bits == 4 and not off else 0, 1, L))  # nibble -> code (q4_0: centred)

    row_bytes, stored = lay.row_bytes(d), lay.stored_groups(d)
    row_offsets = row_offsets_macro(gathered, R, row_bytes)
    pf_group, pf_scales = group_prefetch_macro(lay, stored, R)

    def axsum(wf, ro, hs, grp, hf, j):
        e = hs[0] * code(lay, wf, ro[0], grp, hf, j, centered=not folded, stored=stored)
        for r in range(1, R):
            e = e + hs[r] * code(lay, wf, ro[r], grp, hf, j, centered=not folded, stored=stored)
        return e

    def looked_up(wf, ro_r, grp, hf, four):
        """float32 x 16: the codes of columns grp * 32 + hf * 16 + 0..15 of a row, by the table lookup."""
        raw = wf[T.ramp(ro_r + T.Cast("int64", lay.codes_byte(grp, stored)), T.int64(1), L)]
        idx = T.shift_right(T.Cast(f"int32x{L}", raw), T.Broadcast(hf * four, L))  # the lookup reads the low 4 bits
        return T.call_llvm_pure_intrin(fvec, lookup, table, idx)

    def axsum_vec(wf, ro, hs, grp, hf, four):
        e = T.Broadcast(hs[0], L) * looked_up(wf, ro[0], grp, hf, four)
        for r in range(1, R):
            e = e + T.Broadcast(hs[r], L) * looked_up(wf, ro[r], grp, hf, four)
        return e + T.Broadcast(hs[R], L) if const else e

    @T.macro
    def step(w, rows, base, i, end, h, hcol, t, out, m):
        wf = flat_rows(w, w.shape[0], row_bytes)
        ro = T.alloc_buffer((2 * R,), "int64", scope="global")  # byte offsets of the step's rows, then the next's
        row_offsets(ro, rows, base, i, end)
        hv = T.alloc_buffer((R,), "float32", scope="global")
        # h * scale per row; [R]: the per-element constant (q4_1: sum of h * offset; q4_0: -8 * sum of h * scale)
        hs = T.alloc_buffer((R + 1,), "float32", scope="global")
        hst = T.alloc_buffer((R * NG if tabled else 1,), "float32", scope="global")  # [r * NG + gi]: h_r * s_r,g0+gi
        for r in T.unroll(R):
            hv[r] = T.float32(0)
            if i + r < end:
                hv[r] = h[m, hcol + i + r]
        g0: T.let = first(t)
        # the high nibble's shift: 4 in every step that runs (end >= 1; at end <= 0 every h is 0 and the shift does not
        # matter), written so that LLVM cannot fold it: a constant shift of the widened bytes it narrows to a byte
        # shift before the widening, i.e. two widenings per 16 code bytes instead of one (82 instead of 99
        # instructions per 8 rows x 32 columns; hot exact / indexed 0.94x, BENCHMARKS.md session 10)
        four: T.let = T.min(T.int32(4), T.Cast("int32", end) * 4)
        if prefetch:
            pf_scales(wf, ro, R, g0, last(t))
        if tabled:  # h * scale of every row and group of the task, 16 groups per load and conversion
            for r in T.unroll(R):
                for c in range((last(t) - g0) // TV):
                    hst[T.ramp(r * NG + c * TV, 1, TV)] = T.Broadcast(hv[r], TV) * split_scales(
                        lay, stored, wf, ro[r], g0 + c * TV, TV)
                for c in range((last(t) - g0) // TV * TV, last(t) - g0):
                    hst[r * NG + c] = hv[r] * scale(lay, wf, ro[r], g0 + c, stored=stored)
        for gi in range(last(t) - g0):
            if prefetch:  # the next step's rows, one prefetch per row and block (q8_0) or line
                pf_group(wf, ro, R, g0 + gi)
            hs[R] = T.float32(0)
            for r in T.unroll(R):
                if tabled:
                    hs[r] = hst[r * NG + gi]
                else:
                    hs[r] = hv[r] * scale(lay, wf, ro[r], g0 + gi, stored=stored)
                if off:
                    hs[R] = hs[R] + hv[r] * offset(lay, wf, ro[r], g0 + gi, stored=stored)
                if folded:
                    hs[R] = hs[R] - T.float32(8) * hs[r]
            for hf in T.unroll(2):
                if looked:
                    out[m, T.ramp((g0 + gi) * GROUP + hf * HALF, 1, L)] = out[
                        m, T.ramp((g0 + gi) * GROUP + hf * HALF, 1, L)] + axsum_vec(wf, ro, hs, g0 + gi, hf, four)
                else:
                    for s in T.unroll(S):
                        for v in T.vectorized(L):
                            if const:
                                out[m, (g0 + gi) * GROUP + hf * HALF + s * L + v] = out[
                                    m, (g0 + gi) * GROUP + hf * HALF + s * L + v] + axsum(
                                    wf, ro, hs, g0 + gi, hf, s * L + v) + hs[R]
                            else:
                                out[m, (g0 + gi) * GROUP + hf * HALF + s * L + v] = out[
                                    m, (g0 + gi) * GROUP + hf * HALF + s * L + v] + axsum(
                                    wf, ro, hs, g0 + gi, hf, s * L + v)
        if n_full * GROUP < d:
            if t == threads - 1:
                for c in range(n_full * GROUP, d):
                    for r in T.unroll(R):
                        out[m, c] = out[m, c] + hv[r] * value_at(dtype, w, row(rows, base, T.min(i + r, end - 1)), c)

    return axpy_macros(step)


def quant_zero_columns_macro(d: int, sched: CpuSchedule):
    """`zero_cols(t, out, M)` over task t's columns under `group_split` (the quantized axpy's split)."""
    threads = sched.threads
    n_full, first, last = group_split(d, threads)

    @T.macro
    def zero_cols(t, out, M):
        g0: T.let = first(t)
        for m in range(M):
            for gi in range(last(t) - g0):
                for v in T.vectorized(GROUP):
                    out[m, (g0 + gi) * GROUP + v] = T.float32(0)
            if n_full * GROUP < d:
                if t == threads - 1:
                    for c in range(n_full * GROUP, d):
                        out[m, c] = T.float32(0)

    return zero_cols


def axpy_macros(step):
    """(axpy_all, axpy) of `axpy.axpy_macro` around a one-token axpy `step` (float here, integer in
    quant_axpy8.py): every token, or token m."""

    @T.macro
    def axpy(w, rows, base, i, end, h, hcol, t, out, m):
        step(w, rows, base, i, end, h, hcol, t, out, m)

    @T.macro
    def axpy_all(w, rows, base, i, end, h, hcol, t, out, M):
        for m in range(M):
            step(w, rows, base, i, end, h, hcol, t, out, m)

    return axpy_all, axpy
