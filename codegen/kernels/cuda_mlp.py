"""Gated-MLP and Linear kernels for CUDA GPUs: exact sparse, indexed sparse, dense, linear.

Same functions, arguments and buffers as the CPU kernels (`sparse_mlp.py`, `linear.py`), so the lowering
swaps one family for the other by the schedule's type; here `sched` is a `GpuSchedule`. Each PrimFunc is a
sequence of kernel launches written at the level the GPU runs them (explicit blockIdx / threadIdx bindings,
warp shuffles, shared memory), marked `tirx.is_scheduled` so Relax's dlight rules leave them alone.

The warp dot product and the down projection are in `cuda_blocks.py`. Every gated MLP is three launches:
gate/up (a warp per row), the down projection's split-K parts, their sum. Exact, threshold and predictor modes
share one body (`flagging_body`): the first launch decides per neuron, flags the neurons some token keeps and
reads their up rows in the same warp (the decision is warp-uniform), the down launch reads only flagged rows; the
cutoff variant's kernels (`cuda_cutoff_mlp.py`) are this body and the dense one reading a given activated gate.
Deterministic (no atomics), no single-block phase, no host round-trip.

Buffers: x [M, d] float32 (M symbolic), weights [n_ff, d] (float32 | float16, fp32 accumulate), out [M, d];
the indexed kernel adds idx [M, K] int32 and count [M] int32. After `out` come the scratch parameters (`scratch.py`):
h [M, n_ff] (indexed: [M, K]), flag [n_ff] (the flagging kernels), part [splits, M, d] — allocated by the caller
(Relax's memory planning), not by TVM's workspace pool inside the call, so a CUDA graph captures the launches and
nothing else; every scratch word is written before it is read, so repeated calls need no clearing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from tvm import tirx
from tvm.script import tirx as T

from ...ir.activations import reads_input
from .common import activation, check_dtype, is_active, skipping_value, symbol, threshold_tag
from .cuda_blocks import (
    block_any,
    by_flag,
    down_macros,
    down_splits,
    hidden_norm_launches,
    row_dots_launch,
    stage_x_macro,
    warp_dot_macro,
    warp_per_row,
    x_stage_buffer,
)
from .quant_blocks import weight_buffer
from .schedule import GpuSchedule
from .scratch import with_scratch
from .sparse_mlp import EXACT_GATE_ACTS, GATE_ACTS, check_mlp, mlp_symbol
from .threshold_mlp import THRESHOLD_GATE_ACTS, check_threshold, threshold_rule


def _require_gpu_schedule(sched) -> None:
    if not isinstance(sched, GpuSchedule):
        raise TypeError(f"the CUDA kernels take a GpuSchedule, got {type(sched).__name__}")


@dataclass(frozen=True)
class _Mlp:
    """What the three gated-MLP kernels share: sizes, activations and the macros built for them."""

    L: int
    W: int
    gated_dot: object  # macro (w_gate, w_up, row, x, xs, m, lane, s): s[0] = act_g(gate . x) * act_u(up . x)
    warp_dot: object
    stage: object  # macro (x, m, xs, ty, tx): x[m] into the block's shared xs where the dots read it from there
    xs_shape: tuple
    xs_dtype: str
    down_parts: object
    sum_parts: object
    splits: int
    act_u: Callable
    name: str
    reads_up: bool = True  # False: act_u ignores its input (`unit`), the kernels read no up rows
    buffer: tuple = ()     # (shape, dtype) of the gate / up weights' buffers
    down_buffer: tuple = ()  # (shape, dtype) of w_down_t's buffer (its own layout, or the gate's)
    sched: GpuSchedule | None = None


def mlp_parts(kind, d, n_ff, gate_act, up_act, threshold, dtype, sched, row, count, gate_acts=GATE_ACTS,
         act_g=None, tag=None, keep=None, down_dtype=None, skip_zero_h=False) -> _Mlp:
    """Checks the parameters (as the CPU kernels do) and builds the shared macros; `row`/`count`/`keep` map a
    token's list position to a weight row / give its list length / say whether it is listed (see `down_macros`).
    `act_g`/`tag` override the gate activation and its name in the symbol (threshold mode's IR activations).
    `down_dtype`: the down projection's layout where it is not `dtype`'s (the down launch reads it); `skip_zero_h`:
    the down launch lists no position whose h is 0 (`down_macros`)."""
    _require_gpu_schedule(sched)
    check_mlp(d, n_ff, gate_act, up_act, dtype, gate_acts, down_dtype)
    down = down_dtype or dtype
    act_g, act_u = act_g or activation(gate_act, threshold, "cuda"), activation(up_act, family="cuda")
    warp_dot = warp_dot_macro(d, dtype, sched)
    splits = down_splits(d, down, sched, n_ff)
    reads_up = reads_input(up_act)  # `unit` (a non-gated MLP): no up row is read

    @T.macro
    def gated_dot(w_gate, w_up, j, x, xs, m, lane, s):
        gs = T.alloc_buffer((1,), "float32", scope="local")
        warp_dot(w_gate, j, x, xs, m, lane, s)
        gs[0] = act_g(s[0])
        if reads_up:
            warp_dot(w_up, j, x, xs, m, lane, s)
            s[0] = gs[0] * act_u(s[0])
        else:
            s[0] = gs[0]

    name = "actsparse_cuda_" + mlp_symbol(kind, d, n_ff, tag or gate_act, up_act, threshold, dtype,
                                          sched, down).removeprefix("actsparse_")
    return _Mlp(sched.warp, sched.warps, gated_dot, warp_dot, stage_x_macro(d, dtype, sched),
                *x_stage_buffer(d, dtype), *down_macros(d, down, sched, row, count, splits, keep, skip_zero_h), splits,
                act_u, name, reads_up, weight_buffer(n_ff, d, dtype), weight_buffer(n_ff, d, down), sched)


FLAGGING_SCRATCH = 3  # h [M, n_ff], flag [n_ff], part [splits, M, d]


def tokens() -> tirx.Var:
    """The token count M of a kernel's buffers: symbolic, a call takes any number of tokens. A kernel declares its
    buffers in its signature with it (`x: T.Buffer((M, d), "float32")`): no handles matched inside the body."""
    return tirx.Var("M", "int64")


def finish(kernel, name: str, scratch: int = 0):
    """The kernel as the lowering takes it: named, no aliasing between its buffers, scheduled (dlight leaves it
    alone), its last `scratch` parameters scratch the caller allocates (`scratch.py`)."""
    kernel = kernel.with_attr("global_symbol", name).with_attr("tirx.noalias", True)
    return with_scratch(kernel.with_attr("tirx.is_scheduled", True), scratch)


def flagging_body(k: _Mlp, d: int, n_ff: int, decide, up_after: bool, decide_reads_x: bool = True):
    """The body the flagging kernels share: `body(x, w_gate, w_up, w_down_t, scores, cutoff, out, h, flag, part, M)`
    (scores and cutoff: any buffers where `decide` reads none; h, flag, part: the kernel's scratch parameters). The
    first launch runs a warp per neuron j and, per token m, `decide(x, w_gate, w_up, scores, cutoff, j, m, lane, s,
    live)`, which leaves in s[0] the value the token keeps (0: dropped) and sets live[0] = 1 when it keeps it;
    h[m, j] = s[0], and j is flagged when some token keeps it. `up_after`: the flagged neurons' up rows are read
    next, h = kept value * act_u(up). The down launch reads the flagged rows, the last sums the parts.
    `decide_reads_x` False: the decisions read no x (a given gate), so the decision loop stages none."""
    L, W, warp_dot, act_u, stage = k.L, k.W, k.warp_dot, k.act_u, k.stage
    n_blocks = (n_ff + W - 1) // W
    up_after = up_after and k.reads_up  # `unit`: h is the kept value, no up row read

    @T.macro
    def body(x, w_gate, w_up, w_down_t, scores, cutoff, out, h, flag, part, M):
        # 1) a warp per neuron: the decision for every token; up_after: the flagged neurons' up, h. The staging
        # of x and its barriers stand outside the warps' branches: every thread of the block reaches them
        for bx in T.thread_binding(n_blocks, "blockIdx.x"):
            for ty in T.thread_binding(W, "threadIdx.y"):
                for tx in T.thread_binding(L, "threadIdx.x"):
                    s = T.alloc_buffer((1,), "float32", scope="local")
                    live = T.alloc_buffer((1,), "int32", scope="local")
                    xs = T.alloc_buffer(k.xs_shape, k.xs_dtype, scope="shared")
                    j: T.let = bx * W + ty
                    live[0] = 0
                    for m in range(M):
                        if decide_reads_x:
                            stage(x, m, xs, ty, tx)
                        if j < n_ff:
                            decide(x, xs, w_gate, w_up, scores, cutoff, j, m, tx, s, live)
                            if tx == 0:
                                h[m, j] = s[0]
                    if up_after:
                        if block_any(live[0]) != 0:  # block-uniform: some warp of the block kept its neuron
                            for m in range(M):
                                stage(x, m, xs, ty, tx)
                                if j < n_ff:
                                    if live[0] != 0:
                                        warp_dot(w_up, j, x, xs, m, tx, s)
                                        if tx == 0:
                                            h[m, j] = h[m, j] * act_u(s[0])
                    if j < n_ff:
                        if tx == 0:
                            flag[j] = live[0]
        # 2) down over the flagged rows, 3) the parts summed
        k.down_parts(w_down_t, h, flag, flag, part, M)
        k.sum_parts(part, out, M)

    return body


def _flagging_mlp(k: _Mlp, d: int, n_ff: int, dtype: str, gate_value: Callable, product: bool,
                  hidden_rms_eps: float | None = None):
    """The kernel of exact and threshold modes: the first launch decides per neuron and reads the up rows of the
    kept ones, the down launch reads the kept down rows. `gate_value(s)` turns the gate dot (product: act_g(gate)
    * act_u(up)) into the value kept by neuron, 0 for a neuron this token drops; a neuron is flagged when some
    token keeps it, and then h = kept value * act_u(up) for every token (product: h is the kept value).
    `hidden_rms_eps`: the block's hidden RMS norm (`cuda_blocks.hidden_norm_launches`), one more scratch parameter
    ss [M] after part."""
    warp_dot = k.warp_dot
    (wshape, wdtype), (dshape, ddtype) = k.buffer, k.down_buffer

    @T.macro
    def decide(x, xs, w_gate, w_up, scores, cutoff, j, m, lane, s, live):
        if product:
            k.gated_dot(w_gate, w_up, j, x, xs, m, lane, s)
        else:
            warp_dot(w_gate, j, x, xs, m, lane, s)
        s[0] = gate_value(s[0])
        if is_active(s[0]):  # the same bits in every lane: warp-uniform
            live[0] = 1

    body = flagging_body(k, d, n_ff, decide, up_after=not product)

    M = tokens()
    if hidden_rms_eps is not None:
        norm_sums, scale_out = hidden_norm_launches(n_ff, d, k.sched, hidden_rms_eps)

        @T.prim_func
        def normed(x: T.Buffer((M, d), "float32"), w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
                   w_down_t: T.Buffer(dshape, ddtype), out: T.Buffer((M, d), "float32"),
                   h: T.Buffer((M, n_ff), "float32"), flag: T.Buffer((n_ff,), "int32"),
                   part: T.Buffer((k.splits, M, d), "float32"), ss: T.Buffer((M,), "float32")):
            body(x, w_gate, w_up, w_down_t, x, x, out, h, flag, part, M)
            norm_sums(h, ss, M)
            scale_out(out, ss, M)

        return finish(normed, f"{k.name}_rms{threshold_tag(hidden_rms_eps)}", FLAGGING_SCRATCH + 1)

    @T.prim_func
    def kernel(x: T.Buffer((M, d), "float32"), w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
               w_down_t: T.Buffer(dshape, ddtype), out: T.Buffer((M, d), "float32"),
               h: T.Buffer((M, n_ff), "float32"), flag: T.Buffer((n_ff,), "int32"),
               part: T.Buffer((k.splits, M, d), "float32")):
        body(x, w_gate, w_up, w_down_t, x, x, out, h, flag, part, M)

    return finish(kernel, k.name, FLAGGING_SCRATCH)


@cache
def sparse_gated_mlp(d: int, n_ff: int, *, gate_act: str = "relu", up_act: str = "identity",
                     threshold: float = 0.0, dtype: str = "float32", down_dtype: str | None = None,
                     hidden_rms_eps: float | None = None, sched: GpuSchedule):
    """Exact mode (x, w_gate, w_up, w_down_t, out): dense gate flagging the active rows, their up and down rows;
    `hidden_rms_eps`: h RMS-normalised before the down projection (BitNet)."""
    row, count, keep = by_flag(n_ff)
    k = mlp_parts("exact", d, n_ff, gate_act, up_act, threshold, dtype, sched, row, count, EXACT_GATE_ACTS, keep=keep,
                  down_dtype=down_dtype)
    return _flagging_mlp(k, d, n_ff, dtype, skipping_value(activation(gate_act, threshold, "cuda")), product=False,
                         hidden_rms_eps=hidden_rms_eps)


@cache
def threshold_gated_mlp(d: int, n_ff: int, *, gate_act: str = "silu", up_act: str = "identity",
                        threshold: float = 0.0, criterion: str = "gate", dtype: str = "float32",
                        down_dtype: str | None = None, sched: GpuSchedule):
    """Threshold mode (x, w_gate, w_up, w_down_t, out) with the CPU kernel's criteria (`threshold_mlp.py`):
    "gate" keeps |act_g(gate)| > t, then reads the kept up and down rows; "product" keeps |h| > t, reading
    every gate and up row and the kept down rows."""
    check_threshold(d, n_ff, gate_act, up_act, dtype, criterion, down_dtype)
    rule = threshold_rule(gate_act, threshold, "cuda")
    row, count, keep = by_flag(n_ff)
    k = mlp_parts(f"thr{criterion}", d, n_ff, gate_act, up_act, threshold, dtype, sched, row, count,
                  THRESHOLD_GATE_ACTS, act_g=rule.act_g, tag=gate_act.replace("_", ""), keep=keep,
                  down_dtype=down_dtype)
    if criterion == "product":  # the first launch computes h = act_g(g) * act_u(u); drop it where not kept
        return _flagging_mlp(k, d, n_ff, dtype, lambda v: T.if_then_else(rule.kept(v), v, T.float32(0)), True)
    return _flagging_mlp(k, d, n_ff, dtype, rule.masked_gate, False)


@cache
def sparse_gated_mlp_indexed(d: int, n_ff: int, *, gate_act: str = "relu", up_act: str = "identity",
                             threshold: float = 0.0, dtype: str = "float32", down_dtype: str | None = None,
                             sched: GpuSchedule):
    """Given neurons (x, w_gate, w_up, w_down_t, idx, count, out): token m computes idx[m, :count[m]] only."""
    k = mlp_parts("indexed", d, n_ff, gate_act, up_act, threshold, dtype, sched, lambda rows, m, p: rows[m, p],
                  lambda cnt, m: cnt[m], down_dtype=down_dtype)
    L, W, splits = k.L, k.W, k.splits
    (wshape, wdtype), (dshape, ddtype) = k.buffer, k.down_buffer

    M, K = tokens(), tirx.Var("K", "int64")

    @T.prim_func
    def kernel(x: T.Buffer((M, d), "float32"), w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
               w_down_t: T.Buffer(dshape, ddtype), idx: T.Buffer((M, K), "int32"), count: T.Buffer((M,), "int32"),
               out: T.Buffer((M, d), "float32"), h: T.Buffer((M, K), "float32"),
               part: T.Buffer((splits, M, d), "float32")):
        # 1) gate and up of each listed row: a warp per (token, row)
        for m in T.thread_binding(M, "blockIdx.y"):
            for bx in T.thread_binding((K + W - 1) // W, "blockIdx.x"):
                for ty in T.thread_binding(W, "threadIdx.y"):
                    for tx in T.thread_binding(L, "threadIdx.x"):
                        s = T.alloc_buffer((1,), "float32", scope="local")
                        xs = T.alloc_buffer(k.xs_shape, k.xs_dtype, scope="shared")
                        p: T.let = bx * W + ty
                        k.stage(x, m, xs, ty, tx)
                        if p < T.Cast("int64", count[m]):
                            k.gated_dot(w_gate, w_up, idx[m, p], x, xs, m, tx, s)
                            if tx == 0:
                                h[m, p] = s[0]
        k.down_parts(w_down_t, h, idx, count, part, M)
        k.sum_parts(part, out, M)

    return finish(kernel, k.name, 2)


@cache
def scored_gated_mlp(d: int, n_ff: int, *, gate_act: str = "relu", up_act: str = "identity",
                     threshold: float = 0.0, dtype: str = "float32", down_dtype: str | None = None,
                     hidden_rms_eps: float | None = None, sched: GpuSchedule):
    """Predictor mode (x, w_gate, w_up, w_down_t, scores, cutoff, out): token m computes the neurons j with
    scores[m, j] > cutoff[0] (the CPU's select + indexed kernels' semantics, `lower_predictor.py`) in three
    launches and no index list: a warp per neuron reads its score (the same in every lane: warp-uniform), computes
    gate and up for the tokens that predict it and flags it; the down launch reads the flagged rows."""
    row, count, keep = by_flag(n_ff)
    k = mlp_parts("scored", d, n_ff, gate_act, up_act, threshold, dtype, sched, row, count, keep=keep,
                  down_dtype=down_dtype)
    (wshape, wdtype), (dshape, ddtype) = k.buffer, k.down_buffer

    @T.macro
    def decide(x, xs, w_gate, w_up, scores, cutoff, j, m, lane, s, live):
        s[0] = T.float32(0)
        if scores[m, j] > cutoff[0]:
            k.gated_dot(w_gate, w_up, j, x, xs, m, lane, s)
            live[0] = 1

    body = flagging_body(k, d, n_ff, decide, up_after=False)

    M = tokens()
    if hidden_rms_eps is not None:   # the norm over the computed neurons (h is 0 for the others), as exact's
        norm_sums, scale_out = hidden_norm_launches(n_ff, d, sched, hidden_rms_eps)

        @T.prim_func
        def normed(x: T.Buffer((M, d), "float32"), w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
                   w_down_t: T.Buffer(dshape, ddtype), scores: T.Buffer((M, n_ff), "float32"),
                   cutoff: T.Buffer((1,), "float32"), out: T.Buffer((M, d), "float32"),
                   h: T.Buffer((M, n_ff), "float32"), flag: T.Buffer((n_ff,), "int32"),
                   part: T.Buffer((k.splits, M, d), "float32"), ss: T.Buffer((M,), "float32")):
            body(x, w_gate, w_up, w_down_t, scores, cutoff, out, h, flag, part, M)
            norm_sums(h, ss, M)
            scale_out(out, ss, M)

        return finish(normed, f"{k.name}_rms{threshold_tag(hidden_rms_eps)}", FLAGGING_SCRATCH + 1)

    @T.prim_func
    def kernel(x: T.Buffer((M, d), "float32"), w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
               w_down_t: T.Buffer(dshape, ddtype), scores: T.Buffer((M, n_ff), "float32"),
               cutoff: T.Buffer((1,), "float32"), out: T.Buffer((M, d), "float32"),
               h: T.Buffer((M, n_ff), "float32"), flag: T.Buffer((n_ff,), "int32"),
               part: T.Buffer((k.splits, M, d), "float32")):
        body(x, w_gate, w_up, w_down_t, scores, cutoff, out, h, flag, part, M)

    return finish(kernel, k.name, FLAGGING_SCRATCH)


def dense_body(k: _Mlp, n_ff: int, neuron):
    """`body(x, w_gate, w_up, w_down_t, a, out, h, part, M)` of the dense kernels: a warp per neuron j computes
    `neuron(w_gate, w_up, j, x, xs, m, lane, s, a)` (h[m, j] into s[0]) for every token, the down launch reads the
    rows `k`'s row map gives (it gets `a` as its rows: the routed kernel's experts), the last sums the parts."""
    hidden = hidden_launch(k, n_ff, neuron)

    @T.macro
    def body(x, w_gate, w_up, w_down_t, a, out, h, part, M):
        hidden(x, w_gate, w_up, a, h, M)
        k.down_parts(w_down_t, h, a, a, part, M)
        k.sum_parts(part, out, M)

    return body


def hidden_launch(k: _Mlp, n_ff: int, neuron):
    """`hidden(x, w_gate, w_up, a, h, M)`: the dense kernels' first launch, a warp per neuron j, h[m, j] =
    `neuron(w_gate, w_up, j, x, xs, m, lane, s, a)` for every token (`dense_body`)."""

    @T.macro
    def each(x, xs, m, j, tx, s, w_gate, w_up, a, h):
        neuron(w_gate, w_up, j, x, xs, m, tx, s, a)
        if tx == 0:
            h[m, j] = s[0]

    frame = warp_per_row(n_ff, k.L, k.W, k.xs_shape, k.xs_dtype, k.stage, each)

    @T.macro
    def hidden(x, w_gate, w_up, a, h, M):
        frame(x, M, w_gate, w_up, a, h)

    return hidden


def dense_mlp(kind, d, n_ff, gate_act, up_act, threshold, dtype, sched, **mlp_options) -> _Mlp:
    """`mlp_parts` of a dense kernel: the down launch reads every row (position p is row p)."""
    return mlp_parts(kind, d, n_ff, gate_act, up_act, threshold, dtype, sched, lambda rows, m, p: p,
                     lambda cnt, m: n_ff, **mlp_options)


@cache
def dense_gated_mlp(d: int, n_ff: int, *, gate_act: str = "relu", up_act: str = "identity",
                    threshold: float = 0.0, dtype: str = "float32", down_dtype: str | None = None,
                    sched: GpuSchedule):
    """Dense gated MLP (x, w_gate, w_up, w_down_t, out): every neuron, gate and up fused per warp. `down_dtype`:
    w_down_t's layout where it is not `dtype`'s (a routed expert's in the all-experts form)."""
    k = dense_mlp("dense", d, n_ff, gate_act, up_act, threshold, dtype, sched, down_dtype=down_dtype)
    wshape, wdtype = k.buffer
    dshape, ddtype = k.down_buffer

    @T.macro
    def neuron(w_gate, w_up, j, x, xs, m, lane, s, a):
        k.gated_dot(w_gate, w_up, j, x, xs, m, lane, s)

    body = dense_body(k, n_ff, neuron)
    M = tokens()

    @T.prim_func
    def kernel(x: T.Buffer((M, d), "float32"), w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
               w_down_t: T.Buffer(dshape, ddtype), out: T.Buffer((M, d), "float32"),
               h: T.Buffer((M, n_ff), "float32"), part: T.Buffer((k.splits, M, d), "float32")):
        body(x, w_gate, w_up, w_down_t, x, out, h, part, M)

    return finish(kernel, k.name, 2)


@cache
def linear(k: int, n: int, *, dtype: str = "float32", sched: GpuSchedule, bias: bool = False):
    """Linear layer (x, w[, b], out) = x @ w^T (+ b): a warp per output row, every token."""
    _require_gpu_schedule(sched)
    check_dtype(dtype)
    if k < 1 or n < 1:
        raise ValueError(f"k and n must be positive, got k={k}, n={n}")
    wshape, wdtype = weight_buffer(n, k, dtype)
    name = symbol("cuda", "linear", f"k{k}", f"n{n}", "bias" if bias else "nobias", dtype, sched.tag)
    launch = row_dots_launch(k, n, dtype, sched, lambda rows, m, j: j, bias)

    @T.macro
    def body(x, w, b, out, M):
        launch(x, w, b, out, M, w)

    M = tokens()
    if bias:

        @T.prim_func
        def kernel(x: T.Buffer((M, k), "float32"), w: T.Buffer(wshape, wdtype), b: T.Buffer((n,), "float32"),
                   out: T.Buffer((M, n), "float32")):
            body(x, w, b, out, M)

        return finish(kernel, name)

    @T.prim_func
    def kernel_nobias(x: T.Buffer((M, k), "float32"), w: T.Buffer(wshape, wdtype), out: T.Buffer((M, n), "float32")):
        body(x, w, w, out, M)

    return finish(kernel_nobias, name)
