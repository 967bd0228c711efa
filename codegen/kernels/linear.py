"""Linear layer with constant weights for CPUs: out[M, n] = x[M, k] @ w[n, k]^T (+ b[n]) (+ r[M, n]).

Buffers (destination passing): x [M, k] float32 with M symbolic (int64), w [n, k] dtype (float32 |
float16 | a quantized layout, accumulated in float32), b [n] float32 when `bias`, r [M, n] float32 when `residual`,
out [M, n] float32. Where the schedule has an int8 dot, quantized rows meet x quantized once per call to 8-bit blocks
(`quant_int8.py`).

Each task streams a contiguous block of weight rows once, `sched.rows` rows at a time (with
`accumulators` vector accumulators per row); for M > 1 those rows stay in L1/L2 while the tokens, in
register-blocked groups of `token_block`, take their dot products with them, so the weights are read from
memory once per call at any M. `row_share` is that per-task loop, which the sibling linears (sibling_linears.py)
run for each of their matrices.
"""

from __future__ import annotations

from functools import cache

from tvm.script import tirx as T

from .common import check_dtype, dots_macro, symbol, with_x_operand, x_operand
from .quant_blocks import weight_buffer
from .schedule import CpuSchedule


def fitted_schedule(k: int, n: int, dtype: str, sched: CpuSchedule) -> CpuSchedule:
    """`sched` fitted to rows of k `dtype` elements, after checking the sizes and the dtype."""
    check_dtype(dtype)
    if k < 1 or n < 1:
        raise ValueError(f"k and n must be positive, got k={k}, n={n}")
    return sched.fitted(k, dtype)


def row_share(k: int, n: int, dtype: str, sched: CpuSchedule, *, x8: bool, bias: bool = False,
              residual: bool = False):
    """Macro `rows(x, w, b, res, out, M, t)`: task t (of sched.threads) computes its contiguous share of the n rows of
    w, `sched.rows` at a time, into out (b[j] and res[m, j] added as the outputs are stored, where `bias` /
    `residual`; the unused ones may be any buffer). `sched` already fitted; `x8` as `with_x_operand` gives it."""
    threads, R = sched.threads, sched.rows
    nper = (n + threads - 1) // threads
    dots, _ = dots_macro(k, dtype, sched, gathered=False, x8=x8)

    @T.macro
    def rows(x, w, b, res, out, M, t):
        j0: T.let = t * nper
        nj: T.let = T.max(T.min(nper, n - j0), 0)
        for st in range((nj + R - 1) // R):
            dots(w, x, M, w, j0, st * R, nj, out, j0)
            if bias:
                for r in range(T.min(R, nj - st * R)):
                    for m in range(M):
                        out[m, j0 + st * R + r] = out[m, j0 + st * R + r] + b[j0 + st * R + r]
            if residual:
                for r in range(T.min(R, nj - st * R)):
                    for m in range(M):
                        out[m, j0 + st * R + r] = out[m, j0 + st * R + r] + res[m, j0 + st * R + r]

    return rows


@cache
def linear(k: int, n: int, *, dtype: str = "float32", sched: CpuSchedule, bias: bool = False, residual: int = 0):
    """PrimFunc (x, w[, b][, r], out) computing x @ w^T (+ b) (+ r); global_symbol encodes all parameters.

    `residual` (1 or 2: the number of leading dims of r and out): r [M, n] or [B, S, n] (B * S = M) float32 is added
    to the output, which has r's shape (a residual connection's add, done as the outputs are stored instead of by
    another call that reads and writes them again, and no reshapes of r and out: codegen/lower_kernels.py)."""
    if residual and bias:   # (a residual connection's linear in the models seen has no bias)
        raise ValueError("linear: residual with a bias is not built (add the bias to the residual)")
    if residual not in (0, 1, 2):
        raise ValueError(f"linear: residual is the number of leading dims of r (1 or 2), got {residual}")
    sched = fitted_schedule(k, n, dtype, sched)
    name = symbol("linear", f"k{k}", f"n{n}", "bias" if bias else "nobias",
                  *([f"residual{residual}"] if residual else []), dtype, sched.tag)
    wshape, wdtype = weight_buffer(n, k, dtype)

    rows = row_share(k, n, dtype, sched, x8=x_operand(k, dtype, sched)[0], bias=bias, residual=bool(residual))

    @T.macro
    def body(x, M, w, b, res, out):   # rows split over the tasks
        for t in T.parallel(sched.threads):
            rows(x, w, b, res, out, M, t)

    run = with_x_operand(k, dtype, sched, body)

    if residual == 2:

        @T.prim_func
        def kernel_residual2(x_h: T.handle, w: T.Buffer(wshape, wdtype), r_h: T.handle, out_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            M, B, S = T.int64(), T.int64(), T.int64()
            x = T.match_buffer(x_h, (M, k), "float32")
            r3 = T.match_buffer(r_h, (B, S, n), "float32")
            out3 = T.match_buffer(out_h, (B, S, n), "float32")
            res = T.decl_buffer((M, n), "float32", data=r3.data)   # the same memory as one token axis
            out = T.decl_buffer((M, n), "float32", data=out3.data)
            run(x, M, w, w, res, out)

        return kernel_residual2.with_attr("global_symbol", name)

    if residual:

        @T.prim_func
        def kernel_residual(x_h: T.handle, w: T.Buffer(wshape, wdtype), r_h: T.handle, out_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            M = T.int64()
            x = T.match_buffer(x_h, (M, k), "float32")
            res = T.match_buffer(r_h, (M, n), "float32")
            out = T.match_buffer(out_h, (M, n), "float32")
            run(x, M, w, w, res, out)

        return kernel_residual.with_attr("global_symbol", name)

    if bias:

        @T.prim_func
        def kernel(x_h: T.handle, w: T.Buffer(wshape, wdtype), b: T.Buffer((n,), "float32"), out_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            M = T.int64()
            x = T.match_buffer(x_h, (M, k), "float32")
            out = T.match_buffer(out_h, (M, n), "float32")
            run(x, M, w, b, out, out)

        return kernel.with_attr("global_symbol", name)

    @T.prim_func
    def kernel_nobias(x_h: T.handle, w: T.Buffer(wshape, wdtype), out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        M = T.int64()
        x = T.match_buffer(x_h, (M, k), "float32")
        out = T.match_buffer(out_h, (M, n), "float32")
        run(x, M, w, w, out, out)

    return kernel_nobias.with_attr("global_symbol", name)
