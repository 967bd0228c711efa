"""The gated-MLP kernel for CPUs whose activated gate comes in computed: Gemma 3n's per-token cutoff.

Gemma 3n's gate is gelu_tanh(relu(P - c)) with P = x·W_gateᵀ and c = mean(P) + z·std(P) per token: the cutoff needs
every gate value of the token before any neuron is known to be inactive. So the gate projection runs densely before
this kernel (a linear kernel), the cutoff and the activation run as the graph's own elementwise ops (bit for bit what
the interpreter computes), and this kernel takes the activated gate a [M, n_ff] and reads the up and down rows only
of the neurons some token activates:

    out[m] = sum_{j : a[m, j] != 0} a[m, j] * act_u(w_up[j] . x[m]) * w_down_t[j]

It is the exact kernel (`sparse_mlp.compacting_body`) with its gate row dots replaced by nothing: g is a itself, so
the listing, the gathered up rows and the down projection are the exact kernel's, for every weight layout it takes.
Buffers: (x [M, d] f32, w_gate (not read: the gate is an input; kept so every sparse variant has the same weights),
w_up, w_down_t [n_ff, d] dtype, a [M, n_ff] f32, out [M, d] f32).

`cutoff_dense_gated_mlp` is its dense twin (`actsparse bench`, passes/densify.py): the dense kernel
(`sparse_mlp.dense_body`) given a, every up and down row read. The CUDA kernels: `cuda_cutoff_mlp.py`.
"""

from __future__ import annotations

from functools import cache

from tvm.script import tirx as T

from .common import activation, x_operand
from .quant_blocks import weight_buffer
from .schedule import CpuSchedule
from .sparse_mlp import check_mlp, compacting_body, dense_body, mlp_symbol


@T.macro
def _gate_given(a, x, M, rows, base, i, end, dst, dcol):
    """In place of the gate dots: g is the activated gate the kernel was given (nothing to compute)."""
    T.evaluate(0)


def _given_gate_kernel(d: int, n_ff: int, up_act: str, dtype: str, sched: CpuSchedule, kind: str, make_run):
    """The PrimFunc both kernels are: x (quantized to 8-bit blocks first where the up dots take them), a, then
    `run(xd, M, a, w_up, w_down_t, h, out)`, the macro `make_run(x8, act_u, sched)` makes of its body."""
    check_mlp(d, n_ff, "identity", up_act, dtype)
    sched = sched.fitted(d, dtype)
    name = mlp_symbol(kind, d, n_ff, "given", up_act, 0.0, dtype, sched)
    x8, x8_bytes, prep_x = x_operand(d, dtype, sched)
    run = make_run(x8, activation(up_act), sched)
    wshape, wdtype = weight_buffer(n_ff, d, dtype)

    @T.prim_func
    def kernel(x_h: T.handle, w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
               w_down_t: T.Buffer(wshape, wdtype), a_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        M = T.int64()
        a = T.match_buffer(a_h, (M, n_ff), "float32")  # the activated gate: g of the body
        x = T.match_buffer(x_h, (M, d), "float32")
        out = T.match_buffer(out_h, (M, d), "float32")
        h = T.alloc_buffer((M, n_ff), "float32")
        if x8:  # x quantized once to 8-bit blocks for the integer (up) row dots
            xd = T.alloc_buffer((M, x8_bytes), "uint8")
            prep_x(x, xd, M)
        else:
            xd = T.decl_buffer((M, d), "float32", data=x.data)
        run(xd, M, a, w_up, w_down_t, h, out)

    return kernel.with_attr("global_symbol", name)


@cache
def cutoff_gated_mlp(d: int, n_ff: int, *, up_act: str = "identity", dtype: str = "float32", sched: CpuSchedule):
    """(x, w_gate, w_up, w_down_t, a, out): see the module docstring."""

    def make_run(x8, act_u, fitted):
        body = compacting_body(d, n_ff, dtype, fitted, gate_value=None, act_u=act_u, x8=x8, kernel="exact",
                               gate_dots=_gate_given)

        @T.macro
        def run(xd, M, a, w_up, w_down_t, h, out):
            idx = T.alloc_buffer((n_ff,), "int32")
            cnt = T.alloc_buffer((fitted.threads,), "int32")
            body(xd, M, 0, a, w_up, w_down_t, a, h, idx, cnt, out)

        return run

    return _given_gate_kernel(d, n_ff, up_act, dtype, sched, "cutoff", make_run)


@cache
def cutoff_dense_gated_mlp(d: int, n_ff: int, *, up_act: str = "identity", dtype: str = "float32",
                           sched: CpuSchedule):
    """(x, w_gate, w_up, w_down_t, a, out): out = (a * act_u(x·W_upᵀ))·W_down_t over every neuron (the dense twin)."""

    def make_run(x8, act_u, fitted):
        body = dense_body(d, n_ff, dtype, fitted, act_g=None, act_u=act_u, x8=x8, kernel="dense",
                          gate_dots=_gate_given)

        @T.macro
        def run(xd, M, a, w_up, w_down_t, h, out):
            body(xd, M, 0, a, w_up, w_down_t, a, h, out)

        return run

    return _given_gate_kernel(d, n_ff, up_act, dtype, sched, "cutoffdense", make_run)
