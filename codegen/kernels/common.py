"""Building blocks shared by the CPU kernels: activations (the table's TIR forms), names, row-dot macros (the row
axpy, the down projection's, is in axpy.py).

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
from functools import cache

from tvm.script import tirx as T

from ...ir import activations
from ...ir.activations import ACTIVATIONS
from ...ir.quant import LAYOUTS
from . import tvmscript_speed  # noqa: F401 - installs the fast T.macro expansion
from .int8_row_dots import int8_row_dots
from .quant_blocks import next_block_lines, quant_dots_macro
from .rows import (
    CACHE_LINE,
    ELEM_BYTES,
    FMLAL,
    chunks_per_line,
    fmlal_macro,
    hsum_macro,
    prefetch_macro,
    row_index,
    wide_load_elems,
)
from .schedule import CpuSchedule

WEIGHT_DTYPES = ("float32", "float16")
OPAQUE = 8  # TVM's OpPatternKind kOpaque: FuseOps merges nothing into a PrimFunc marked so
GATE_ACTS = tuple(ACTIVATIONS)
UP_ACTS = activations.UP_ACTS


def check_dtype(dtype: str) -> None:
    if dtype not in WEIGHT_DTYPES and dtype not in LAYOUTS:
        raise ValueError(f"weight dtype must be one of {WEIGHT_DTYPES} or a quantized layout ({', '.join(LAYOUTS)}), "
                         f"got {dtype!r}")


def dtype_bytes(dtype: str) -> int:
    return ELEM_BYTES[dtype]


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


def skipping_value(act: Callable) -> Callable:
    """The value a kernel that skips neurons keeps for a gate pre-activation v, given the activation `act`.

    A non-finite v means the token's input holds Inf or NaN (the compiler keeps blocks with non-finite weights
    dense), so its up value u is non-finite too, and torch's dense computation gives act(v) · u = 0 · Inf = NaN
    where act(v) = 0. Keeping NaN there instead of 0 lists the neuron (see `is_active`) and gives that NaN.
    """
    nan = T.float32(float("nan"))
    return lambda v: T.if_then_else(T.Or(T.isfinite(v), is_active(act(v))), act(v), nan)


def is_active(value):
    """Whether a neuron's kept value lists it: nonzero, or NaN (the NaN must reach the output). Spelled with isnan:
    LLVM's ordered `!=` is false for NaN."""
    return T.Or(T.isnan(value), value != T.float32(0))


def loader(dtype: str) -> Callable:
    """Weight element -> float32 (fp16 loads become vector `vcvtph2ps` once vectorized)."""
    if dtype == "float32":
        return lambda e: e
    return lambda e: T.Cast("float32", e)


@cache   # kernel factories ask it for their row dots' x8 flag and again for the preparation (`with_x_operand`)
def x_operand(d: int, dtype: str, sched: CpuSchedule, kernel: str = ""):
    """(x8, nbytes, prep) for a kernel whose row dots read `dtype` rows of length d: with x8 (the schedule's int8 dot
    serves the layout: the row dots of an `int8_row_dots.INT8_ROW_DOTS` entry) the kernel allocates xb [M, nbytes]
    uint8, runs `prep(x, xb, M)` once and hands xb to the dots (made with `x8=True` and the same `kernel`: x's layout
    may be the kernel's choice, `CpuSchedule.paired_q8`) instead of x; otherwise (False, 0, None) and the dots read
    x."""
    family = int8_row_dots(dtype, sched, kernel)
    if family is None:
        return False, 0, None
    return True, family.x_layout(d, dtype, sched).nbytes, family.prep(d, dtype, sched)


