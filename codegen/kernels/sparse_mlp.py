"""Gated-MLP kernels for CPUs: exact sparse (ReLU family) and dense, and the bodies other kernels share (the kernels
over given neurons, indexed and listed, are in gathered_mlp.py).

All of them compute, per token m (row of x):

    out[m] = sum_j act_g(w_gate[j] . x[m]) * act_u(w_up[j] . x[m]) * w_down_t[j]

and share one buffer convention (destination passing, as `relax.call_tir` wants):

    x        [M, d]      float32, M symbolic (int64): decode M = 1, prefill M > 1
    w_gate   [n_ff, d]   dtype (float32 | float16), accumulated in float32
    w_up     [n_ff, d]   dtype
    w_down_t [n_ff, d]   dtype: the down projection TRANSPOSED at compile time (w_down_t[j] = w_down[:, j]),
                         so the output weights of one neuron are one contiguous row
    (gathered_mlp.py's kernels only) idx [M, K] int32, count [M] int32: per token, its first count[m] entries
                         of idx are the neurons to compute, K symbolic
    out      [M, d]      float32

Factories are cached (PrimFuncs are immutable), so the layers of one shape share one parse.

Exact mode (ProSparse's fused gate + sparse up/down): act_g is relu or fatrelu, so a neuron whose
activated gate is 0 for every token contributes exactly nothing; its up and down rows are never read.
In one parallel region each task streams its contiguous block of gate rows, activates the gates, lists
the neurons some token activates in its own slot range (no sequential compaction pass, no barrier), then
gathers the up rows of its list and forms h = act_g(g) * act_u(u). A second region splits the output
columns over the tasks; each streams its slice of every listed down row (vector FMA). Rows are streamed
`sched.rows` at a time with the next ones software-prefetched, which keeps gathered rows at the streaming
bandwidth. The result equals the dense kernel up to float32 summation order (with quantized weights on a target
with an int8 dot both round x to 8-bit blocks the same way, `quant_int8.py`).
"""

from __future__ import annotations

from functools import cache

from tvm.script import tirx as T

from ...ir.activations import ZERO_BELOW, reads_input
from .axpy import axpy_macro, zero_columns_macro
from .common import (
    GATE_ACTS,
    UP_ACTS,
    activation,
    check_dtype,
    dots_macro,
    is_active,
    skipping_value,
    symbol,
    threshold_tag,
    x_operand,
)
from .hidden_norm import hidden_norm_macros
from .quant_blocks import weight_buffer
from .schedule import CpuSchedule

EXACT_GATE_ACTS = ZERO_BELOW  # exactly zero below their threshold (the activation table says which)


def check_mlp(d: int, n_ff: int, gate_act: str, up_act: str, dtype: str, gate_acts=GATE_ACTS,
              down_dtype: str | None = None) -> None:
    """One clear error for a gated-MLP kernel request no kernel here can serve (shared by every target)."""
    check_dtype(dtype)
    if down_dtype is not None:
        check_dtype(down_dtype)
    if gate_act not in gate_acts:
        raise ValueError(f"gate_act must be one of {gate_acts}, got {gate_act!r}")
    if up_act not in UP_ACTS:
        raise ValueError(f"up_act must be one of {UP_ACTS}, got {up_act!r}")
    if d < 1 or n_ff < 1:
        raise ValueError(f"d and n_ff must be positive, got d={d}, n_ff={n_ff}")


def mlp_symbol(kind: str, d: int, n_ff: int, gate_act: str, up_act: str, threshold: float, dtype: str,
               sched, down_dtype: str | None = None) -> str:
    """The kernel's global symbol: every parameter that changes the generated code is in it."""
    thr = f"t{threshold_tag(threshold)}" if threshold else "t0"
    return symbol("gmlp", kind, f"d{d}", f"f{n_ff}", gate_act, up_act, thr, weights_tag(dtype, down_dtype), sched.tag)


def weights_tag(dtype: str, down_dtype: str | None) -> str:
    """The weights' part of a kernel symbol: `dtype`, or `<dtype>dn<down_dtype>` where the down projection has a
    layout of its own."""
    return dtype if down_dtype in (None, dtype) else f"{dtype}dn{down_dtype}"


