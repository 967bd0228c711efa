"""A CPU schedule for the matmuls TVM legalizes: `schedule_legalized_matmuls(lanes)`, a module pass.

On CPU, `tvm.compile`'s generic pipeline legalizes `R.matmul` into one plain loop nest
(`for b, i, j, k: C[b, i, j] += A[b, i, k] * B[b, k, j]`) and never schedules it: the innermost loop walks B down
a column (a stride of a row per multiply-add), one thread, no vectors. Our own kernels cover every matmul against a
weight, so such matmuls are those of two activations, few in a decoder's one-token step, but they are the work of
a hybrid's whole-prompt `prefill` (frontends/prefill.py): Mamba-2's chunked scan multiplies chunk x chunk segment
matrices (C·Bᵀ, then by the inputs; 256 x 256 per head group at transformers' default chunk), where the plain loop
nest ran at ~0.25 GFLOP/s and made one prefill call slower than 64 one-token steps (BENCHMARKS.md, session 13/14).

The schedule is the textbook register block: rows in blocks of ROWS, columns in vectors of `lanes`, the reduction
between them (`b, i/ROWS, j/lanes, k, i%ROWS, j%lanes`): each k broadcasts ROWS values of A against one contiguous
vector of B into ROWS vector accumulators; the batch and row blocks run in parallel where the matmul is large enough
to pay for waking the thread pool (PARALLEL_WORK). Each dim is blocked by the largest power of two up to its block
that divides it, 1 where it is symbolic (no tail loops; the reorder and the rest still apply). Scheduled matmuls
are marked opaque, as our own kernels are (codegen/build.py), so fusion does not merge an epilogue into them.
"""

from __future__ import annotations

import contextlib

from .kernels.common import OPAQUE

ROWS = 4  # rows of A per register block (ROWS vector accumulators of C)
# multiply-adds below which a matmul runs on one thread: waking the pool costs more than a small matmul (a
# [4, 2, 2] x [4, 2, 2048] one of a one-token step: 0.017 ms on one thread, 0.044 ms parallel, 2 cores, load ~14)
PARALLEL_WORK = 1 << 18
SYMBOLIC_EXTENT = 64  # what a symbolic loop counts as towards PARALLEL_WORK (a prompt's tokens: tens and more)


def _extent(sch, loop):
    value = sch.get(loop).extent
    return int(value) if hasattr(value, "value") else None


def _divisor(extent: int | None, most: int) -> int:
    """The largest power of two up to `most` dividing `extent` (1 where it is symbolic)."""
    if extent is None:
        return 1
    factor = most
    while factor > 1 and extent % factor:
        factor //= 2
    return factor


def is_legalized_matmul(func) -> bool:
    """Whether `func` is one block named "matmul" over spatial loops and one reduction loop, innermost (what
    LegalizeOps makes of `R.matmul` with two operands of at least two dims)."""
    import tvm
    from tvm import s_tir

    if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs and "tirx.is_scheduled" in func.attrs:
        return False
    try:
        sch = s_tir.Schedule(func)
        block = sch.get_sblock("matmul")
    except Exception:  # noqa: BLE001 - no such block: not a legalized matmul
        return False
    iters = sch.get(block).iter_vars
    kinds = [int(v.iter_type) for v in iters]  # 0: data parallel, 2: reduction
    return len(iters) >= 3 and kinds[:-1] == [0] * (len(iters) - 1) and kinds[-1] == 2 \
        and len(sch.get_loops(block)) == len(iters)


def schedule_matmul(func, lanes: int):
    """`func` (a legalized matmul, `is_legalized_matmul`) with the register-block schedule of the module docstring."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    block = sch.get_sblock("matmul")
    *batch, i, j, k = sch.get_loops(block)
    rows, cols = _divisor(_extent(sch, i), ROWS), _divisor(_extent(sch, j), lanes)
    work = 1
    for loop in (*batch, i, j, k):
        work *= _extent(sch, loop) or SYMBOLIC_EXTENT
    i_out, i_in = sch.split(i, [None, rows])
    j_out, j_in = sch.split(j, [None, cols])
    sch.reorder(*batch, i_out, j_out, k, i_in, j_in)
    sch.unroll(i_in)
    if cols > 1:
        sch.vectorize(j_in)
    if work >= PARALLEL_WORK:
        sch.parallel(sch.fuse(*batch, i_out))
    sch.decompose_reduction(block, k)
    return sch.mod["main"].with_attr("op_pattern", OPAQUE).with_attr("tirx.is_scheduled", True)


_LEFT_PLAIN = []  # non-empty inside `left_plain()`


@contextlib.contextmanager
def left_plain():
    """Builds inside leave the legalized matmuls as TVM made them (benchmarks/hybrid_prefill.py's before/after)."""
    _LEFT_PLAIN.append(True)
    try:
        yield
    finally:
        _LEFT_PLAIN.pop()


def calls_matmul(mod) -> bool:
    """Whether a Relax function of `mod` (before legalization) calls `R.matmul`, the op legalized into the loop nest
    scheduled here. Without one the pass has nothing to do, yet deciding so costs a Schedule per PrimFunc (~2 ms
    each: ~0.15 s of a dense tiny Llama's build, benchmarks/cpu_matmul_cost.py), so the build leaves it out. Reads
    the bindings (~2 µs each; a Python visitor of every expression took 10x that); a body of another shape (an If,
    a nested function) counts as calling it."""
    import tvm
    from tvm import relax

    matmul = tvm.ir.Op.get("relax.matmul")
    for func in mod.functions.values():
        if not isinstance(func, relax.Function):
            continue
        if not isinstance(func.body, relax.SeqExpr):
            return True
        for block in func.body.blocks:
            for binding in block.bindings:
                value = binding.value
                if isinstance(value, (relax.If, relax.Function)) or (
                        isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.same_as(matmul)):
                    return True
    return False


def schedule_legalized_matmuls(lanes: int):
    """The module pass: every legalized matmul PrimFunc of the module scheduled (`schedule_matmul`); one the
    schedule cannot take is left as it was (a plain loop nest is slow, not wrong)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="ScheduleLegalizedMatmuls")
    def transform(mod, _ctx):
        mod = mod.clone()  # the pass's input stays as it was
        for gv, func in list(mod.functions.items()) if not _LEFT_PLAIN else ():
            if is_legalized_matmul(func):
                try:
                    mod[gv] = schedule_matmul(func, lanes)
                except Exception:  # noqa: BLE001 - see the docstring: unscheduled is slow, not wrong
                    continue
        return mod

    return transform
