"""Quantized weight rows in the kernels: buffer shapes, in-register dequantization, row offsets and prefetches, and
the CPU float row-dot macro over quantized rows (the float row axpy is quant_axpy.py's).

A quantized weight is one uint8 buffer [rows, row_bytes] of GGUF-style blocks or split rows (layouts in
`ir.quant`: q8_0, q4_0, q4_1; one fp16 scale, optionally an fp16 offset, and 32 codes per group of input columns:
the kernels ask the layout where each sits). A kernel
asked for `dtype="q4_0"` (etc.) declares its weight buffers that way and reads them through the macros here;
`common.dots_macro` / `axpy.axpy_macro` / `axpy.zero_columns_macro` hand over to them (and to quant_axpy.py's) for a
quantized dtype, so every CPU kernel (exact, indexed, threshold, dense, linear) takes quantized weights without a
line of its own.

Dequantization happens in registers: per row and group, the scale (and offset) is one scalar; the codes of a
group are read as two halves of 16 columns (q4: the low and the high nibbles of the same 16 bytes), each half
as 16 / lanes vectors, converted to fp32, scaled, and accumulated in fp32. Loop indices are written so that no
division or modulo meets a vector lane (TVM's vectorizer keeps contiguous loads only then).
"""

from __future__ import annotations

from tvm.script import tirx as T

from ...ir.quant import GROUP, LAYOUTS, QuantLayout
from .rows import CACHE_LINE, hsum_macro, row_index
from .schedule import CpuSchedule

HALF = GROUP // 2


def is_quantized(dtype: str) -> bool:
    return dtype in LAYOUTS


def weight_buffer(rows: int, cols: int, dtype: str) -> tuple[tuple[int, int], str]:
    """(shape, storage dtype) of a [rows, cols] weight in `dtype` (a float dtype or a quantized layout)."""
    if is_quantized(dtype):
        return (rows, LAYOUTS[dtype].row_bytes(cols)), "uint8"
    return (rows, cols), dtype


def byte_at(w, row, byte):
    """w[row, byte]; on a flat view of the weight (`flat_rows`) `row` is the row's int64 byte offset."""
    return w[row + byte] if len(w.shape) == 1 else w[row, byte]


def flat_rows(w, rows: int, row_bytes: int):
    """A 1-D view of the weight w [rows, row_bytes]: with rows addressed by precomputed int64 byte offsets LLVM
    keeps one pointer per row and steps them together, rather than re-deriving (and SLP-vectorizing, then
    extracting) 32-bit row offsets in every group."""
    return T.decl_buffer((T.int64(int(rows) * row_bytes),), "uint8", data=w.data)  # int64: stacked experts pass 2^31


def row_offsets_macro(gathered: bool, rows: int, row_bytes: int):
    """`offsets(ro, row_list, base, i, end)`: ro[r] <- the int64 byte offset in `flat_rows`' view of the row at step
    position i + r (`common.dots_macro`'s row(), past the list its last row again) for r < 2 * rows: the step's rows,
    then the next step's (what the prefetches read). Every quantized row dot and axpy steps its rows so."""
    row = row_index(gathered)

    @T.macro
    def offsets(ro, row_list, base, i, end):
        for r in T.unroll(2 * rows):
            ro[r] = T.Cast("int64", row(row_list, base, T.min(i + r, end - 1))) * T.int64(row_bytes)

    return offsets


def step_start_macro(gathered: bool, rows: int, row_bytes: int, acc_lanes: int):
    """`start(ro, acc, row_list, base, i, end)`: the start of a step of integer row dots (`quant_int8.py`,
    `quant_split.py`): ro <- the rows' byte offsets (`row_offsets_macro`), acc[0 : acc_lanes] <- 0."""
    row_offsets = row_offsets_macro(gathered, rows, row_bytes)

    @T.macro
    def start(ro, acc, row_list, base, i, end):
        row_offsets(ro, row_list, base, i, end)
        for v in T.vectorized(acc_lanes):
            acc[v] = T.float32(0)

    return start


