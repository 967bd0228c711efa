"""Predictor mode's CPU kernel for ReLU-family gates: the scores go in, the neuron list is made inside (issue 11).

    (x [M, d] f32, w_gate, w_up, w_down_t [n_ff, d] dtype, scores [M, n_ff] f32, cutoff [1] f32, out [M, d] f32)

Token m computes the neurons j with scores[m, j] > cutoff (the `predictor` variant's semantics, ir/predictor.py);
every other neuron counts as 0. It replaces the select kernel + listed kernel pair (`predictor_kernels.select_active`
then `gathered_mlp.sparse_gated_mlp_listed`), which on part (a) of benchmarks/decode.py cost a single-threaded scan of
every score per layer, one more parallel launch and the index tensors between them. Here, in one parallel region,
each task scans its contiguous range of neurons' scores (the exact kernel's split: the gate rows a task gathers lie
in its own range, in ascending order), gathers the gate rows of the neurons some token scores above the cutoff,
keeps per token only those whose score passed and whose activated gate is nonzero, compacts the list to the
neurons some token kept (in place: a slot never passes the position it is read from) and gathers their up rows.
The second region streams each task's output-column slice of every kept down row, as in the exact kernel. So a
listed neuron whose gate is 0 (the bound predictor lists every active neuron and the inactive ones it cannot
certify) costs its gate row only.

`certified_gated_mlp` is the same kernel with the `bound` predictor's score pass inside (passes/certified_gate.py):

    (x [M, d] f32, w_gate, w_up, w_down_t [n_ff, d] dtype, w8 [n_ff, q8_0 row bytes] u8, coef [n_ff] f32,
     cutoff [1] f32, out [M, d] f32),  scores = x·deq(w8_j) + ‖x‖₂·coef_j

Each task scores its neurons a block at a time (128 row steps by default; the q8_0 rows against x rounded to int16
on VNNI's vpdpwssd, `score_int16.py`, whose rounding the bound covers; else on the linear kernel's float path) and
lists the uncertified ones; the gate rows of block b are read after
block b + 1 is scored, next to the int8 rows just streamed (optionally each listed row prefetched whole when
listed: `ahead`). One call per layer replaces the score linear, the ‖x‖₂ ops and the scored kernel. Separately the
score pass streamed at ~25 GB/s and the gathered gate rows came at ~15 (BENCHMARKS.md, session 8).
"""

from __future__ import annotations

from functools import cache

from tvm.script import tirx as T

from ...ir.activations import ZERO_BELOW
from .axpy import axpy_macro, zero_columns_macro
from .common import activation, dots_macro, is_active, threshold_tag, x_operand
from .hidden_norm import hidden_norm_macros
from .quant_blocks import weight_buffer
from .rows import prefetch_macro
from .schedule import CpuSchedule
from .score_int16 import has_int16_scores, int16_score_macro, norm_floor, x16_prep_macro
from .sparse_mlp import check_mlp, mlp_symbol


