"""The row axpy of the CPU kernels' down projections (out[m, cols] += sum_r h_r * w[row_r, cols], each task on its
slice of the output columns), the zeroing of a task's columns and which columns a task owns: float rows here,
quantized rows handed to `quant_axpy.py` (float axpy) or `quant_axpy8.py` (integer axpy). Split from common.py
(the row dots and the rest of the shared blocks) to keep each module readable.
"""

from __future__ import annotations

from tvm.script import tirx as T

from ...ir.quant import GROUP, LAYOUTS
from .common import loader
from .int8_dots import INT8_DOTS
from .quant_axpy import group_split, quant_axpy_macro, quant_zero_columns_macro
from .quant_axpy8 import int8_axpy_macro, uses_int8_axpy
from .rows import chunks_per_line, column_split, prefetch_macro, row_index, task_blocks
from .schedule import CpuSchedule


def axpy_macro(d: int, dtype: str, sched: CpuSchedule, *, gathered: bool, prefetch: bool | None = None,
               kernel: str = ""):
    """Returns (`axpy_all`, `axpy`), one step over `sched.rows` rows of a row list for M tokens / one token.

    `axpy(w, rows, base, i, end, h, hcol, t, out, m)`: out[m, cols(t)] += sum_r h[m, hcol + i + r] *
    w[row(i + r), cols(t)] over r < rows with i + r < end, row() as in `dots_macro`, on task t's column
    slice. Each task streams its contiguous slice of the step's rows (vector FMA; the out slice stays
    in L1) and, with `prefetch`, prefetches the same slice of the next step's rows.

    `axpy_all(w, rows, base, i, end, h, hcol, t, out, M)`: the same for tokens 0..M-1; blocks of
    `token_block` tokens share each loaded weight vector.

    `kernel`: the down projection of that kernel (`schedule.AXPY_KERNELS`). Quantized rows take the integer path
    (`quant_axpy8.py`: the step's coefficients rounded to int8 per 32-column group) where the schedule gives it to
    that kernel and its int8 dot serves the layout's axpys; "" (not a down projection): always float.
    """
    if kernel and uses_int8_axpy(dtype, sched, kernel):  # coefficients rounded per step to int8 (`quant_axpy8.py`)
        return int8_axpy_macro(d, dtype, sched, gathered=gathered, prefetch=prefetch)
    if dtype in LAYOUTS:
        lookup = INT8_DOTS[sched.int8_dot].nibble_lookup if sched.int8_dot else ""
        return quant_axpy_macro(d, dtype, sched, gathered=gathered, prefetch=prefetch, lookup=lookup)
    L, R, TB = sched.lanes, sched.rows, sched.token_block
    prefetch = sched.prefetch if prefetch is None else bool(prefetch)
    block, n_blocks, tail = column_split(d, sched, dtype)
    threads = sched.threads
    ld = loader(dtype)
    row = row_index(gathered)
    pf = prefetch_macro(dtype)
    n_tail_vec = (d - tail) // L
    tail_vec_end = tail + n_tail_vec * L

    chains = max(1, min(sched.accumulators, R))
    CPL = chunks_per_line(block, dtype)  # column blocks per cache line: one prefetch per row and line

    def axsum(w, rows, base, i, end, hv, hoff, col):
        # the step's rows summed in `chains` independent FMA chains (row r into chain r % chains), added at the
        # end: an in-order core then has that many FMAs in flight instead of one R-long dependency chain
        sums = []
        for c0 in range(chains):
            e = hv[hoff + c0] * ld(w[row(rows, base, T.min(i + c0, end - 1)), col])
            for r in range(c0 + chains, R, chains):
                e = e + hv[hoff + r] * ld(w[row(rows, base, T.min(i + r, end - 1)), col])
            sums.append(e)
        total = sums[0]
        for e in sums[1:]:
            total = total + e
        return total

    @T.macro
    def step(w, rows, base, i, end, h, hcol, t, out, m0, nb):
        # coefficients of the nb tokens m0.. (0 past the end of the list), then the column sweep
        hv = T.alloc_buffer((nb * R,), "float32", scope="global")
        for b in T.unroll(nb):
            for r in T.unroll(R):
                hv[b * R + r] = T.float32(0)
                if i + r < end:
                    hv[b * R + r] = h[m0 + b, hcol + i + r]
        b0: T.let = task_blocks(t, n_blocks, CPL, threads)[0]
        b1: T.let = task_blocks(t, n_blocks, CPL, threads)[1]
        for cl in range((b1 - b0) // CPL):
            if prefetch:
                for r in T.unroll(R):
                    pf(w, row(rows, base, T.min(i + R + r, end - 1)), (b0 + cl * CPL) * block, 1)
            for kk in T.unroll(CPL):
                for b in T.unroll(nb):
                    for v in T.vectorized(block):
                        out[m0 + b, (b0 + cl * CPL + kk) * block + v] = (
                            out[m0 + b, (b0 + cl * CPL + kk) * block + v]
                            + axsum(w, rows, base, i, end, hv, b * R, (b0 + cl * CPL + kk) * block + v))
        if tail < d:
            if t == threads - 1:
                for b in T.unroll(nb):
                    for kr in range(n_tail_vec):
                        for v in T.vectorized(L):
                            out[m0 + b, tail + kr * L + v] = out[m0 + b, tail + kr * L + v] + axsum(
                                w, rows, base, i, end, hv, b * R, tail + kr * L + v)
                    for c in range(tail_vec_end, d):
                        out[m0 + b, c] = out[m0 + b, c] + axsum(w, rows, base, i, end, hv, b * R, c)

    @T.macro
    def axpy(w, rows, base, i, end, h, hcol, t, out, m):
        step(w, rows, base, i, end, h, hcol, t, out, m, 1)

    @T.macro
    def axpy_all(w, rows, base, i, end, h, hcol, t, out, M):
        if TB > 1:
            for mb in range(M // TB):
                step(w, rows, base, i, end, h, hcol, t, out, mb * TB, TB)
            for m in range(M // TB * TB, M):
                step(w, rows, base, i, end, h, hcol, t, out, m, 1)
        else:
            for m in range(M):
                step(w, rows, base, i, end, h, hcol, t, out, m, 1)

    return axpy_all, axpy


def zero_columns_macro(d: int, sched: CpuSchedule, dtype: str = "float32"):
    """`zero_cols(t, out, M)`: out[:, cols(t)] = 0 for task t's column slice (the axpy's split for `dtype`)."""
    if dtype in LAYOUTS:
        return quant_zero_columns_macro(d, sched)
    block, n_blocks, tail = column_split(d, sched, dtype)
    unit = chunks_per_line(block, dtype)
    threads = sched.threads

    @T.macro
    def zero_cols(t, out, M):
        b0: T.let = task_blocks(t, n_blocks, unit, threads)[0]
        b1: T.let = task_blocks(t, n_blocks, unit, threads)[1]
        for m in range(M):
            for b in range(b1 - b0):
                for v in T.vectorized(block):
                    out[m, (b0 + b) * block + v] = T.float32(0)
            if tail < d:
                if t == threads - 1:
                    for c in range(tail, d):
                        out[m, c] = T.float32(0)

    return zero_cols


def task_columns(t, d: int, sched: CpuSchedule, dtype: str = "float32"):
    """(c0, c1): the output columns task t owns under `axpy_macro` / `zero_columns_macro` for `dtype` (float:
    whole cache lines of column blocks; quantized: whole 32-column groups); the last task also owns the tail."""
    threads = sched.threads
    if dtype in LAYOUTS:
        _, first, last = group_split(d, threads)
        return first(t) * GROUP, T.if_then_else(t == threads - 1, d, last(t) * GROUP)
    block, n_blocks, _ = column_split(d, sched, dtype)
    b0, b1 = task_blocks(t, n_blocks, chunks_per_line(block, dtype), threads)
    return b0 * block, T.if_then_else(t == threads - 1, d, b1 * block)