@cache
def sparse_gated_mlp(d: int, n_ff: int, *, gate_act: str = "relu", up_act: str = "identity",
                     threshold: float = 0.0, dtype: str = "float32", down_dtype: str | None = None,
                     hidden_rms_eps: float | None = None, sched: CpuSchedule):
    """Exact-mode sparse gated MLP: (x, w_gate, w_up, w_down_t, out), see the module docstring.

    gate_act: "relu" (ReGLU / dReLU) or "fatrelu" (g if g > threshold else 0);
    up_act: "identity" (ReGLU) or "relu" (dReLU); down_dtype: w_down_t's layout where it is not `dtype`'s;
    hidden_rms_eps: h normalised by its RMS before the down projection (`compacting_body`).
    """
    check_mlp(d, n_ff, gate_act, up_act, dtype, EXACT_GATE_ACTS, down_dtype)
    down = down_dtype or dtype
    sched = sched.fitted(d, dtype, down)
    kind = "exact" if hidden_rms_eps is None else f"exactrms{threshold_tag(hidden_rms_eps)}"
    name = mlp_symbol(kind, d, n_ff, gate_act, up_act, threshold, dtype, sched, down)
    return compacting_gated_mlp(d, n_ff, dtype, sched, name, gate_value=skipping_value(activation(gate_act, threshold)),
                                act_u=activation(up_act), kernel="exact", reads_up=reads_input(up_act),
                                down_dtype=down, hidden_rms_eps=hidden_rms_eps)