def half_at(w, row, byte):
    """The fp16 stored little-endian at w[row, byte] (as float16: callers widen it, alone or as a vector)."""
    bits = T.bitwise_or(T.Cast("uint16", byte_at(w, row, byte)),
                        T.shift_left(T.Cast("uint16", byte_at(w, row, byte + 1)), T.uint16(8)))
    return T.reinterpret("float16", bits)


def stored_groups(lay: QuantLayout, w, stored: int | None = None) -> int:
    """Groups a row of w stores (what a split layout's scale position needs): `stored`, else from w's row bytes
    (a flat view, `flat_rows`, has none: its callers pass `stored`)."""
    if stored is not None or not lay.split:
        return stored or 0
    return int(w.shape[1]) // lay.block_bytes


def scale(lay: QuantLayout, w, row, grp, widen: bool = True, stored: int | None = None):
    h = half_at(w, row, lay.scale_byte(grp, stored_groups(lay, w, stored)))
    return T.Cast("float32", h) if widen else h


def offset(lay: QuantLayout, w, row, grp, widen: bool = True, stored: int | None = None):
    h = half_at(w, row, lay.offset_byte(grp, stored_groups(lay, w, stored)))
    return T.Cast("float32", h) if widen else h


def code(lay: QuantLayout, w, row, grp, hf, j, centered: bool = True, stored: int | None = None):
    """The code of column grp * 32 + hf * 16 + j as float32 (scale and offset not applied); q4_0's nibble minus 8
    when `centered` (else the raw nibble: the dot product then subtracts 8 * sum(x) once per group)."""
    base = lay.codes_byte(grp, stored_groups(lay, w, stored))
    if lay.bits == 8:
        return T.Cast("float32", T.Cast("int8", byte_at(w, row, base + hf * HALF + j)))
    nib = T.Cast("float32", T.bitwise_and(T.shift_right(byte_at(w, row, base + j), T.Cast("uint8", hf * 4)),
                                          T.uint8(15)))
    return nib if lay.offset or not centered else nib - T.float32(8)


def value_at(dtype: str, w, row, k):
    """Weight element (row, k) as float32 for any dtype: the scalar path (tails, GPU lanes)."""
    if not is_quantized(dtype):
        return T.Cast("float32", w[row, k])
    lay = LAYOUTS[dtype]
    grp, e = k // GROUP, k % GROUP
    v = code(lay, w, row, grp, e // HALF, e % HALF) * scale(lay, w, row, grp)
    return v + offset(lay, w, row, grp) if lay.offset else v


def split_scales(lay: QuantLayout, stored: int, wf, ro_r, grp, n: int, offsets: bool = False):
    """float32 x n: a split row's scales (`offsets`: its offsets) of groups grp .. grp + n - 1 (one load, one
    conversion); wf the flat view, ro_r the row's byte offset (`flat_rows`)."""
    at = lay.offset_byte(grp, stored) if offsets else lay.scale_byte(grp, stored)
    raw = wf[T.ramp(ro_r + T.Cast("int64", at), T.int64(1), 2 * n)]
    return T.Cast(f"float32x{n}", T.reinterpret(f"float16x{n}", raw))


def vector_lanes(sched: CpuSchedule) -> int:
    """fp32 lanes of the float row dots and axpy over quantized rows: the schedule's, at most a half group."""
    return min(sched.lanes, HALF)


def block_prefetch_macro():
    @T.macro
    def pf(w, row, byte):
        T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(byte_at(w, row, byte)),
                                      T.int32(0), T.int32(2), T.int32(1)))

    return pf


