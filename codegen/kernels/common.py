"""Building blocks shared by the CPU kernels: activations (the table's TIR forms), names, row-dot / row-axpy macros.

Everything here is TVMScript meta-programming: a factory takes the static sizes and a `CpuSchedule`,
closes over them, and returns `T.macro`s that the kernel PrimFuncs expand inline. The loops are written
at the level the CPU runs them (explicit `T.parallel` tasks, `T.vectorized` lanes, `T.unroll`ed
independent accumulators), so LLVM gets straight-line vector FMAs with nothing left to schedule.

Two TVMScript 0.27 facts the kernels rely on (both checked in the generated LLVM IR):
- `x = expr` inside a PrimFunc declares a mutable scalar, i.e. a one-element buffer that the CPU lowering
  allocates through TVMBackendAllocWorkspace; immutable bindings are written `x: T.let = expr`.
- On CPU only `global`-scope allocations under 1 KiB become stack allocas (registers after SROA);
  `local` ones go through the workspace allocator and the accumulators then live in memory. Per-task
  scratch is therefore `scope="global"` inside the `T.parallel` body (each task has its own stack).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from tvm.script import tirx as T

from ...ir import activations
from ...ir.activations import ACTIVATIONS
from .schedule import CpuSchedule

WEIGHT_DTYPES = ("float32", "float16")
GATE_ACTS = tuple(ACTIVATIONS)
UP_ACTS = activations.UP_ACTS
CACHE_LINE = 64


def check_dtype(dtype: str) -> None:
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight dtype must be one of {WEIGHT_DTYPES}, got {dtype!r}")


def dtype_bytes(dtype: str) -> int:
    return {"float32": 4, "float16": 2}[dtype]


def threshold_tag(threshold: float) -> str:
    """The fp32 bit pattern of a threshold as 8 hex digits: an exact, identifier-safe encoding."""
    return struct.pack(">f", float(threshold)).hex()


def symbol(*parts: object) -> str:
    """`actsparse_` + parts joined by `_`: the global_symbol of a kernel (unique per parameter set)."""
    return "actsparse_" + "_".join(str(p) for p in parts)


def activation(kind: str, threshold: float = 0.0, family: str = "cpu") -> Callable:
    """PrimExpr -> PrimExpr for activation `kind` on float32 values, from the activation table
    (ir/activations.py: `gelu` is the erf form, `gelu_tanh` the tanh one). `family` "cuda" takes the entry's
    CUDA form."""
    try:
        entry = ACTIVATIONS[kind]
    except KeyError:
        raise ValueError(f"unknown activation {kind!r}; valid: {GATE_ACTS}") from None
    return entry.cuda_expr(threshold) if family == "cuda" else entry.tir_expr(threshold)


def loader(dtype: str) -> Callable:
    """Weight element -> float32 (fp16 loads become vector `vcvtph2ps` once vectorized)."""
    if dtype == "float32":
        return lambda e: e
    return lambda e: T.Cast("float32", e)


def prefetch_macro(dtype: str):
    """`pf(w, row, k0, n)`: prefetch the cache lines of w[row, k0 : k0 + n] (n static) into L2.

    Locality 2 (prefetcht1): into L1 the prefetches would compete with the demand misses for the few
    L1 miss buffers; measured on Zen 4, t1/t2 gave 17 GB/s per core on gathered rows, t0 13 GB/s.
    """
    per_line = CACHE_LINE // dtype_bytes(dtype)

    @T.macro
    def pf(w, row, k0, n):
        for q in T.unroll((n + per_line - 1) // per_line):
            T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(w[row, k0 + q * per_line]),
                                          T.int32(0), T.int32(2), T.int32(1)))

    return pf


def hsum_macro(lanes: int):
    """`hsum(acc, base)`: acc[base] = sum(acc[base : base + lanes]) by vector halving (log2 steps)."""

    @T.macro
    def hsum(acc, base):
        if lanes >= 32:
            for v in T.vectorized(16):
                acc[base + v] = acc[base + v] + acc[base + v + 16]
        if lanes >= 16:
            for v in T.vectorized(8):
                acc[base + v] = acc[base + v] + acc[base + v + 8]
        if lanes >= 8:
            for v in T.vectorized(4):
                acc[base + v] = acc[base + v] + acc[base + v + 4]
        if lanes >= 4:
            for v in T.vectorized(2):
                acc[base + v] = acc[base + v] + acc[base + v + 2]
        if lanes >= 2:
            acc[base] = acc[base] + acc[base + 1]

    return hsum


def row_index(gathered: bool) -> Callable:
    """Position p of a row list -> weight row: rows[base + p] when gathered, base + p when contiguous."""
    if gathered:
        return lambda rows, base, p: rows[base + p]
    return lambda rows, base, p: base + p


def dots_macro(d: int, dtype: str, sched: CpuSchedule, *, gathered: bool, store: Callable | None = None,
               prefetch: bool | None = None):
    """Returns (`dots_all`, `dots`), one step over `sched.rows` rows of a row list for M tokens / one token.

    `dots(w, x, m, rows, base, i, end, dst, dcol)`: for r < rows with p = i + r < end,
    dst[m, dcol + p] = store(dot(w[row(p), :d], x[m, :d])), with row(p) = rows[base + p] (gathered) or
    base + p (contiguous; `rows` unused) and float32 accumulation. Positions past `end` recompute
    row(end - 1) (already cached) and store nothing, so any list length works with one code path.
    With `prefetch`, the rows of the next step are prefetched in step with the stream of this one.

    `dots_all(w, x, M, rows, base, i, end, dst, dcol)`: the same for tokens 0..M-1. The step's rows are
    read from memory once; blocks of `token_block` tokens then share every loaded weight vector, in
    groups of `sched.block_rows` rows (block_rows * token_block register accumulators); the remaining
    tokens go one by one.
    """
    L, A, R, TB = sched.lanes, sched.accumulators, sched.rows, sched.token_block
    RB = sched.block_rows
    prefetch = sched.prefetch if prefetch is None else bool(prefetch)
    store = store or (lambda s: s)
    C = L * A
    n_chunk = d // C
    n_vrem = (d % C) // L
    vec_end = n_chunk * C + n_vrem * L
    ld = loader(dtype)
    row = row_index(gathered)
    hsum = hsum_macro(L)
    pf = prefetch_macro(dtype)

    @T.macro
    def dots(w, x, m, rows, base, i, end, dst, dcol):
        acc = T.alloc_buffer((R * C,), "float32", scope="global")
        for v in T.vectorized(R * C):
            acc[v] = T.float32(0)
        for kc in range(n_chunk):
            if prefetch:
                for r in T.unroll(R):
                    pf(w, row(rows, base, T.min(i + R + r, end - 1)), kc * C, C)
            for a in T.unroll(A):
                for r in T.unroll(R):
                    for v in T.vectorized(L):
                        acc[r * C + a * L + v] = acc[r * C + a * L + v] + ld(
                            w[row(rows, base, T.min(i + r, end - 1)), kc * C + a * L + v]) * x[m, kc * C + a * L + v]
        if n_vrem > 0:
            if prefetch:
                for r in T.unroll(R):
                    pf(w, row(rows, base, T.min(i + R + r, end - 1)), n_chunk * C, d - n_chunk * C)
            for kr in T.unroll(n_vrem):
                for r in T.unroll(R):
                    for v in T.vectorized(L):
                        acc[r * C + v] = acc[r * C + v] + ld(
                            w[row(rows, base, T.min(i + r, end - 1)), n_chunk * C + kr * L + v]
                        ) * x[m, n_chunk * C + kr * L + v]
        # horizontal sums in a separate buffer: acc then only sees whole aligned vectors and stays in
        # registers (LLVM's SROA gives up on an array also accessed with narrower vectors)
        red = T.alloc_buffer((L,), "float32", scope="global")
        for r in T.unroll(R):
            for v in T.vectorized(L):
                red[v] = acc[r * C + v]
            if A > 1:
                for a in T.unroll(1, A):
                    for v in T.vectorized(L):
                        red[v] = red[v] + acc[r * C + a * L + v]
            hsum(red, 0)
            for k in range(vec_end, d):
                red[0] = red[0] + ld(w[row(rows, base, T.min(i + r, end - 1)), k]) * x[m, k]
            if i + r < end:
                dst[m, dcol + i + r] = store(red[0])

    @T.macro
    def dots_block(w, x, m0, rows, base, i, end, dst, dcol):
        # tokens m0 .. m0 + TB - 1 against the step's rows, in groups of RB rows (RB * TB accumulators)
        for g in T.unroll(R // RB):
            acc = T.alloc_buffer((RB * TB * L,), "float32", scope="global")
            for v in T.vectorized(RB * TB * L):
                acc[v] = T.float32(0)
            for kc in range(n_chunk):
                if prefetch:
                    for r in T.unroll(RB):
                        pf(w, row(rows, base, T.min(i + R + g * RB + r, end - 1)), kc * C, C)
                for a in T.unroll(A):
                    for r in T.unroll(RB):
                        for b in T.unroll(TB):
                            for v in T.vectorized(L):
                                acc[(r * TB + b) * L + v] = acc[(r * TB + b) * L + v] + ld(
                                    w[row(rows, base, T.min(i + g * RB + r, end - 1)), kc * C + a * L + v]
                                ) * x[m0 + b, kc * C + a * L + v]
            for kr in range(n_vrem):
                for r in T.unroll(RB):
                    for b in T.unroll(TB):
                        for v in T.vectorized(L):
                            acc[(r * TB + b) * L + v] = acc[(r * TB + b) * L + v] + ld(
                                w[row(rows, base, T.min(i + g * RB + r, end - 1)), n_chunk * C + kr * L + v]
                            ) * x[m0 + b, n_chunk * C + kr * L + v]
            red = T.alloc_buffer((L,), "float32", scope="global")
            for r in T.unroll(RB):
                for b in T.unroll(TB):
                    for v in T.vectorized(L):
                        red[v] = acc[(r * TB + b) * L + v]
                    hsum(red, 0)
                    for k in range(vec_end, d):
                        red[0] = red[0] + ld(w[row(rows, base, T.min(i + g * RB + r, end - 1)), k]) * x[m0 + b, k]
                    if i + g * RB + r < end:
                        dst[m0 + b, dcol + i + g * RB + r] = store(red[0])

    @T.macro
    def dots_all(w, x, M, rows, base, i, end, dst, dcol):
        if TB > 1:
            for mb in range(M // TB):
                dots_block(w, x, mb * TB, rows, base, i, end, dst, dcol)
            for m in range(M // TB * TB, M):
                dots(w, x, m, rows, base, i, end, dst, dcol)
        else:
            for m in range(M):
                dots(w, x, m, rows, base, i, end, dst, dcol)

    return dots_all, dots


def column_split(d: int, sched: CpuSchedule) -> tuple[int, int, int]:
    """Static split of d output columns into blocks of lanes*accumulators for `threads` tasks.

    Returns (block, n_blocks, tail_start): task t owns blocks [t*n_blocks//threads, (t+1)*n_blocks//threads);
    columns [tail_start, d) (fewer than one block) belong to the last task.
    """
    block = sched.lanes * sched.accumulators
    n_blocks = d // block
    return block, n_blocks, n_blocks * block


def axpy_macro(d: int, dtype: str, sched: CpuSchedule, *, gathered: bool, prefetch: bool | None = None):
    """Returns (`axpy_all`, `axpy`), one step over `sched.rows` rows of a row list for M tokens / one token.

    `axpy(w, rows, base, i, end, h, hcol, t, out, m)`: out[m, cols(t)] += sum_r h[m, hcol + i + r] *
    w[row(i + r), cols(t)] over r < rows with i + r < end, row() as in `dots_macro`, on task t's column
    slice. Each task streams its contiguous slice of the step's rows (vector FMA; the out slice stays
    in L1) and, with `prefetch`, prefetches the same slice of the next step's rows.

    `axpy_all(w, rows, base, i, end, h, hcol, t, out, M)`: the same for tokens 0..M-1; blocks of
    `token_block` tokens share each loaded weight vector.
    """
    L, R, TB = sched.lanes, sched.rows, sched.token_block
    prefetch = sched.prefetch if prefetch is None else bool(prefetch)
    block, n_blocks, tail = column_split(d, sched)
    threads = sched.threads
    ld = loader(dtype)
    row = row_index(gathered)
    pf = prefetch_macro(dtype)
    n_tail_vec = (d - tail) // L
    tail_vec_end = tail + n_tail_vec * L

    def axsum(w, rows, base, i, end, hv, hoff, col):
        e = hv[hoff] * ld(w[row(rows, base, T.min(i, end - 1)), col])
        for r in range(1, R):
            e = e + hv[hoff + r] * ld(w[row(rows, base, T.min(i + r, end - 1)), col])
        return e

    @T.macro
    def step(w, rows, base, i, end, h, hcol, t, out, m0, nb):
        # coefficients of the nb tokens m0.. (0 past the end of the list), then the column sweep
        hv = T.alloc_buffer((nb * R,), "float32", scope="global")
        for b in T.unroll(nb):
            for r in T.unroll(R):
                hv[b * R + r] = T.float32(0)
                if i + r < end:
                    hv[b * R + r] = h[m0 + b, hcol + i + r]
        b0: T.let = t * n_blocks // threads
        b1: T.let = (t + 1) * n_blocks // threads
        for cb in range(b1 - b0):
            if prefetch:
                for r in T.unroll(R):
                    pf(w, row(rows, base, T.min(i + R + r, end - 1)), (b0 + cb) * block, block)
            for b in T.unroll(nb):
                for v in T.vectorized(block):
                    out[m0 + b, (b0 + cb) * block + v] = out[m0 + b, (b0 + cb) * block + v] + axsum(
                        w, rows, base, i, end, hv, b * R, (b0 + cb) * block + v)
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


def zero_columns_macro(d: int, sched: CpuSchedule):
    """`zero_cols(t, out, M)`: out[:, cols(t)] = 0 for task t's column slice."""
    block, n_blocks, tail = column_split(d, sched)
    threads = sched.threads

    @T.macro
    def zero_cols(t, out, M):
        b0: T.let = t * n_blocks // threads
        b1: T.let = (t + 1) * n_blocks // threads
        for m in range(M):
            for b in range(b1 - b0):
                for v in T.vectorized(block):
                    out[m, (b0 + b) * block + v] = T.float32(0)
            if tail < d:
                if t == threads - 1:
                    for c in range(tail, d):
                        out[m, c] = T.float32(0)

    return zero_cols


def build_standalone(primfunc, target):
    """Compile one PrimFunc on its own (tests, benchmarks): returns the callable TVM module."""
    return build_kernels([primfunc], target)


def build_kernels(primfuncs, target):
    """Compile several PrimFuncs into one module (one compiler run: one object file, one nvcc call)."""
    import tvm

    if not isinstance(target, tvm.target.Target):
        target = tvm.target.Target(target)
    if target.kind.name == "cuda":
        from ..cuda_support import ensure_cuda_build

        ensure_cuda_build()
    mod = tvm.IRModule({str(f.attrs["global_symbol"]): f for f in primfuncs})
    with target:  # nvcc reads the architecture from the current target
        return tvm.compile(mod, target=target)