def compacting_gated_mlp(d: int, n_ff: int, dtype: str, sched: CpuSchedule, name: str, *, gate_value, act_u,
                         keep_product=None, kernel: str, reads_up: bool = True, down_dtype: str | None = None,
                         hidden_rms_eps: float | None = None):
    """The kernel of exact and threshold modes (`kernel`: "exact" / "threshold"): (x, w_gate, w_up, w_down_t, out),
    structure in the module docstring; its body is `compacting_body`'s. `down_dtype`: w_down_t's layout (default
    `dtype`); `hidden_rms_eps`: `compacting_body`'s."""
    threads = sched.threads
    down = down_dtype or dtype
    x8, x8_bytes, prep_x = x_operand(d, dtype, sched)
    body = compacting_body(d, n_ff, dtype, sched, gate_value=gate_value, act_u=act_u, keep_product=keep_product,
                           x8=x8, kernel=kernel, reads_up=reads_up, down_dtype=down, hidden_rms_eps=hidden_rms_eps)
    wshape, wdtype = weight_buffer(n_ff, d, dtype)
    dshape, ddtype = weight_buffer(n_ff, d, down)

    @T.prim_func
    def kernel(x_h: T.handle, w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
               w_down_t: T.Buffer(dshape, ddtype), out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        M = T.int64()
        x = T.match_buffer(x_h, (M, d), "float32")
        out = T.match_buffer(out_h, (M, d), "float32")
        if x8:  # x quantized once to 8-bit blocks for the integer row dots
            xd = T.alloc_buffer((M, x8_bytes), "uint8")
            prep_x(x, xd, M)
        else:
            xd = T.decl_buffer((M, d), "float32", data=x.data)
        g = T.alloc_buffer((M, n_ff), "float32")  # kept gate value, by neuron
        # h by slot, task t's slots from t * nper (product: first by neuron, then compacted in place to slots)
        h = T.alloc_buffer((M, n_ff), "float32")
        idx = T.alloc_buffer((n_ff,), "int32")  # weight row of each slot
        cnt = T.alloc_buffer((threads,), "int32")  # used slots per task
        body(xd, M, 0, w_gate, w_up, w_down_t, g, h, idx, cnt, out)

    return kernel.with_attr("global_symbol", name)


def compacting_body(d: int, n_ff: int, dtype: str, sched: CpuSchedule, *, gate_value, act_u, keep_product=None,
                    x8: bool = False, kernel: str, gate_dots=None, reads_up: bool = True,
                    down_dtype: str | None = None, hidden_rms_eps: float | None = None, masked: bool = False):
    """`body(x, M, row0, w_gate, w_up, w_down_t, g, h, idx, cnt, out, cut, scale)`: the two regions of the exact and
    threshold kernels over the n_ff neurons whose weights are rows row0 .. row0 + n_ff - 1 (a routed expert's; 0 for a
    block's own weights). Scratch: g, h [M, n_ff] f32, idx [n_ff] i32 (it lists weight rows), cnt [threads] i32. `x8`: x
    is the 8-bit blocks of `common.x_operand` (the integer row dots), else float32 [M, d]. `kernel`: the kernel it is
    the body of, which picks the down projection's path (`CpuSchedule.int8_axpy`).

    `gate_value(s)` maps a gate dot to the value kept by neuron (0: the token drops it). A neuron is listed when
    some token keeps it; then only the listed up and down rows are read. With `keep_product(h) -> bool` (threshold
    mode's "product" criterion) the decision needs u: every up row is read with the gate, h = gate_value(g) *
    act_u(u) is kept where keep_product(h), compacted in place, and only the listed down rows are read.
    `gate_dots`: a macro in place of the gate row dots (same arguments), e.g. one that leaves g as computed before
    the kernel (cutoff_mlp.py: the activated gate is an input). `reads_up` False: act_u ignores its input (`unit`,
    a non-gated MLP's up factor), so no up row is read. `down_dtype`: w_down_t's layout where it is not `dtype`
    (q8_0 down rows beside a GGUF's 4-bit gate / up: passes/quantize.py). `hidden_rms_eps`: the block normalises h
    by its RMS over the n_ff neurons before the down projection (BitNet): each task sums its kept h² in the first
    region, and in the second scales its output columns by 1 / sqrt(sum / n_ff + eps) (hidden_norm.py). `masked`: a
    gate value a of token m's neuron (weight row) j is also dropped where |a|·|scale[m]| <= cut[0, j], and its h,
    once the up row is read, where |h|·|scale[m]| <= cut[1, j] (a listed neuron no token keeps then is unlisted
    before the down rows are read); float32 buffers the caller gives at run time, cut [2, rows] indexed as the weight
    rows (a routed expert's calibrated cuts and its tokens' routing weights, ir/moe.py; NaN stays: it reaches the
    output); unmasked bodies ignore both.
    """
    threads, R = sched.threads, sched.rows
    nper = (n_ff + threads - 1) // threads  # gate rows per task; also each task's slot range in idx/h
    zero = T.float32(0)
    product = keep_product is not None
    if gate_dots is None:
        gate_dots, _ = dots_macro(d, dtype, sched, gathered=False, store=gate_value, x8=x8)
    up_dots, _ = dots_macro(d, dtype, sched, gathered=not product, x8=x8)
    axpy_all, _ = axpy_macro(d, down_dtype or dtype, sched, gathered=True, kernel=kernel)
    zero_cols = zero_columns_macro(d, sched, down_dtype or dtype)
    normed = hidden_rms_eps is not None
    sum_squares, scale_columns = hidden_norm_macros(d, n_ff, sched, down_dtype or dtype, hidden_rms_eps or 0.0)

    @T.macro
    def body(x, M, row0, w_gate, w_up, w_down_t, g, h, idx, cnt, out, cut=0.0, scale=0.0):
        sq = T.alloc_buffer((threads, M if normed else 1), "float32")   # per task and token: its kept h²
        # 1) per task: gate over its contiguous rows (product: up too), list the neurons some token keeps
        for t in T.parallel(threads):
            c = T.alloc_buffer((1,), "int32", scope="global")
            live = T.alloc_buffer((1,), "int32", scope="global")
            c[0] = 0
            j0: T.let = t * nper
            nj: T.let = T.max(T.min(nper, n_ff - j0), 0)
            for st in range((nj + R - 1) // R):
                gate_dots(w_gate, x, M, idx, row0 + j0, st * R, nj, g, j0)
                if product and reads_up:
                    up_dots(w_up, x, M, idx, row0 + j0, st * R, nj, h, j0)
                for r in range(T.min(R, nj - st * R)):
                    live[0] = 0
                    for m in range(M):
                        if masked:
                            g[m, j0 + st * R + r] = T.if_then_else(
                                T.Or(T.isnan(g[m, j0 + st * R + r]),
                                     T.fabs(g[m, j0 + st * R + r]) * T.fabs(scale[m])
                                     > cut[0, row0 + j0 + st * R + r]),
                                g[m, j0 + st * R + r], zero)
                        if product:
                            h[m, j0 + st * R + r] = g[m, j0 + st * R + r] * act_u(h[m, j0 + st * R + r])
                            if keep_product(h[m, j0 + st * R + r]):
                                live[0] = 1
                            else:
                                h[m, j0 + st * R + r] = zero
                        elif is_active(g[m, j0 + st * R + r]):
                            live[0] = 1
                    if live[0] != 0:
                        if product:
                            # slot j0 + c <= this neuron's column: compaction never overwrites an unread column
                            for m in range(M):
                                h[m, j0 + c[0]] = h[m, j0 + st * R + r]
                        idx[j0 + c[0]] = row0 + j0 + st * R + r
                        c[0] = c[0] + 1
            nl: T.let = c[0]
            cnt[t] = nl
            if not product:  # only the listed neurons' up rows
                for st in range((nl + R - 1) // R):
                    if reads_up:
                        up_dots(w_up, x, M, idx, j0, st * R, nl, h, j0)
                    for r in range(T.min(R, nl - st * R)):
                        for m in range(M):
                            h[m, j0 + st * R + r] = g[m, idx[j0 + st * R + r] - row0] * act_u(h[m, j0 + st * R + r])
                if masked:   # the cut on h: a listed neuron no token keeps is unlisted (compacted in place)
                    c[0] = 0
                    for r in range(nl):
                        live[0] = 0
                        for m in range(M):
                            if T.Or(T.isnan(h[m, j0 + r]),
                                    T.fabs(h[m, j0 + r]) * T.fabs(scale[m]) > cut[1, idx[j0 + r]]):
                                live[0] = 1
                            else:
                                h[m, j0 + r] = zero
                        if live[0] != 0:
                            for m in range(M):
                                h[m, j0 + c[0]] = h[m, j0 + r]
                            idx[j0 + c[0]] = idx[j0 + r]
                            c[0] = c[0] + 1
                    cnt[t] = c[0]
            if normed:
                sum_squares(h, j0, nl, sq, t, M)
        # 2) down: task t owns a slice of the output columns and streams that slice of every listed row
        for t in T.parallel(threads):
            zero_cols(t, out, M)
            for t2 in range(threads):
                n2: T.let = cnt[t2]
                for st in range((n2 + R - 1) // R):
                    axpy_all(w_down_t, idx, t2 * nper, st * R, n2, h, t2 * nper, t, out, M)
            if normed:
                scale_columns(out, sq, t, M)

    return body


@cache
def dense_gated_mlp(d: int, n_ff: int, *, gate_act: str = "relu", up_act: str = "identity",
                    threshold: float = 0.0, dtype: str = "float32", down_dtype: str | None = None,
                    sched: CpuSchedule):
    """Dense gated MLP, same buffers as `sparse_gated_mlp`: (x, w_gate, w_up, w_down_t, out).

    Every neuron is computed (any gate_act of GATE_ACTS); the dense fallback and the "dense" timings.
    `down_dtype`: w_down_t's layout where it is not `dtype`'s (a routed expert's, all-experts form).
    """
    check_mlp(d, n_ff, gate_act, up_act, dtype, GATE_ACTS, down_dtype)
    down = down_dtype or dtype
    sched = sched.fitted(d, dtype, down)
    x8, x8_bytes, prep_x = x_operand(d, dtype, sched)
    body = dense_body(d, n_ff, dtype, sched, act_g=activation(gate_act, threshold), act_u=activation(up_act), x8=x8,
                      kernel="dense", reads_up=reads_input(up_act), down_dtype=down)
    wshape, wdtype = weight_buffer(n_ff, d, dtype)
    dshape, ddtype = weight_buffer(n_ff, d, down)

    @T.prim_func
    def kernel(x_h: T.handle, w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
               w_down_t: T.Buffer(dshape, ddtype), out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        M = T.int64()
        x = T.match_buffer(x_h, (M, d), "float32")
        out = T.match_buffer(out_h, (M, d), "float32")
        if x8:  # x quantized once to 8-bit blocks for the integer row dots
            xd = T.alloc_buffer((M, x8_bytes), "uint8")
            prep_x(x, xd, M)
        else:
            xd = T.decl_buffer((M, d), "float32", data=x.data)
        g = T.alloc_buffer((M, n_ff), "float32")
        h = T.alloc_buffer((M, n_ff), "float32")
        body(xd, M, 0, w_gate, w_up, w_down_t, g, h, out)

    return kernel.with_attr("global_symbol", mlp_symbol("dense", d, n_ff, gate_act, up_act, threshold, dtype, sched,
                                                        down))


def dense_body(d: int, n_ff: int, dtype: str, sched: CpuSchedule, *, act_g, act_u, x8: bool = False,
               kernel: str, biased: bool = False, gate_dots=None, reads_up: bool = True,
               down_dtype: str | None = None):
    """`body(x, M, row0, w_gate, w_up, w_down_t, g, h, out)`: the dense kernel's two regions over the n_ff neurons
    whose weights are rows row0 .. row0 + n_ff - 1 (see `compacting_body`, also for `x8` and `kernel`). Scratch:
    g, h [M, n_ff] f32. `biased`: the body also takes `b_gate, b_up` (float32, indexed by weight row), added to
    the dots before the activations (gpt-oss's experts). `gate_dots`, `reads_up`, `down_dtype`: as in
    `compacting_body`."""
    threads, R = sched.threads, sched.rows
    hidden = hidden_body(d, n_ff, dtype, sched, act_g=act_g, act_u=act_u, x8=x8, biased=biased, gate_dots=gate_dots,
                         reads_up=reads_up)
    axpy_all, _ = axpy_macro(d, down_dtype or dtype, sched, gathered=False, kernel=kernel)
    zero_cols = zero_columns_macro(d, sched, down_dtype or dtype)

    @T.macro
    def body(x, M, row0, w_gate, w_up, w_down_t, g, h, out, b_gate=None, b_up=None):
        hidden(x, M, row0, w_gate, w_up, g, h, b_gate, b_up)
        for t in T.parallel(threads):
            zero_cols(t, out, M)
            for st in range((n_ff + R - 1) // R):
                axpy_all(w_down_t, h, row0, st * R, n_ff, h, 0, t, out, M)

    return body


def hidden_body(d: int, n_ff: int, dtype: str, sched: CpuSchedule, *, act_g, act_u, x8: bool = False,
                biased: bool = False, gate_dots=None, reads_up: bool = True):
    """`hidden(x, M, row0, w_gate, w_up, g, h, b_gate, b_up)`: the dense kernel's first region, h [M, n_ff] =
    act_g(x·Wgᵀ) ⊙ act_u(x·Wuᵀ) over the weight rows row0 .. row0 + n_ff - 1, the neurons split over the tasks
    (`dense_body`'s arguments; b_gate / b_up are read where `biased`)."""
    threads, R = sched.threads, sched.rows
    nper = (n_ff + threads - 1) // threads
    if gate_dots is None:
        gate_dots, _ = dots_macro(d, dtype, sched, gathered=False, store=None if biased else act_g, x8=x8)
    up_dots, _ = dots_macro(d, dtype, sched, gathered=False, x8=x8)

    @T.macro
    def hidden(x, M, row0, w_gate, w_up, g, h, b_gate, b_up):
        for t in T.parallel(threads):
            j0: T.let = t * nper
            nj: T.let = T.max(T.min(nper, n_ff - j0), 0)
            for st in range((nj + R - 1) // R):
                gate_dots(w_gate, x, M, g, row0 + j0, st * R, nj, g, j0)
                if reads_up:
                    up_dots(w_up, x, M, h, row0 + j0, st * R, nj, h, j0)
                for r in range(T.min(R, nj - st * R)):
                    j: T.let = j0 + st * R + r
                    for m in range(M):
                        if biased:
                            h[m, j] = act_g(g[m, j] + b_gate[row0 + j]) * act_u(h[m, j] + b_up[row0 + j])
                        else:
                            h[m, j] = g[m, j] * act_u(h[m, j])

    return hidden