def _phases(d: int, n_ff: int, gate_act: str, up_act: str, threshold: float, dtype: str, sched: CpuSchedule,
            *, gate_prefetch: bool | None = None, down_dtype: str | None = None,
            hidden_rms_eps: float | None = None):
    """What the scored and the certified kernels share, as macros over the kernel's buffers:
    (x8, x8_bytes, prep_x, gate_step, up_phase, down_phase) with

    gate_step(w_gate, xd, s, cutoff, M, idx, g, j0, p, end, kept, live): the gate rows of list slots p .. p + R - 1
        (< end), each token's score test (a slot not this token's counts as 0), then the slot compacted to `kept`
        if some token kept it (kept <= p: compaction overwrites only what was read);
    up_phase(w_up, xd, M, idx, g, h, j0, nk, sq, t): h = g · act_u(up row) of the nk kept slots (with
        `hidden_rms_eps`, task t's Σ h² into sq[t, :], hidden_norm.py; sq [threads, M], else unused);
    down_phase(w_down_t, idx, h, cnt, out, M, sq): the output, task t streaming its column slice of every kept down
        row (`down_dtype` rows, default `dtype`), then, with the norm, scaling its columns.
    """
    R, threads = sched.rows, sched.threads
    nper = (n_ff + threads - 1) // threads
    act_g, act_u = activation(gate_act, threshold), activation(up_act)
    x8, x8_bytes, prep_x = x_operand(d, dtype, sched)
    gate_dots, gate_dot = dots_macro(d, dtype, sched, gathered=True, store=act_g, x8=x8, prefetch=gate_prefetch)
    up_dots, up_dot = dots_macro(d, dtype, sched, gathered=True, x8=x8)
    axpy_all, axpy = axpy_macro(d, down_dtype or dtype, sched, gathered=True, kernel="scored")
    zero_cols = zero_columns_macro(d, sched, down_dtype or dtype)
    zero = T.float32(0)
    normed = hidden_rms_eps is not None
    sum_squares, scale_columns = hidden_norm_macros(d, n_ff, sched, down_dtype or dtype, hidden_rms_eps or 0.0)

    @T.macro
    def gate_step(w_gate, xd, s, cutoff, M, idx, g, j0, p, end, kept, live):
        if M == 1:  # decoding: the one-token row dots (no token blocks)
            gate_dot(w_gate, xd, 0, idx, j0, p, end, g, j0)
        else:
            gate_dots(w_gate, xd, M, idx, j0, p, end, g, j0)
        for r in range(T.min(R, end - p)):
            live[0] = 0
            for m in range(M):
                if s[m, idx[j0 + p + r]] <= cutoff[0]:  # not this token's: it counts as 0
                    g[m, j0 + p + r] = zero
                elif is_active(g[m, j0 + p + r]):
                    live[0] = 1
            if live[0] != 0:
                for m in range(M):
                    g[m, j0 + kept[0]] = g[m, j0 + p + r]
                idx[j0 + kept[0]] = idx[j0 + p + r]
                kept[0] = kept[0] + 1

    @T.macro
    def up_phase(w_up, xd, M, idx, g, h, j0, nk, sq, t):
        for st in range((nk + R - 1) // R):
            if M == 1:
                up_dot(w_up, xd, 0, idx, j0, st * R, nk, h, j0)
            else:
                up_dots(w_up, xd, M, idx, j0, st * R, nk, h, j0)
            for r in range(T.min(R, nk - st * R)):
                for m in range(M):
                    h[m, j0 + st * R + r] = g[m, j0 + st * R + r] * act_u(h[m, j0 + st * R + r])
        if normed:
            sum_squares(h, j0, nk, sq, t, M)

    @T.macro
    def down_phase(w_down_t, idx, h, cnt, out, M, sq):
        # task t owns a slice of the output columns and streams that slice of every kept row
        for t in T.parallel(threads):
            zero_cols(t, out, M)
            for t2 in range(threads):
                n2: T.let = cnt[t2]
                for st in range((n2 + R - 1) // R):
                    if M == 1:
                        axpy(w_down_t, idx, t2 * nper, st * R, n2, h, t2 * nper, t, out, 0)
                    else:
                        axpy_all(w_down_t, idx, t2 * nper, st * R, n2, h, t2 * nper, t, out, M)
            if normed:
                scale_columns(out, sq, t, M)

    return x8, x8_bytes, prep_x, gate_step, up_phase, down_phase


def _fitted(d, n_ff, gate_act, up_act, dtype, sched, down_dtype=None):
    if gate_act not in ZERO_BELOW:
        raise ValueError(f"the scored kernel skips neurons whose gate is 0: gate_act must be one of {ZERO_BELOW}, "
                         f"got {gate_act!r} (use select + the indexed kernel)")
    check_mlp(d, n_ff, gate_act, up_act, dtype, down_dtype=down_dtype)
    return sched.fitted(d, dtype, down_dtype or dtype)


@cache
def scored_gated_mlp(d: int, n_ff: int, *, gate_act: str = "relu", up_act: str = "identity",
                     threshold: float = 0.0, dtype: str = "float32", down_dtype: str | None = None,
                     hidden_rms_eps: float | None = None, sched: CpuSchedule):
    """(x, w_gate, w_up, w_down_t, scores, cutoff, out), see the module docstring; gate_act one of ZERO_BELOW;
    `down_dtype`: w_down_t's layout where it is not `dtype`'s; `hidden_rms_eps`: a hidden RMS norm
    (hidden_norm.py)."""
    down = down_dtype or dtype
    sched = _fitted(d, n_ff, gate_act, up_act, dtype, sched, down)
    threads, R = sched.threads, sched.rows
    nper = (n_ff + threads - 1) // threads  # neurons per task; also each task's slot range in idx / g / h
    x8, x8_bytes, prep_x, gate_step, up_phase, down_phase = _phases(d, n_ff, gate_act, up_act, threshold, dtype,
                                                                    sched, down_dtype=down,
                                                                    hidden_rms_eps=hidden_rms_eps)
    wshape, wdtype = weight_buffer(n_ff, d, dtype)
    dshape, ddtype = weight_buffer(n_ff, d, down)

    @T.prim_func
    def kernel(x_h: T.handle, w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
               w_down_t: T.Buffer(dshape, ddtype), s_h: T.handle, cutoff: T.Buffer((1,), "float32"),
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
        sq = T.alloc_buffer((threads, M if hidden_rms_eps is not None else 1), "float32")   # a hidden norm's sums
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
                gate_step(w_gate, xd, s, cutoff, M, idx, g, j0, st * R, nl, kept, live)
            cnt[t] = kept[0]
            up_phase(w_up, xd, M, idx, g, h, j0, kept[0], sq, t)
        down_phase(w_down_t, idx, h, cnt, out, M, sq)

    kind = "scored" if hidden_rms_eps is None else f"scoredrms{threshold_tag(hidden_rms_eps)}"
    return kernel.with_attr("global_symbol", mlp_symbol(kind, d, n_ff, gate_act, up_act, threshold, dtype, sched,
                                                        down))


SCORE_LAYOUT = "q8_0"  # the bound predictor's int8 copy (passes/certified_gate.LAYOUT)


@cache
def certified_gated_mlp(d: int, n_ff: int, *, gate_act: str = "relu", up_act: str = "identity",
                        threshold: float = 0.0, dtype: str = "float32", sched: CpuSchedule, block: int = 0,
                        ahead: bool = False, hidden_rms_eps: float | None = None):
    """(x, w_gate, w_up, w_down_t, w8, coef, cutoff, out): the scored kernel with the bound predictor's scores
    computed inside, `block` neurons (0: 128 row steps) scored ahead of the gate rows read (module docstring).
    `ahead`: a listed neuron's whole gate row is prefetched when it is listed; else the gate dots prefetch the next
    step's rows as they stream (as in the scored kernel). The score pass runs against x rounded to int16
    (score_int16.py) where `sched.certified_scores` is "int16" and the schedule has the instruction (quiet A/B,
    BENCHMARKS.md session 9: 1.12x the float path at Mistral dims), else on the float path."""
    sched = _fitted(d, n_ff, gate_act, up_act, dtype, sched)
    if dtype not in ("float32", "float16"):
        raise ValueError(f"the certified kernel reads float gate rows (the bound refuses quantized ones), "
                         f"got {dtype!r}")
    threads, R = sched.threads, sched.rows
    nper = (n_ff + threads - 1) // threads
    B = block or 128 * R  # under load (BENCHMARKS.md, session 9): 1024 neurons beat 128 and 32; whole rows lost
    if B % R:
        raise ValueError(f"block must be a multiple of the schedule's rows ({R}), got {block}")
    nblk = (nper + B - 1) // B
    # the listed rows were prefetched a block ahead: the gate dots' own prefetch of the next step would repeat it
    x8, x8_bytes, prep_x, gate_step, up_phase, down_phase = _phases(d, n_ff, gate_act, up_act, threshold, dtype,
                                                                    sched, gate_prefetch=False if ahead else None,
                                                                    hidden_rms_eps=hidden_rms_eps)
    # the float path: x not rounded to 8 bits (the bound assumes float dots)
    score_dots, score_dot = dots_macro(d, SCORE_LAYOUT, sched, gathered=False)
    int16 = sched.certified_scores == "int16" and has_int16_scores(sched)
    G16 = -(-d // 32)
    if int16:
        prep16, score16 = x16_prep_macro(d), int16_score_macro(d, sched)
    pf = prefetch_macro(dtype)
    wshape, wdtype = weight_buffer(n_ff, d, dtype)
    w8shape, w8dtype = weight_buffer(n_ff, d, SCORE_LAYOUT)

    @T.macro
    def gate_range(w_gate, xd, s, cutoff, M, idx, g, j0, p0, end, kept, live):
        for st in range((end - p0 + R - 1) // R):
            gate_step(w_gate, xd, s, cutoff, M, idx, g, j0, p0 + st * R, end, kept, live)

    @T.prim_func
    def kernel(x_h: T.handle, w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
               w_down_t: T.Buffer(wshape, wdtype), w8: T.Buffer(w8shape, w8dtype), coef: T.Buffer((n_ff,), "float32"),
               cutoff: T.Buffer((1,), "float32"), out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        M = T.int64()
        x = T.match_buffer(x_h, (M, d), "float32")
        out = T.match_buffer(out_h, (M, d), "float32")
        if x8:
            xd = T.alloc_buffer((M, x8_bytes), "uint8")
            prep_x(x, xd, M)
        else:
            xd = T.decl_buffer((M, d), "float32", data=x.data)
        s = T.alloc_buffer((M, n_ff), "float32")  # the scores, by neuron
        norm = T.alloc_buffer((M,), "float32")
        g = T.alloc_buffer((M, n_ff), "float32")
        h = T.alloc_buffer((M, n_ff), "float32")
        idx = T.alloc_buffer((n_ff,), "int32")
        cnt = T.alloc_buffer((threads,), "int32")
        sq = T.alloc_buffer((threads, M if hidden_rms_eps is not None else 1), "float32")   # a hidden norm's sums
        xq = T.alloc_buffer((M, G16 * 32 if int16 else 1), "int16")  # x rounded to int16, per group its dx
        dxs = T.alloc_buffer((M, G16 if int16 else 1), "float32")
        if int16:
            prep16(x, xq, dxs, M)
        for m in range(M):
            norm[m] = T.float32(0)
            for k in range(d):
                norm[m] = norm[m] + x[m, k] * x[m, k]
            norm[m] = T.sqrt(norm[m]) + T.float32(norm_floor(d) if int16 else 0)
        for t in T.parallel(threads):
            c = T.alloc_buffer((1,), "int32", scope="global")
            kept = T.alloc_buffer((1,), "int32", scope="global")
            live = T.alloc_buffer((1,), "int32", scope="global")
            done = T.alloc_buffer((1,), "int32", scope="global")  # list slots whose gate rows are read
            c[0] = 0
            kept[0] = 0
            done[0] = 0
            j0: T.let = t * nper
            nj: T.let = T.max(T.min(nper, n_ff - j0), 0)
            for b in range(nblk):
                jb: T.let = j0 + b * B
                nb: T.let = T.max(T.min(B, nj - b * B), 0)
                listed0: T.let = c[0]
                # score block b (contiguous int8 rows) ...
                for st in range((nb + R - 1) // R):
                    if int16:
                        for m in range(M):
                            score16(w8, xq, dxs, m, jb, st * R, nb, s, jb)
                    elif M == 1:
                        score_dot(w8, x, 0, idx, jb, st * R, nb, s, jb)
                    else:
                        score_dots(w8, x, M, idx, jb, st * R, nb, s, jb)
                # ... list what it cannot certify and start loading those gate rows ...
                for j in range(nb):
                    live[0] = 0
                    for m in range(M):
                        s[m, jb + j] = s[m, jb + j] + norm[m] * coef[jb + j]
                        if s[m, jb + j] > cutoff[0]:
                            live[0] = 1
                    if live[0] != 0:
                        idx[j0 + c[0]] = jb + j
                        c[0] = c[0] + 1
                        if ahead:
                            pf(w_gate, jb + j, 0, d)
                # ... and read block b - 1's, prefetched while block b streamed
                gate_range(w_gate, xd, s, cutoff, M, idx, g, j0, done[0], listed0, kept, live)
                done[0] = listed0
            gate_range(w_gate, xd, s, cutoff, M, idx, g, j0, done[0], c[0], kept, live)
            cnt[t] = kept[0]
            up_phase(w_up, xd, M, idx, g, h, j0, kept[0], sq, t)
        down_phase(w_down_t, idx, h, cnt, out, M, sq)

    tag = f"b{B}" + ("" if ahead else "s") + ("w" if int16 else "") + \
        ("" if hidden_rms_eps is None else f"rms{threshold_tag(hidden_rms_eps)}")
    return kernel.with_attr("global_symbol",
                            mlp_symbol("certified" + tag, d, n_ff, gate_act, up_act, threshold, dtype, sched))
