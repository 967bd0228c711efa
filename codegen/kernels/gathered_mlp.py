"""Gated-MLP kernels for CPUs over given neurons: indexed (predictor mode: the listed neurons computed, any gate
activation) and listed (exact mode over a list: the listed neurons whose ReLU-family gate fires). Buffers as in
`sparse_mlp.py` plus, per token m, idx [M, K] int32 and count [M] int32: token m computes the neurons
idx[m, :count[m]], K symbolic. Split from sparse_mlp.py (exact, dense and the bodies the other kernels share).

Both gather every row they read (gate, up, down) by the list; each task takes an even share of a token's list. The
row dots are `common.dots_macro`'s (on quantized rows the same inner loop as the exact kernel's streamed gate rows:
`quant_int8.py` / `quant_split.py`), the down rows `axpy.axpy_macro`'s.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

from tvm.script import tirx as T

from ...ir.activations import ZERO_BELOW
from .axpy import axpy_macro, zero_columns_macro
from .common import activation, dots_macro, is_active, x_operand
from .quant_blocks import weight_buffer
from .schedule import CpuSchedule
from .sparse_mlp import check_mlp, mlp_symbol


def _gathered_parts(kernel: str, d: int, n_ff: int, gate_act: str, up_act: str, threshold: float, dtype: str,
                    down: str, sched: CpuSchedule):
    """What both kernels over given neurons (`kernel`: indexed, listed) build from: the fitted schedule, the up
    activation, x's operand, the gathered gate / up row dots, the gathered down axpy (over `down` rows), the column
    zeroing and the gate / up and down buffer types."""
    check_mlp(d, n_ff, gate_act, up_act, dtype, down_dtype=down)
    sched = sched.fitted(d, dtype, down)
    act_g, act_u = activation(gate_act, threshold), activation(up_act)
    x_op = x_operand(d, dtype, sched, kernel)  # x's layout: the kernel's (`CpuSchedule.paired_q8`)
    _, gate_dot = dots_macro(d, dtype, sched, gathered=True, store=act_g, x8=x_op[0], kernel=kernel)
    _, up_dot = dots_macro(d, dtype, sched, gathered=True, x8=x_op[0], kernel=kernel)
    _, axpy = axpy_macro(d, down, sched, gathered=True, kernel=kernel)
    return (sched, act_u, x_op, gate_dot, up_dot, axpy, zero_columns_macro(d, sched, down),
            (weight_buffer(n_ff, d, dtype), weight_buffer(n_ff, d, down)))


def gathered_kernel(d: int, buffers, x8: bool, x8_bytes: int, prep_x, body):
    """The PrimFunc (x, w_gate, w_up, w_down_t, idx, count, out) both kernels here share: buffers matched (`buffers`:
    the gate / up and the down (shape, dtype)), x prepared once (`common.x_operand`), then
    `body(xd, M, K, flat, count, w_gate, w_up, w_down_t, out)` with flat the token lists as one [M * K] buffer."""
    (wshape, wdtype), (dshape, ddtype) = buffers

    @T.prim_func
    def kernel(x_h: T.handle, w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
               w_down_t: T.Buffer(dshape, ddtype), idx_h: T.handle, count_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        M = T.int64()
        K = T.int64()
        x = T.match_buffer(x_h, (M, d), "float32")
        idx = T.match_buffer(idx_h, (M, K), "int32")
        count = T.match_buffer(count_h, (M,), "int32")
        out = T.match_buffer(out_h, (M, d), "float32")
        if x8:  # x quantized once to 8-bit blocks for the integer row dots
            xd = T.alloc_buffer((M, x8_bytes), "uint8")
            prep_x(x, xd, M)
        else:
            xd = T.decl_buffer((M, d), "float32", data=x.data)
        flat = T.decl_buffer((M * K,), "int32", data=idx.data)
        body(xd, M, K, flat, count, w_gate, w_up, w_down_t, out)

    return kernel


@cache
def sparse_gated_mlp_indexed(d: int, n_ff: int, *, gate_act: str = "relu", up_act: str = "identity",
                             threshold: float = 0.0, dtype: str = "float32", down_dtype: str | None = None,
                             sched: CpuSchedule):
    """Gated MLP over given neurons: (x, w_gate, w_up, w_down_t, idx, count, out); `down_dtype`: w_down_t's layout
    where it is not `dtype`'s.

    For token m only the neurons idx[m, :count[m]] are computed (gate, up and down rows gathered);
    every other neuron counts as 0. gate_act may be any of GATE_ACTS (threshold / predictor modes
    keep silu / gelu on the selected neurons). idx entries must lie in [0, n_ff); ascending order
    reads memory best. Each task takes an even share of the list and reads whole rows of it, gate, up and down,
    the down rows into its own partial output; a second region sums the partial outputs (session 12: the down
    projection split by columns read every listed row in halves, each task walking the whole list).
    """
    down = down_dtype or dtype
    sched, act_u, (x8, x8_bytes, prep_x), gate_dot, up_dot, _, _, buffers = \
        _gathered_parts("indexed", d, n_ff, gate_act, up_act, threshold, dtype, down, sched)
    threads, R = sched.threads, sched.rows
    # each task's down axpy covers every output column of its own rows (one task's column split)
    whole = replace(sched, threads=1)
    _, axpy = axpy_macro(d, down, whole, gathered=True, kernel="indexed")
    zero_part = zero_columns_macro(d, whole, down)
    cpt = -(-d // (threads * 16)) * 16  # output columns per task in the sum of the partial outputs

    @T.macro
    def body(xd, M, K, flat, count, w_gate, w_up, w_down_t, out):
        g = T.alloc_buffer((M, K), "float32")
        h = T.alloc_buffer((M, K), "float32")
        parts = T.alloc_buffer((threads * M, d), "float32")  # each task's partial output
        # 1) per token, its listed neurons split evenly over the tasks; each task gathers their gate and up rows,
        #    then streams their whole down rows into its own partial output (no second region over the same list)
        for t in T.parallel(threads):
            part = T.decl_buffer((M, d), "float32", data=parts.data, elem_offset=t * M * d)
            zero_part(0, part, M)
            for m in range(M):
                i0: T.let = t * count[m] // threads
                n: T.let = (t + 1) * count[m] // threads - i0
                for st in range((n + R - 1) // R):
                    gate_dot(w_gate, xd, m, flat, m * K + i0, st * R, n, g, i0)
                    up_dot(w_up, xd, m, flat, m * K + i0, st * R, n, h, i0)
                    for r in range(T.min(R, n - st * R)):
                        h[m, i0 + st * R + r] = g[m, i0 + st * R + r] * act_u(h[m, i0 + st * R + r])
                for st in range((n + R - 1) // R):
                    axpy(w_down_t, flat, m * K + i0, st * R, n, h, i0, 0, part, m)
        # 2) the partial outputs summed, output columns split over the tasks
        for t in T.parallel(threads):
            for m in range(M):
                for c in range(T.max(T.min(cpt, d - t * cpt), 0)):
                    out[m, t * cpt + c] = parts[m, t * cpt + c]
                    for t2 in range(1, threads):
                        out[m, t * cpt + c] = out[m, t * cpt + c] + parts[t2 * M + m, t * cpt + c]

    return gathered_kernel(d, buffers, x8, x8_bytes, prep_x, body).with_attr("global_symbol", mlp_symbol(
        "indexed", d, n_ff, gate_act, up_act, threshold, dtype, sched, down))


@cache
def sparse_gated_mlp_listed(d: int, n_ff: int, *, gate_act: str = "relu", up_act: str = "identity",
                            threshold: float = 0.0, dtype: str = "float32", down_dtype: str | None = None,
                            sched: CpuSchedule):
    """Exact mode over given neurons: (x, w_gate, w_up, w_down_t, idx, count, out), a ReLU-family gate.

    As `sparse_gated_mlp_indexed` (token m computes the neurons idx[m, :count[m]]), but like the exact kernel it
    reads the up and down rows only of the listed neurons whose activated gate is nonzero: each task compacts its
    share of the list to those in place (slot <= the neuron's position, so nothing unread is overwritten). For a
    predictor that lists more neurons than fire (predictor mode's misses aside, a certified bound lists every
    active neuron and some inactive ones) the extra neurons then cost their gate row only.
    """
    if gate_act not in ZERO_BELOW:
        raise ValueError(f"the listed kernel skips neurons whose gate is 0: gate_act must be one of {ZERO_BELOW}, "
                         f"got {gate_act!r} (use the indexed kernel)")
    down = down_dtype or dtype
    sched, act_u, (x8, x8_bytes, prep_x), gate_dot, up_dot, axpy, zero_cols, buffers = \
        _gathered_parts("listed", d, n_ff, gate_act, up_act, threshold, dtype, down, sched)
    threads, R = sched.threads, sched.rows

    @T.macro
    def body(xd, M, K, flat, count, w_gate, w_up, w_down_t, out):
        live = T.alloc_buffer((M * K,), "int32")       # the listed neurons whose gate fired, per task's slots
        kept = T.alloc_buffer((M, threads), "int32")   # how many of them, per token and task
        g = T.alloc_buffer((M, K), "float32")
        h = T.alloc_buffer((M, K), "float32")
        # 1) per token, its listed neurons split evenly over the tasks: gate rows gathered, the fired ones compacted,
        #    then their up rows gathered
        for t in T.parallel(threads):
            c = T.alloc_buffer((1,), "int32", scope="global")
            for m in range(M):
                c[0] = 0
                i0: T.let = t * count[m] // threads
                n: T.let = (t + 1) * count[m] // threads - i0
                for st in range((n + R - 1) // R):
                    gate_dot(w_gate, xd, m, flat, m * K + i0, st * R, n, g, i0)
                    for r in range(T.min(R, n - st * R)):
                        if is_active(g[m, i0 + st * R + r]):
                            g[m, i0 + c[0]] = g[m, i0 + st * R + r]
                            live[m * K + i0 + c[0]] = flat[m * K + i0 + st * R + r]
                            c[0] = c[0] + 1
                nl: T.let = c[0]
                kept[m, t] = nl
                for st in range((nl + R - 1) // R):
                    up_dot(w_up, xd, m, live, m * K + i0, st * R, nl, h, i0)
                    for r in range(T.min(R, nl - st * R)):
                        h[m, i0 + st * R + r] = g[m, i0 + st * R + r] * act_u(h[m, i0 + st * R + r])
        # 2) down: output columns split over the tasks, every task's fired rows streamed
        for t in T.parallel(threads):
            zero_cols(t, out, M)
            for m in range(M):
                for t2 in range(threads):
                    j0: T.let = t2 * count[m] // threads
                    for st in range((kept[m, t2] + R - 1) // R):
                        axpy(w_down_t, live, m * K + j0, st * R, kept[m, t2], h, j0, t, out, m)

    return gathered_kernel(d, buffers, x8, x8_bytes, prep_x, body).with_attr("global_symbol", mlp_symbol(
        "listed", d, n_ff, gate_act, up_act, threshold, dtype, sched, down))