def lines_prefetch_macro(rows: int, lines: int):
    """`pf_lines(w, ro, first, byte)`: prefetch `lines` cache lines from byte `byte` on in each of the `rows` rows at
    byte offsets ro[first:first + rows] (`row_offsets_macro`: the next step's from first = the step's rows), all
    unrolled: the split-row dots' scale lines once per step and code lines per iteration."""
    pf = block_prefetch_macro()

    @T.macro
    def pf_lines(w, ro, first, byte):
        for r in T.unroll(rows):
            for ln in T.unroll(lines):
                pf(w, ro[first + r], byte + ln * CACHE_LINE)

    return pf_lines


def next_block_lines(rows: int, row_bytes: int, iterations: int) -> int:
    """Cache lines of the next step's `rows` rows (of `row_bytes` each) one iteration of a row loop of `iterations`
    prefetches, so that the loop covers the whole block (`next_block_prefetch_macro`; the float loop of
    `common.dots_macro`)."""
    return -(-rows * -(-row_bytes // CACHE_LINE) // max(1, iterations))


def next_block_prefetch_macro(rows: int, row_bytes: int, iterations: int):
    """`pf_block(w, ro, it)`: the prefetch of an integer row-dot loop of `iterations` iterations over a step of a
    task's own `rows` contiguous rows (ro: the step's, then the next step's row byte offsets, `row_offsets_macro`): at
    iteration it, the it-th share of the next step's rows as one block (ro[rows] on), in address order, never past the
    next step's last row. Gathered rows keep one prefetch per row and line (`group_prefetch_macro`).

    Why not each row's own lines per iteration, as before session 46: Intel's L2 streamer follows one stream per 4 KB
    page, and a step's rows read side by side were interleaved streams it could not follow where rows are under 4 KB:
    a q4_0 linear at k = 4096 (2304-byte rows, 8 a step) read at 71% of the read limit, 82-87% with the next step
    prefetched as one block (BENCHMARKS.md, session 46)."""
    pf = block_prefetch_macro()
    per_it = next_block_lines(rows, row_bytes, iterations)

    @T.macro
    def pf_block(w, ro, it):
        for ln in T.unroll(per_it):  # each line's address clamped on its own (clamping the share once, its lines then
            # off one base, read q4_0 / q8_0 linears 0.84-0.93x as fast, session 46: measured, not understood)
            pf(w, T.min(ro[rows] + T.Cast("int64", (it * per_it + ln) * CACHE_LINE),
                        ro[2 * rows - 1] + T.int64(row_bytes - 1)), 0)

    return pf_block


def group_prefetch_macro(lay: QuantLayout, stored: int, rows: int):
    """(`pf_group(w, ro, first, grp)`, `pf_scales(w, ro, first, g0, g1)`): prefetch in the `rows` rows at byte
    offsets ro[first:first + rows]. `pf_group`: what group grp needs when grp starts a cache line of codes (block
    layouts: every `CACHE_LINE // block_bytes` blocks, i.e. q8_0's 34-byte blocks at every block; split: every 4
    groups), one test per group for all rows, gathered and streamed rows alike. Session 13 prefetched gathered q8_0
    rows once per line (the line of a block's last byte); quietly that was 1.08x the time of indexed q8_0 at 2 threads
    from DRAM, and interleaved again in session 15 1.04-1.08x (1 thread 1.01x): dropped (BENCHMARKS.md, session 15).
    `pf_scales` (split layouts; once per step): the scale (and offset) lines of groups [g0, g1). Why not a second
    test per group for the scales: LLVM speculates nested conditional prefetches (aarch64: 16 per group instead of 8
    per 4)."""
    pf = block_prefetch_macro()
    per_line = CACHE_LINE // lay.code_bytes if lay.split else max(1, CACHE_LINE // lay.block_bytes)

    @T.macro
    def pf_group(w, ro, first, grp):
        if grp % per_line == 0:
            for r in T.unroll(rows):
                pf(w, ro[first + r], lay.codes_byte(grp, stored))

    @T.macro
    def pf_scales(w, ro, first, g0, g1):
        if lay.split:
            for ln in range((lay.scale_byte(g1, stored) - lay.scale_byte(g0, stored) + CACHE_LINE - 1) // CACHE_LINE):
                for r in T.unroll(rows):
                    pf(w, ro[first + r], lay.scale_byte(g0, stored) + ln * CACHE_LINE)
            if lay.offset:
                for ln in range((lay.offset_byte(g1, stored) - lay.offset_byte(g0, stored) + CACHE_LINE - 1) //
                                CACHE_LINE):
                    for r in T.unroll(rows):
                        pf(w, ro[first + r], lay.offset_byte(g0, stored) + ln * CACHE_LINE)

    return pf_group, pf_scales


def quant_dots_macro(d: int, dtype: str, sched: CpuSchedule, *, gathered: bool, store=None, prefetch=None):
    """`common.dots_macro` for quantized rows: (`dots_all`, `dots`) with the same arguments and results."""
    lay = LAYOUTS[dtype]
    L, R = vector_lanes(sched), sched.rows
    S = HALF // L
    prefetch = sched.prefetch if prefetch is None else bool(prefetch)
    store = store or (lambda s: s)
    n_full = d // GROUP
    stored = lay.stored_groups(d)
    row = row_index(gathered)
    hsum = hsum_macro(L)
    pf = block_prefetch_macro()
    off = lay.offset
    centered_by_sum = lay.bits == 4 and not off  # q4_0
    sums = off or centered_by_sum  # the group's sum of x is needed

    @T.macro
    def dots(w, x, m, rows, base, i, end, dst, dcol):
        # per group and row: g = sum(code * x) in fp32 lanes, then acc += scale * g (+ offset * sum(x)); q4_0's
        # "- 8" enters g as -8 * sum(x), computed once per group for all rows (fewer operations per weight)
        acc = T.alloc_buffer((R * L,), "float32", scope="global")
        xs = T.alloc_buffer((L,), "float32", scope="global")  # the group's x, summed into L lanes
        for v in T.vectorized(R * L):
            acc[v] = T.float32(0)
        for grp in range(n_full):
            if prefetch:
                for r in T.unroll(R):
                    pf(w, row(rows, base, T.min(i + R + r, end - 1)), lay.codes_byte(grp, stored))
            if sums:
                for v in T.vectorized(L):
                    xs[v] = T.float32(0)
                for hf in T.unroll(2):
                    for s in T.unroll(S):
                        for v in T.vectorized(L):
                            xs[v] = xs[v] + x[m, grp * GROUP + hf * HALF + s * L + v]
            for r in T.unroll(R):
                g = T.alloc_buffer((L,), "float32", scope="global")
                rr: T.let = row(rows, base, T.min(i + r, end - 1))
                for v in T.vectorized(L):
                    g[v] = xs[v] * T.float32(-8) if centered_by_sum else T.float32(0)
                for hf in T.unroll(2):
                    for s in T.unroll(S):
                        for v in T.vectorized(L):
                            g[v] = g[v] + code(lay, w, rr, grp, hf, s * L + v, centered=False) * x[
                                m, grp * GROUP + hf * HALF + s * L + v]
                sc: T.let = scale(lay, w, rr, grp)
                for v in T.vectorized(L):
                    if off:
                        acc[r * L + v] = acc[r * L + v] + g[v] * sc + xs[v] * offset(lay, w, rr, grp)
                    else:
                        acc[r * L + v] = acc[r * L + v] + g[v] * sc
        red = T.alloc_buffer((L,), "float32", scope="global")
        for r in T.unroll(R):
            for v in T.vectorized(L):
                red[v] = acc[r * L + v]
            hsum(red, 0)
            for k in range(n_full * GROUP, d):
                red[0] = red[0] + value_at(dtype, w, row(rows, base, T.min(i + r, end - 1)), k) * x[m, k]
            if i + r < end:
                dst[m, dcol + i + r] = store(red[0])

    @T.macro
    def dots_all(w, x, M, rows, base, i, end, dst, dcol):
        for m in range(M):
            dots(w, x, m, rows, base, i, end, dst, dcol)

    return dots_all, dots
