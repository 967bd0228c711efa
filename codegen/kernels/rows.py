"""Small TVMScript helpers shared by the CPU row macros (`common.py`, `quant_blocks.py`): horizontal vector sums,
the position -> weight-row map of a row list, and the cache-line bookkeeping of loads and prefetches (one prefetch
per row and cache line; column slices of whole lines)."""

from __future__ import annotations

from collections.abc import Callable

from tvm.script import tirx as T

CACHE_LINE = 64
# rows per pass of an integer row-dot loop over a step's R rows (R / ROWS_PER_LOOP passes): a pass over all 8 holds
# their pointers and the next step's for the prefetches, spilled (quant_split8's AVX2 quad loop: accumulators, x̂ of
# 4 groups and 3 pointers per row; quant_paired8's AVX512-VNNI pair loop: 44 movq per pass)
ROWS_PER_LOOP = 4
ELEM_BYTES = {"float32": 4, "float16": 2}
FMLAL = ("llvm.aarch64.neon.fmlal", "llvm.aarch64.neon.fmlal2")  # low / high four halves of a q register


def hsum_macro(lanes: int):
    """`hsum(acc, base)`: acc[base] = sum(acc[base : base + lanes]) by vector halving (log2 steps)."""

    @T.macro
    def fold(acc, base, half):  # acc[base : base + half] += acc[base + half : base + 2 * half]
        for v in T.vectorized(half):
            acc[base + v] = acc[base + v] + acc[base + v + half]

    @T.macro
    def hsum(acc, base):
        if lanes >= 32:
            fold(acc, base, 16)
        if lanes >= 16:
            fold(acc, base, 8)
        if lanes >= 8:
            fold(acc, base, 4)
        if lanes >= 4:
            fold(acc, base, 2)
        if lanes >= 2:
            acc[base] = acc[base] + acc[base + 1]

    return hsum


def row_sums_macro(rows: int, lanes: int, store: Callable):
    """`sums(acc, m, i, end, dst, dcol)`: the end of a step of row dots with one accumulator of `lanes` fp32 lanes per
    row, acc[r * lanes : (r + 1) * lanes]: each row's lanes summed and, for step positions i + r < end, stored as
    dst[m, dcol + i + r] = store(sum)."""
    hsum = hsum_macro(lanes)

    @T.macro
    def sums(acc, m, i, end, dst, dcol):
        red = T.alloc_buffer((lanes,), "float32", scope="global")
        for r in T.unroll(rows):
            for v in T.vectorized(lanes):
                red[v] = acc[r * lanes + v]
            hsum(red, 0)
            if i + r < end:
                dst[m, dcol + i + r] = store(red[0])

    return sums


def per_token(dots):
    """`dots_all(w, x, M, rows, base, i, end, dst, dcol)`: the one-token macro `dots` (same arguments, m for M) for
    tokens 0..M-1 in turn."""

    @T.macro
    def dots_all(w, x, M, rows, base, i, end, dst, dcol):
        for m in range(M):
            dots(w, x, m, rows, base, i, end, dst, dcol)

    return dots_all


def row_index(gathered: bool) -> Callable:
    """Position p of a row list -> weight row: rows[base + p] when gathered, base + p when contiguous."""
    if gathered:
        return lambda rows, base, p: rows[base + p]
    return lambda rows, base, p: base + p


def wide_load_elems(dtype: str, sched) -> int:
    """Weight elements one vector operation of a dot product loads: `lanes`, except fp16 weights with an even
    number of accumulators, which load two accumulators' worth at once — a full register of halves (NEON:
    one 128-bit `ldr q`, widened by fcvtl + fcvtl2, rather than two 64-bit `ldr d`)."""
    return sched.lanes * 2 if dtype == "float16" and sched.accumulators % 2 == 0 else sched.lanes


def chunks_per_line(chunk: int, dtype: str) -> int:
    """Chunks of `chunk` elements in one cache line (at least 1): the stride of one prefetch."""
    return max(1, CACHE_LINE // (chunk * ELEM_BYTES[dtype]))


def prefetch_macro(dtype: str):
    """`pf(w, row, k0, n)`: prefetch the cache lines of w[row, k0 : k0 + n] (n static) into L2.

    Locality 2 (prefetcht1): into L1 the prefetches would compete with the demand misses for the few
    L1 miss buffers; measured on Zen 4, t1/t2 gave 17 GB/s per core on gathered rows, t0 13 GB/s.
    """
    per_line = CACHE_LINE // ELEM_BYTES[dtype]

    @T.macro
    def pf(w, row, k0, n):
        for q in T.unroll((n + per_line - 1) // per_line):
            T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(w[row, k0 + q * per_line]),
                                          T.int32(0), T.int32(2), T.int32(1)))

    return pf


def task_blocks(t, n_blocks: int, unit: int, threads: int):
    """(b0, b1): task t's column blocks, whole units of `unit` blocks (a cache line of weights)."""
    n_units = n_blocks // unit
    return t * n_units // threads * unit, (t + 1) * n_units // threads * unit


def fmlal_macro():
    """`fmlal(acc, a0, w, wrow, x, m, k0, intrin)`: acc[a0 : a0 + 4] += w[wrow, k0 : k0 + 8] * fp16(x[m, k0 : k0 + 8])
    on the low (FMLAL[0]) or high (FMLAL[1]) four halves — aarch64 FEAT_FHM; fp16 products are exact in fp32."""

    @T.macro
    def fmlal(acc, a0, w, wrow, x, m, k0, intrin):
        acc[T.ramp(a0, 1, 4)] = T.call_llvm_pure_intrin("float32x4", intrin, acc[T.ramp(a0, 1, 4)],
                                                        w[wrow, T.ramp(k0, 1, 8)],
                                                        T.Cast("float16x8", x[m, T.ramp(k0, 1, 8)]))

    return fmlal


def column_split(d: int, sched, dtype: str = "float32") -> tuple[int, int, int]:
    """Static split of d output columns into blocks of lanes*accumulators for `threads` tasks.

    Returns (block, n_blocks, tail_start): task t owns blocks [t*n_blocks//threads, (t+1)*n_blocks//threads)
    rounded to whole cache lines of `dtype` weights (see `line_blocks`); columns [tail_start, d) belong to the
    last task.
    """
    block = sched.lanes * sched.accumulators
    unit = chunks_per_line(block, dtype)
    n_blocks = d // block // unit * unit
    return block, n_blocks, n_blocks * block