def with_x_operand(d: int, dtype: str, sched: CpuSchedule, body, kernel: str = ""):
    """Macro `run(x, M, *rest)`: calls the macro `body(x', M, *rest)` with x' = x, or where the schedule's int8 dot
    serves `dtype` rows (`x_operand`'s x8, with which the kernel's dots are then made) x prepared once into the 8-bit
    buffer those dots read. (Define what `body` calls before it: a macro reads its free names when it is made.)"""
    x8, nbytes, prep = x_operand(d, dtype, sched, kernel)

    @T.macro
    def run(x, M, *rest):
        if x8:
            xb = T.alloc_buffer((M, nbytes), "uint8")
            prep(x, xb, M)
            body(xb, M, *rest)
        else:
            body(x, M, *rest)

    return run


def dots_macro(d: int, dtype: str, sched: CpuSchedule, *, gathered: bool, store: Callable | None = None,
               prefetch: bool | None = None, x8: bool = False, kernel: str = ""):
    """Returns (`dots_all`, `dots`), one step over `sched.rows` rows of a row list for M tokens / one token.

    `dots(w, x, m, rows, base, i, end, dst, dcol)`: for r < rows with p = i + r < end,
    dst[m, dcol + p] = store(dot(w[row(p), :d], x[m, :d])), with row(p) = rows[base + p] (gathered) or
    base + p (contiguous; `rows` unused) and float32 accumulation. Positions past `end` recompute
    row(end - 1) (already cached) and store nothing, so any list length works with one code path.
    With `prefetch`, the rows of the next step are prefetched in step with the stream of this one.

    `x8` (from `x_operand` for the same `kernel`): x is the prepared 8-bit x and the rows' dots run in integers
    (the same `int8_row_dots.INT8_ROW_DOTS` entry's).

    `dots_all(w, x, M, rows, base, i, end, dst, dcol)`: the same for tokens 0..M-1. The step's rows are
    read from memory once; blocks of `token_block` tokens then share every loaded weight vector, in
    groups of `sched.block_rows` rows (block_rows * token_block register accumulators); the remaining
    tokens go one by one.
    """
    if x8:  # x is the prepared byte buffer of `x_operand`
        family = int8_row_dots(dtype, sched, kernel)
        if family is None:
            raise ValueError(f"x8 row dots of {dtype!r} rows on int8 dot {sched.int8_dot!r}: no integer row dots serve "
                             "them; pass x8 from `x_operand` for the same dtype, schedule and kernel")
        return family.dots(d, dtype, sched, gathered=gathered, store=store, prefetch=prefetch)
    if dtype in LAYOUTS:
        return quant_dots_macro(d, dtype, sched, gathered=gathered, store=store, prefetch=prefetch)
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
    VW = wide_load_elems(dtype, sched)  # elements per weight load: fp16 with paired accumulators: a full register
    CPL = chunks_per_line(C, dtype)  # chunks that make one cache line: one prefetch per row and line
    n_line = n_chunk // CPL
    # a task's own rows: the next step's R rows prefetched as one block in address order, a share per line of the
    # loop (`quant_blocks.next_block_prefetch_macro`: why); gathered rows: one prefetch per row and line
    streamed = prefetch and not gathered and n_line > 0
    per_line = CACHE_LINE // ELEM_BYTES[dtype]
    per_it = next_block_lines(R, d * ELEM_BYTES[dtype], n_line)

    fml = sched.fp16fml and dtype == "float16" and VW == 8 and L == 4  # fmlal: 8 halves into 2 x 4 fp32 sums

    fmlal = fmlal_macro()

    @T.macro
    def chunk(w, x, m, rows, base, i, end, acc, kc):
        if fml:  # acc[0:4] += w[0:4] * x16[0:4] (fmlal), acc[4:8] += w[4:8] * x16[4:8] (fmlal2), exact products
            for a in T.unroll(C // VW):
                for r in T.unroll(R):
                    fmlal(acc, r * C + a * VW, w, row(rows, base, T.min(i + r, end - 1)), x, m, kc * C + a * VW,
                          FMLAL[0])
                    fmlal(acc, r * C + a * VW + 4, w, row(rows, base, T.min(i + r, end - 1)), x, m, kc * C + a * VW,
                          FMLAL[1])
        else:
            for a in T.unroll(C // VW):
                for r in T.unroll(R):
                    for v in T.vectorized(VW):
                        acc[r * C + a * VW + v] = acc[r * C + a * VW + v] + ld(
                            w[row(rows, base, T.min(i + r, end - 1)), kc * C + a * VW + v]) * x[m, kc * C + a * VW + v]

    @T.macro
    def dots(w, x, m, rows, base, i, end, dst, dcol):
        acc = T.alloc_buffer((R * C,), "float32", scope="global")
        for v in T.vectorized(R * C):
            acc[v] = T.float32(0)
        for kl in range(n_line):
            if streamed:  # element k of the block from the next step's first row (each line's clamped to the block)
                for ln in T.unroll(per_it):
                    pf(w, base + T.min(i + R, end - 1), T.min((kl * per_it + ln) * per_line,
                                                            (T.min(i + 2 * R - 1, end - 1) - T.min(i + R, end - 1))
                                                            * d + d - 1), 1)
            elif prefetch:
                for r in T.unroll(R):
                    pf(w, row(rows, base, T.min(i + R + r, end - 1)), kl * CPL * C, 1)
            for kk in T.unroll(CPL):
                chunk(w, x, m, rows, base, i, end, acc, kl * CPL + kk)
        if n_line * CPL < n_chunk:
            if prefetch and not streamed:
                for r in T.unroll(R):
                    pf(w, row(rows, base, T.min(i + R + r, end - 1)), n_line * CPL * C, 1)
            for kc in range(n_line * CPL, n_chunk):
                chunk(w, x, m, rows, base, i, end, acc, kc)
        if n_vrem > 0:
            if prefetch and not streamed:
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
    def block_chunk(w, x, m0, rows, base, i, end, acc, kc):
        # one chunk of RB rows (from position i) for TB tokens: one L-lane accumulator per (row, token); a row's
        # weights are loaded VW at a time (fp16: a full register, widened once) and shared by the TB tokens
        wv = T.alloc_buffer((VW,), "float32", scope="global")
        for a in T.unroll(C // VW):
            for r in T.unroll(RB):
                for v in T.vectorized(VW):
                    wv[v] = ld(w[row(rows, base, T.min(i + r, end - 1)), kc * C + a * VW + v])
                for q in T.unroll(VW // L):
                    for b in T.unroll(TB):
                        for v in T.vectorized(L):
                            acc[(r * TB + b) * L + v] = (acc[(r * TB + b) * L + v]
                                                         + wv[q * L + v] * x[m0 + b, kc * C + a * VW + q * L + v])

    @T.macro
    def dots_block(w, x, m0, rows, base, i, end, dst, dcol):
        # tokens m0 .. m0 + TB - 1 against the step's rows, in groups of RB rows (RB * TB accumulators)
        for g in T.unroll(R // RB):
            acc = T.alloc_buffer((RB * TB * L,), "float32", scope="global")
            for v in T.vectorized(RB * TB * L):
                acc[v] = T.float32(0)
            for kl in range(n_line):
                if prefetch:
                    for r in T.unroll(RB):
                        pf(w, row(rows, base, T.min(i + R + g * RB + r, end - 1)), kl * CPL * C, 1)
                for kk in T.unroll(CPL):
                    block_chunk(w, x, m0, rows, base, i + g * RB, end, acc, kl * CPL + kk)
            if n_line * CPL < n_chunk:
                if prefetch:
                    for r in T.unroll(RB):
                        pf(w, row(rows, base, T.min(i + R + g * RB + r, end - 1)), n_line * CPL * C, 1)
                for kc in range(n_line * CPL, n_chunk):
                    block_chunk(w, x, m0, rows, base, i + g * RB, end, acc, kc)
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
