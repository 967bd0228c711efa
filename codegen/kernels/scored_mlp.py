"""Predictor mode's CPU kernel for ReLU-family gates: the scores go in, the neuron list is made inside (issue 11).

    (x [M, d] f32, w_gate, w_up, w_down_t [n_ff, d] dtype, scores [M, n_ff] f32, cutoff [1] f32, out [M, d] f32)

Token m computes the neurons j with scores[m, j] > cutoff (the `predictor` variant's semantics, ir/predictor.py);
every other neuron counts as 0. It replaces the select kernel + listed kernel pair (`predictor_kernels.select_active`
then `sparse_mlp.sparse_gated_mlp_listed`), which on part (a) of benchmarks/decode.py cost a single-threaded scan of
every score per layer, one more parallel launch and the index tensors between them. Here, in one parallel region,
each task scans its contiguous range of neurons' scores (the exact kernel's split: the gate rows a task gathers lie
in its own range, in ascending order), gathers the gate rows of the neurons some token scores above the cutoff,
keeps per token only those whose score passed and whose activated gate is nonzero, compacts the list to the
neurons some token kept (in place: a slot never passes the position it is read from) and gathers their up rows.
The second region streams each task's output-column slice of every kept down row, as in the exact kernel. So a
listed neuron whose gate is 0 (the bound predictor lists every active neuron and the inactive ones it cannot
certify) costs its gate row only.
"""

from __future__ import annotations

from functools import cache

from tvm.script import tirx as T

from ...ir.activations import ZERO_BELOW
from .common import activation, axpy_macro, dots_macro, is_active, x_operand, zero_columns_macro
from .quant_blocks import weight_buffer
from .schedule import CpuSchedule
from .sparse_mlp import check_mlp, mlp_symbol


@cache
def scored_gated_mlp(d: int, n_ff: int, *, gate_act: str = "relu", up_act: str = "identity",
                     threshold: float = 0.0, dtype: str = "float32", sched: CpuSchedule):
    """(x, w_gate, w_up, w_down_t, scores, cutoff, out), see the module docstring; gate_act one of ZERO_BELOW."""
    if gate_act not in ZERO_BELOW:
        raise ValueError(f"the scored kernel skips neurons whose gate is 0: gate_act must be one of {ZERO_BELOW}, "
                         f"got {gate_act!r} (use select + the indexed kernel)")
    check_mlp(d, n_ff, gate_act, up_act, dtype)
    sched = sched.fitted(d, dtype)
    threads, R = sched.threads, sched.rows
    nper = (n_ff + threads - 1) // threads  # neurons per task; also each task's slot range in idx / g / h
    act_g, act_u = activation(gate_act, threshold), activation(up_act)
    x8, x8_bytes, prep_x = x_operand(d, dtype, sched)
    gate_dots, gate_dot = dots_macro(d, dtype, sched, gathered=True, store=act_g, x8=x8)
    up_dots, up_dot = dots_macro(d, dtype, sched, gathered=True, x8=x8)
    axpy_all, axpy = axpy_macro(d, dtype, sched, gathered=True, kernel="scored")
    zero_cols = zero_columns_macro(d, sched, dtype)
    wshape, wdtype = weight_buffer(n_ff, d, dtype)
    zero = T.float32(0)

    @T.prim_func
    def kernel(x_h: T.handle, w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
               w_down_t: T.Buffer(wshape, wdtype), s_h: T.handle, cutoff: T.Buffer((1,), "float32"),
               out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        M = T.int64()
        x = T.match_buffer(x_h, (M, d), "float32")
        s = T.match_buffer(s_h, (M, n_ff), "float32")
        out = T.match_buffer(out_h, (M, d), "float32")
        if x8:  # x quantized once to 8-bit blocks for the integer row dots
            xd = T.alloc_buffer((M, x8_bytes), "uint8")
            prep_x(x, xd, M)
        else:
            xd = T.decl_buffer((M, d), "float32", data=x.data)
        g = T.alloc_buffer((M, n_ff), "float32")  # activated gate, by slot
        h = T.alloc_buffer((M, n_ff), "float32")  # h by slot
        idx = T.alloc_buffer((n_ff,), "int32")    # neuron of each slot, task t's slots from t * nper
        cnt = T.alloc_buffer((threads,), "int32")  # kept slots per task
        # 1) per task, its contiguous neurons: list those some token scores above the cutoff, gather their gate
        #    rows, keep the ones some token both scored and fired, gather the kept ones' up rows
        for t in T.parallel(threads):
            c = T.alloc_buffer((1,), "int32", scope="global")
            kept = T.alloc_buffer((1,), "int32", scope="global")
            live = T.alloc_buffer((1,), "int32", scope="global")
            c[0] = 0
            kept[0] = 0
            j0: T.let = t * nper
            nj: T.let = T.max(T.min(nper, n_ff - j0), 0)
            for j in range(nj):
                live[0] = 0
                for m in range(M):
                    if s[m, j0 + j] > cutoff[0]:
                        live[0] = 1
                if live[0] != 0:
                    idx[j0 + c[0]] = j0 + j
                    c[0] = c[0] + 1
            nl: T.let = c[0]
            for st in range((nl + R - 1) // R):
                if M == 1:  # decoding: the one-token row dots (no token blocks)
                    gate_dot(w_gate, xd, 0, idx, j0, st * R, nl, g, j0)
                else:
                    gate_dots(w_gate, xd, M, idx, j0, st * R, nl, g, j0)
                for r in range(T.min(R, nl - st * R)):
                    live[0] = 0
                    for m in range(M):
                        if s[m, idx[j0 + st * R + r]] <= cutoff[0]:  # not this token's: it counts as 0
                            g[m, j0 + st * R + r] = zero
                        elif is_active(g[m, j0 + st * R + r]):
                            live[0] = 1
                    if live[0] != 0:
                        # slot kept <= this position: compaction overwrites only what was read
                        for m in range(M):
                            g[m, j0 + kept[0]] = g[m, j0 + st * R + r]
                        idx[j0 + kept[0]] = idx[j0 + st * R + r]
                        kept[0] = kept[0] + 1
            nk: T.let = kept[0]
            cnt[t] = nk
            for st in range((nk + R - 1) // R):
                if M == 1:
                    up_dot(w_up, xd, 0, idx, j0, st * R, nk, h, j0)
                else:
                    up_dots(w_up, xd, M, idx, j0, st * R, nk, h, j0)
                for r in range(T.min(R, nk - st * R)):
                    for m in range(M):
                        h[m, j0 + st * R + r] = g[m, j0 + st * R + r] * act_u(h[m, j0 + st * R + r])
        # 2) down: task t owns a slice of the output columns and streams that slice of every kept row
        for t in T.parallel(threads):
            zero_cols(t, out, M)
            for t2 in range(threads):
                n2: T.let = cnt[t2]
                for st in range((n2 + R - 1) // R):
                    if M == 1:
                        axpy(w_down_t, idx, t2 * nper, st * R, n2, h, t2 * nper, t, out, 0)
                    else:
                        axpy_all(w_down_t, idx, t2 * nper, st * R, n2, h, t2 * nper, t, out, M)

    return kernel.with_attr("global_symbol", mlp_symbol("scored", d, n_ff, gate_act, up_act, threshold, dtype, sched))
