"""Input-sparse gated-MLP kernel for CPUs (TEAL / WINA, mode 'input'): skipped inputs skip whole weight rows.

Buffers (semantics in `ir/input_sparse.py`):

    x [M, d] f32,  w_gate_t / w_up_t [d, n_ff] (input channel i is row i: contiguous),  w_down_t [n_ff, d],
    x_thr [d] f32,  h_thr [n_ff] f32,  out [M, d] f32

The weights may be float32 / float16 or a quantized layout (q8_0 / q4_0 / q4_1, `ir.quant`): a stored row is
then a run of blocks along its columns (gate / up: 32 neurons per block; down: 32 output columns), which is
exactly what the row-axpys stream, so the quantized axpy of `quant_axpy.py` serves all three matrices. Where the
schedule gives this kernel the integer axpy (`CpuSchedule.integer_axpy("input")`, from the target's table) all
three take it (`quant_axpy8.py`: a step's coefficients — x's kept values for gate / up, h for down — rounded to
int8 per 32-column group, as the dense kernel rounds x for its row dots): at SmolLM2-135M's 576 x 1536 q4_0 the
float axpy over half the rows cost as much as the dense kernel's integer dots over all of them (BENCHMARKS.md,
session 13). The masks then see the rounded sums (a neuron within the rounding of its threshold may fall on
either side, as with the dense kernel's rounded x).

Per call:
  0) one pass over x lists the input channels some token keeps (|x[m, i]| > x_thr[i]) and their values
     (0 for a token that drops the channel): O(M·d), no weight read;
  1) per task, its contiguous slice of the n_ff columns: g, u = Σ over listed channels of x_i · w_*_t[i] (a
     gathered-row axpy: only the listed rows of w_gate_t / w_up_t are read, each as one contiguous stream),
     then h = act_g(g)·act_u(u), masked per token by |h| (criterion 'product') or |act_g(g)| ('gate') > h_thr,
     and the neurons some token keeps are listed (compacted in place inside the task's slice);
  2) per task, its slice of the d output columns: out = Σ over listed neurons of h_j · w_down_t[j].
So a token reads (1 - s_x)·(gate + up) + (1 - s_h)·down bytes. Top-k (x_keep / h_keep > 0, a fixed count per
token): step 0 first finds each token's k-th largest |x_i| / x_thr_i (`top_k.py`'s radix select) and keeps the
channels at or above it; for h, step 1 stores every neuron's h and ratio, a serial step finds each token's k-th
ratio over all n_ff, and a second parallel step masks and lists (the select needs the whole row, which no task has).
With thresholds, a call of at most `by_rows` tokens (`input_channels.channel_tokens`: while the tasks' partial sums fit
the L2, so every decoding step) runs steps 1 and 2 split by rows instead (`input_channels.py`): each task reads whole
rows, its share of the listed channels' and then its own kept neurons', into partial sums added after. Session 42,
Zen 3, 2 threads, q4_0 at 50% skipped (`threshold_step --kernels`, medians): SmolLM2's dims 105 instead of 120 µs,
Mistral-7B's 3.5 instead of 4.7 ms (BENCHMARKS.md).
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

from tvm.script import tirx as T

from ...ir.activations import reads_input
from .axpy import axpy_macro, task_columns, zero_columns_macro
from .common import GATE_ACTS, activation, symbol
from .input_channels import channel_mlp_macro, channel_steps, checked_by_rows, partial_rows
from .quant_blocks import weight_buffer
from .schedule import CpuSchedule
from .sparse_mlp import check_mlp
from .top_k import kept, kth_largest_macro, ratio

# every gate activation of the table but FATReLU, whose own threshold the input methods do not calibrate (they refuse
# it: passes/calibrate.block_weights); the clamped SwiGLUs of gpt-oss / DeepSeek-V4 included
INPUT_GATE_ACTS = tuple(a for a in GATE_ACTS if a != "fatrelu")
INPUT_CRITERIA = ("product", "gate")


def check_input_sparse(d: int, n_ff: int, gate_act: str, up_act: str, dtype: str, criterion: str) -> None:
    """One clear error for an input-sparse kernel request no kernel can serve (shared with the CUDA kernel)."""
    check_mlp(d, n_ff, gate_act, up_act, dtype, INPUT_GATE_ACTS)
    if criterion not in INPUT_CRITERIA:
        raise ValueError(f"criterion must be one of {INPUT_CRITERIA}, got {criterion!r}")


def down_score(criterion: str):
    """(a, hv) -> what h_thr is compared with: act_g(g) ('gate') or h ('product')."""
    return (lambda a, hv: a) if criterion == "gate" else (lambda a, hv: hv)


def masked_h_macro(gate_act: str, up_act: str, criterion: str, family: str = "cpu"):
    """`mask(g, h, h_thr, j, M, live)`: neuron j's h for every token m, masked: h[m, j] (u on entry) becomes
    act_g(g[m, j]) * act_u(u) where |h| ('product') or |act_g(g)| ('gate') > h_thr[j], else 0; live[0] = 1 when
    some token keeps j. Shared with the CUDA kernel (`family` picks the activations' forms)."""
    act_g, act_u, zero = activation(gate_act, 0.0, family), activation(up_act, 0.0, family), T.float32(0)
    score = down_score(criterion)

    @T.macro
    def mask(g, h, h_thr, j, M, live):
        live[0] = 0
        for m in range(M):   # no branch: whether a neuron is kept is a coin toss at 50%
            a: T.let = act_g(g[m, j])
            hv: T.let = a * act_u(h[m, j])
            keep: T.let = T.abs(score(a, hv)) > h_thr[j]
            live[0] = live[0] | T.Cast("int32", keep)
            h[m, j] = T.if_then_else(keep, hv, zero)

    return mask


def ratio_h_macro(gate_act: str, up_act: str, criterion: str):
    """`ratios(g, h, h_thr, j, M)`: for top-k on h, neuron j's h unmasked into h (u on entry) and its ratio
    |score| / h_thr (`top_k.ratio`) into g, for every token."""
    act_g, act_u = activation(gate_act, 0.0, "cpu"), activation(up_act, 0.0, "cpu")
    score = down_score(criterion)

    @T.macro
    def ratios(g, h, h_thr, j, M):
        for m in range(M):
            a: T.let = act_g(g[m, j])
            hv: T.let = a * act_u(h[m, j])
            h[m, j] = hv
            g[m, j] = ratio(score(a, hv), h_thr[j])

    return ratios


class InputSteps(NamedTuple):
    """The kernel's steps as macros (the module docstring's 0-2), shared with the routed kernel (`routed_input.py`),
    which runs them per expert on its tokens at the expert's row offsets."""
    list_inputs: object   # (x, x_thr, xr, tau, M, xs, xidx, nx, row0): step 0, xidx[slot] = row0 + channel
    gate_up: object       # (t, w_gate_t, w_up_t, xidx, nx, xs, g, h, M): task t's columns of g and u
    list_kept: object     # (g, h, h_thr, tau, idx, cnt, t, M, row0): task t's h masked, its kept neurons listed
    down: object          # (t, w_down_t, idx, cnt, h, out, M): task t's output columns over every listed row


def input_steps(d: int, n_ff: int, gate_act: str, up_act: str, criterion: str, dtype: str, sched: CpuSchedule,
                x_keep: int = 0, h_keep: int = 0) -> InputSteps:
    """The steps of a [d] -> [n_ff] -> [d] input-sparse MLP on `sched` (already fitted to n_ff and d by the
    caller's `sched.fitted`); top-k where x_keep / h_keep > 0 (then `xr` and `tau` hold the ratios and each
    token's k-th ratio's bits; unused otherwise). Thresholds are read from index 0 of x_thr / h_thr, weight rows at
    `row0` (a routed expert's offset in the stacks; 0 for one block)."""
    sched_n, sched_d = sched.fitted(n_ff, dtype), sched.fitted(d, dtype)
    threads, zero = sched.threads, T.float32(0)
    mask_h = masked_h_macro(gate_act, up_act, criterion)
    reads_up = reads_input(up_act)
    # gate / up and down on the integer axpy where the schedule gives it to this kernel (module docstring)
    axpy_in, _ = axpy_macro(n_ff, dtype, sched_n, gathered=True, kernel="input")
    axpy_down, _ = axpy_macro(d, dtype, sched_d, gathered=True, kernel="input")
    zero_n, zero_d = zero_columns_macro(n_ff, sched_n, dtype), zero_columns_macro(d, sched_d, dtype)
    Rn, Rd = sched_n.rows, sched_d.rows

    def keeps_x(x, x_thr, xr, tau, m, i):   # token m keeps input channel i
        return kept(xr[m, i], tau[m, 0]) if x_keep > 0 else T.abs(x[m, i]) > x_thr[i]

    @T.macro
    def list_inputs(x, x_thr, xr, tau, M, xs, xidx, nx, row0):
        # without a branch (a kept channel is a coin toss at 50%): every channel is written to the next slot, which
        # only a kept one advances (slot <= channel: in bounds)
        live = T.alloc_buffer((1,), "int32", scope="global")
        nx[0] = 0
        for i in range(d):
            live[0] = 0
            for m in range(M):
                live[0] = live[0] | T.Cast("int32", keeps_x(x, x_thr, xr, tau, m, i))
                xs[m, nx[0]] = T.if_then_else(keeps_x(x, x_thr, xr, tau, m, i), x[m, i], zero)
            xidx[nx[0]] = row0 + i
            nx[0] = nx[0] + live[0]

    @T.macro
    def gate_up(t, w_gate_t, w_up_t, xidx, nx, xs, g, h, M):
        zero_n(t, g, M)
        zero_n(t, h, M)
        n_in: T.let = nx[0]
        for st in range((n_in + Rn - 1) // Rn):
            axpy_in(w_gate_t, xidx, 0, st * Rn, n_in, xs, 0, t, g, M)
            if reads_up:   # `unit` (a non-gated MLP): act_u ignores u, no up row is read
                axpy_in(w_up_t, xidx, 0, st * Rn, n_in, xs, 0, t, h, M)

    @T.macro
    def list_kept(g, h, h_thr, tau, idx, cnt, t, M, row0):
        # task t's neurons (the columns its axpys wrote): h masked, and the ones some token keeps listed in its slice
        j0: T.let = task_columns(t, n_ff, sched_n, dtype)[0]
        j1: T.let = task_columns(t, n_ff, sched_n, dtype)[1]
        c = T.alloc_buffer((1,), "int32", scope="global")
        live = T.alloc_buffer((1,), "int32", scope="global")
        c[0] = 0
        for jj in range(j1 - j0):
            if h_keep > 0:   # g holds the ratios
                live[0] = 0
                for m in range(M):
                    live[0] = live[0] | T.Cast("int32", kept(g[m, j0 + jj], tau[m, 1]))
                    h[m, j0 + jj] = T.if_then_else(kept(g[m, j0 + jj], tau[m, 1]), h[m, j0 + jj], zero)
            else:
                mask_h(g, h, h_thr, j0 + jj, M, live)
            # as list_inputs, no branch: slot j0 + c <= this neuron's column, so compaction never overwrites an
            # unread column; a dropped neuron's slot is the next one's
            for m in range(M):
                h[m, j0 + c[0]] = h[m, j0 + jj]
            idx[j0 + c[0]] = row0 + j0 + jj
            c[0] = c[0] + live[0]
        cnt[t] = c[0]

    @T.macro
    def down(t, w_down_t, idx, cnt, h, out, M):
        # task t owns a slice of the output columns and streams that slice of every listed row
        zero_d(t, out, M)
        for t2 in range(threads):
            s0: T.let = task_columns(t2, n_ff, sched_n, dtype)[0]
            n2: T.let = cnt[t2]
            for st in range((n2 + Rd - 1) // Rd):
                axpy_down(w_down_t, idx, s0, st * Rd, n2, h, s0, t, out, M)

    return InputSteps(list_inputs, gate_up, list_kept, down)


@cache
def input_sparse_gated_mlp(d: int, n_ff: int, *, gate_act: str = "silu", up_act: str = "identity",
                           criterion: str = "product", dtype: str = "float32", sched: CpuSchedule,
                           x_keep: int = 0, h_keep: int = 0, by_rows: int | None = None):
    """(x, w_gate_t, w_up_t, w_down_t, x_thr, h_thr, out), see the module docstring. `by_rows`: a thresholds call of
    at most this many tokens splits its work by rows (`input_channels.py`; None: `channel_tokens`, 0: never)."""
    check_input_sparse(d, n_ff, gate_act, up_act, dtype, criterion)
    if x_keep < 0 or h_keep < 0:
        raise ValueError(f"top-k counts must be >= 0 (0: thresholds), got x_keep={x_keep}, h_keep={h_keep}")
    kth_x, kth_h = kth_largest_macro(d, x_keep), kth_largest_macro(n_ff, h_keep)
    top_k = x_keep > 0 or h_keep > 0
    ratios_h = ratio_h_macro(gate_act, up_act, criterion)
    sched_n, sched_d = sched.fitted(n_ff, dtype), sched.fitted(d, dtype)
    threads = sched.threads
    steps = input_steps(d, n_ff, gate_act, up_act, criterion, dtype, sched, x_keep, h_keep)
    by_rows = checked_by_rows(by_rows, n_ff, sched)
    rows_mlp = channel_mlp_macro(channel_steps(steps, d, n_ff, up_act, dtype, sched), d, threads)
    Rd = sched_d.rows
    in_shape, wdtype = weight_buffer(d, n_ff, dtype)
    down_shape, _ = weight_buffer(n_ff, d, dtype)
    name = symbol("gmlp", "input", criterion, f"d{d}", f"f{n_ff}", gate_act.replace("_", ""), up_act, dtype,
                  sched_n.tag, f"r{Rd}", *([f"top{x_keep}x{h_keep}"] if x_keep or h_keep else []), f"br{by_rows}")

    @T.macro
    def by_columns(x, x_thr, w_gate_t, w_up_t, w_down_t, h_thr, xs, xidx, nx, idx, cnt, hist, sel, xr, tau, out, M):
        g = T.alloc_buffer((M, n_ff), "float32")
        h = T.alloc_buffer((M, n_ff), "float32")    # u, then h by neuron, then compacted to slots in each slice
        # 0) the input channels some token keeps (top-k: at or above its k-th ratio)
        if x_keep > 0:
            for m in range(M):
                for i in range(d):
                    xr[m, i] = ratio(x[m, i], x_thr[i])
                kth_x(xr, m, hist, sel)
                tau[m, 0] = sel[0]
        steps.list_inputs(x, x_thr, xr, tau, M, xs, xidx, nx, 0)
        # 1) gate / up over the listed channels' rows, each task on its slice of the n_ff columns; then h, masked,
        # and the kept neurons listed inside the slice
        for t in T.parallel(threads):
            steps.gate_up(t, w_gate_t, w_up_t, xidx, nx, xs, g, h, M)
            if h_keep > 0:   # h and its ratios now; the mask once every task's are in (below)
                r0: T.let = task_columns(t, n_ff, sched_n, dtype)[0]
                for jj in range(task_columns(t, n_ff, sched_n, dtype)[1] - r0):
                    ratios_h(g, h, h_thr, r0 + jj, M)
            else:
                steps.list_kept(g, h, h_thr, tau, idx, cnt, t, M, 0)
        if h_keep > 0:
            for m in range(M):
                kth_h(g, m, hist, sel)
                tau[m, 1] = sel[0]
            for t in T.parallel(threads):
                steps.list_kept(g, h, h_thr, tau, idx, cnt, t, M, 0)
        # 2) down: task t owns a slice of the output columns and streams that slice of every listed row
        for t in T.parallel(threads):
            steps.down(t, w_down_t, idx, cnt, h, out, M)

    @T.prim_func
    def kernel(x_h: T.handle, w_gate_t: T.Buffer(in_shape, wdtype), w_up_t: T.Buffer(in_shape, wdtype),
               w_down_t: T.Buffer(down_shape, wdtype), x_thr: T.Buffer((d,), "float32"),
               h_thr: T.Buffer((n_ff,), "float32"), out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        M = T.int64()
        x = T.match_buffer(x_h, (M, d), "float32")
        out = T.match_buffer(out_h, (M, d), "float32")
        xs = T.alloc_buffer((M, d), "float32")      # kept x values by slot
        xidx = T.alloc_buffer((d,), "int32")        # input channel of each slot
        nx = T.alloc_buffer((1,), "int32")
        idx = T.alloc_buffer((n_ff,), "int32")      # neuron of each slot (task t's slots from its slice start)
        cnt = T.alloc_buffer((threads,), "int32")
        # top-k only (one element each otherwise): the radix select's buckets and state, each token's ratios of x,
        # each token's k-th ratio's bits (x, then h)
        hist = T.alloc_buffer((256 if top_k else 1,), "int32")
        sel = T.alloc_buffer((4,), "int32")
        xr = T.alloc_buffer((M if x_keep > 0 else 1, d if x_keep > 0 else 1), "float32")
        tau = T.alloc_buffer((M if top_k else 1, 2), "int32")
        # the split by rows: each task's partial g, u and output (none under top-k)
        gp = T.alloc_buffer((1 if top_k else partial_rows(M, by_rows, threads), n_ff), "float32")
        hp = T.alloc_buffer((1 if top_k else partial_rows(M, by_rows, threads), n_ff), "float32")
        parts = T.alloc_buffer((1 if top_k else partial_rows(M, by_rows, threads), d), "float32")
        if top_k:
            by_columns(x, x_thr, w_gate_t, w_up_t, w_down_t, h_thr, xs, xidx, nx, idx, cnt, hist, sel, xr, tau, out, M)
        elif M <= by_rows:   # decoding: whole rows per task (`input_channels.py`)
            rows_mlp(x, x_thr, w_gate_t, w_up_t, w_down_t, h_thr, xs, xidx, nx, gp, hp, parts, idx, cnt, tau, out, M, 0,
                     0)
        else:
            by_columns(x, x_thr, w_gate_t, w_up_t, w_down_t, h_thr, xs, xidx, nx, idx, cnt, hist, sel, xr, tau, out, M)

    return kernel.with_attr("global_symbol", name)
