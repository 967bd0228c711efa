"""A dense gated MLP's gate and up projections in one CPU kernel: h[M, n] = act_g(x @ Wg^T + bg) * act_u(x @ Wu^T + bu).

Buffers (destination passing): x [M, k] float32 (M symbolic), Wg and Wu [n, k] in one dtype (float32 | float16 | a
quantized layout, rows as stored: a GGUF's blocks read as the file keeps them), bg and bu [n] float32 when `bias`,
h [M, n] float32. Dense mode keeps a quantized MLP as three linears on its rows as stored (passes/fuse_gated_mlp.py);
this kernel is the first two and the activations: one parallel launch, x quantized once for the int8 dots, and no
gate / up tensors for the VM to allocate, free and read again in an elementwise pass. At SmolLM2's size the two
linears and the activation-times-up pass were three calls of 23 + 23 + 5 µs (benchmarks/decode_profile.py).

Each task streams its contiguous share of Wg's rows, then the same rows of Wu (the same row-dot macros as the linear
kernel, `common.dots_macro`), then applies the activations to the values it wrote, which are still in its cache.
"""

from __future__ import annotations

from functools import cache

from tvm.script import tirx as T

from .common import activation, dots_macro, symbol, threshold_tag, with_x_operand, x_operand
from .linear import fitted_schedule
from .quant_blocks import weight_buffer
from .schedule import CpuSchedule


@cache
def gate_up(k: int, n: int, *, gate_act: str, up_act: str, threshold: float = 0.0, dtype: str = "float32",
            sched: CpuSchedule, bias: bool = False, fused: bool = False, gate_first: bool = True):
    """PrimFunc (x, wg, wu[, bg, bu], h); `fused`: wg and wu are both the one matrix [2n, k] whose halves are gate and
    up (bg and bu the one bias [2n]; the caller passes each twice), gate the first where `gate_first` (Phi-3's
    gate_up_proj). global_symbol encodes all parameters."""
    sched = fitted_schedule(k, n, dtype, sched)
    threads, R = sched.threads, sched.rows
    nper = (n + threads - 1) // threads
    name = symbol("gate_up", f"k{k}", f"n{n}", gate_act, up_act, threshold_tag(threshold),
                  "bias" if bias else "nobias", *([f"fused{int(gate_first)}"] if fused else []), dtype, sched.tag)
    act_g, act_u = activation(gate_act, threshold), activation(up_act)
    g0, u0 = ((0, n) if gate_first else (n, 0)) if fused else (0, 0)   # the gate's and up's first rows
    wshape, wdtype = weight_buffer(2 * n if fused else n, k, dtype)
    bshape = (2 * n if fused else n,)
    dots, _ = dots_macro(k, dtype, sched, gathered=False, x8=x_operand(k, dtype, sched)[0])

    @T.macro
    def body(x, M, wg, wu, bg, bu, h):
        ub = T.alloc_buffer((M, n), "float32")   # up's values, until the activations meet them
        for t in T.parallel(threads):
            j0: T.let = t * nper
            nj: T.let = T.max(T.min(nper, n - j0), 0)
            for st in range((nj + R - 1) // R):
                dots(wg, x, M, wg, g0 + j0, st * R, nj, h, j0)
            for st in range((nj + R - 1) // R):
                dots(wu, x, M, wu, u0 + j0, st * R, nj, ub, j0)
            for m in range(M):
                for j in range(nj):
                    if bias:
                        h[m, j0 + j] = act_g(h[m, j0 + j] + bg[g0 + j0 + j]) * act_u(ub[m, j0 + j] + bu[u0 + j0 + j])
                    else:
                        h[m, j0 + j] = act_g(h[m, j0 + j]) * act_u(ub[m, j0 + j])

    run = with_x_operand(k, dtype, sched, body)

    if bias:

        @T.prim_func
        def kernel(x_h: T.handle, wg: T.Buffer(wshape, wdtype), wu: T.Buffer(wshape, wdtype),
                   bg: T.Buffer(bshape, "float32"), bu: T.Buffer(bshape, "float32"), h_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            M = T.int64()
            x = T.match_buffer(x_h, (M, k), "float32")
            h = T.match_buffer(h_h, (M, n), "float32")
            run(x, M, wg, wu, bg, bu, h)

        return kernel.with_attr("global_symbol", name)

    @T.prim_func
    def kernel_nobias(x_h: T.handle, wg: T.Buffer(wshape, wdtype), wu: T.Buffer(wshape, wdtype), h_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        M = T.int64()
        x = T.match_buffer(x_h, (M, k), "float32")
        h = T.match_buffer(h_h, (M, n), "float32")
        run(x, M, wg, wu, wg, wu, h)

    return kernel_nobias.with_attr("global_symbol", name)
