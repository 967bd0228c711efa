"""The input-sparse kernels' steps with the work split over the tasks by weight rows ("channels") instead of by
columns: the split both input kernels (`input_sparse_mlp.py`, `routed_input.py`) take while a call's tokens' partial
sums fit the L2 (`channel_tokens`), i.e. when decoding.

Split by columns, each task streams its slice of every listed row: a gate / up row of n_ff values (a routed expert's
768: 1.5 KB of fp32, 216 bytes of q4_0 per task at 2 tasks) or a down row of d. Such short runs, one per row, keep a
core from streaming. Split by rows, task t reads whole rows (session 42, Zen 3, 2 threads, 30-70% skipped: 0.70-0.91x
the column split's time at SmolLM2's and Mistral-7B's dims, q4_0 and q8_0, but for q8_0 at 70% at Mistral's, 1.02x;
BENCHMARKS.md):

  1) its share of the listed input channels (whole steps of `rows`, contiguous in the list) into its own partial
     g, u: view t of g, h [threads * M, n_ff];
  2) after a barrier, the partials of its column slice summed into view 0, h masked and its kept neurons listed
     (as by columns), then those neurons' whole down rows into its own partial output: view t of out
     [threads * M, d]; the caller sums the views.

Same steps otherwise (the same axpys on a one-task schedule, the same masks, thresholds only: top-k selects over
whole rows of h and keeps the columns split). The integer axpy rounds its coefficients per step, and a step's rows
differ between the two splits, so the two agree within that rounding, not bit for bit.
"""

from __future__ import annotations

from dataclasses import replace

from tvm.script import tirx as T

from ...ir.activations import reads_input
from .axpy import axpy_macro, task_columns, zero_columns_macro
from .schedule import CpuSchedule

# the L2 a kernel assumes where the target's table gives none
DEFAULT_L2 = 256 << 10


def channel_tokens(n_ff: int, sched: CpuSchedule) -> int:
    """The most tokens a call splits by rows: while one task's partial g and u (2 * M * n_ff floats) take at most half
    its L2 (beyond, every step's axpys would sweep partials out of the L2, where the column split's slices stay); at
    least 1, so decoding always does."""
    return max(1, (sched.l2_bytes or DEFAULT_L2) // 2 // (2 * 4 * n_ff))


def checked_by_rows(by_rows: int | None, n_ff: int, sched: CpuSchedule) -> int:
    """A kernel's `by_rows` argument as the bound it builds with: None -> `channel_tokens`; one clear error for a
    negative or non-integer bound (0: never split by rows)."""
    if by_rows is None:
        return channel_tokens(n_ff, sched)
    if isinstance(by_rows, bool) or not isinstance(by_rows, int) or by_rows < 0:
        raise ValueError(f"by_rows must be None (the L2's bound), 0 (never split by rows) or a token count > 0, "
                         f"got {by_rows!r}")
    return by_rows


def channel_steps(base, d: int, n_ff: int, up_act: str, dtype: str, sched: CpuSchedule):
    """`base` (the kernel's `InputSteps` by columns, thresholds) with gate_up, list_kept and down split by rows (the
    module docstring; list_kept sums the partials, then runs base's). gate_up and list_kept need a barrier between
    them (separate parallel loops); list_kept and down run in one."""
    threads = sched.threads
    whole = replace(sched, threads=1)
    sched_n, sched_n1, sched_d1 = sched.fitted(n_ff, dtype), whole.fitted(n_ff, dtype), whole.fitted(d, dtype)
    reads_up = reads_input(up_act)
    axpy_in, _ = axpy_macro(n_ff, dtype, sched_n1, gathered=True, kernel="input")
    axpy_down, _ = axpy_macro(d, dtype, sched_d1, gathered=True, kernel="input")
    zero_n, zero_d = zero_columns_macro(n_ff, sched_n1, dtype), zero_columns_macro(d, sched_d1, dtype)
    Rn, Rd = sched_n1.rows, sched_d1.rows

    @T.macro
    def gate_up(t, w_gate_t, w_up_t, xidx, nx, xs, g, h, M):
        gt = T.decl_buffer((M, n_ff), "float32", data=g.data, elem_offset=t * M * n_ff)
        ht = T.decl_buffer((M, n_ff), "float32", data=h.data, elem_offset=t * M * n_ff)
        zero_n(0, gt, M)
        zero_n(0, ht, M)
        n_in: T.let = nx[0]
        per: T.let = ((n_in + threads - 1) // threads + Rn - 1) // Rn * Rn   # whole steps per task
        s0: T.let = T.min(t * per, n_in)
        s1: T.let = T.min(s0 + per, n_in)
        for st in range((s1 - s0 + Rn - 1) // Rn):
            axpy_in(w_gate_t, xidx, 0, s0 + st * Rn, s1, xs, 0, 0, gt, M)
            if reads_up:   # `unit` (a non-gated MLP): no up row is read
                axpy_in(w_up_t, xidx, 0, s0 + st * Rn, s1, xs, 0, 0, ht, M)

    @T.macro
    def list_kept(g, h, h_thr, tau, idx, cnt, t, M, row0):
        j0: T.let = task_columns(t, n_ff, sched_n, dtype)[0]
        j1: T.let = task_columns(t, n_ff, sched_n, dtype)[1]
        for m in range(M):   # the task's columns of every partial, summed into view 0
            for t2 in range(1, threads):
                for jj in range(j1 - j0):
                    g[m, j0 + jj] = g[m, j0 + jj] + g[t2 * M + m, j0 + jj]
                    h[m, j0 + jj] = h[m, j0 + jj] + h[t2 * M + m, j0 + jj]
        base.list_kept(g, h, h_thr, tau, idx, cnt, t, M, row0)   # then masked and listed as by columns

    @T.macro
    def down(t, w_down_t, idx, cnt, h, out, M):
        ot = T.decl_buffer((M, d), "float32", data=out.data, elem_offset=t * M * d)
        zero_d(0, ot, M)
        s0: T.let = task_columns(t, n_ff, sched_n, dtype)[0]
        for st in range((cnt[t] + Rd - 1) // Rd):
            axpy_down(w_down_t, idx, s0, st * Rd, cnt[t], h, s0, 0, ot, M)

    return base._replace(gate_up=gate_up, list_kept=list_kept, down=down)


def partial_rows(M, by_rows: int, threads: int):
    """Rows of the partial buffers (g, h: [rows, n_ff], parts: [rows, d]) of a kernel whose calls of up to `by_rows`
    tokens split by rows, M its whole call's tokens: allocated once at the top (a buffer sized by a variable bound
    inside the body may not be)."""
    return threads * T.min(M, T.int64(by_rows))


def channel_mlp_macro(steps, d: int, threads: int):
    """`mlp(x, x_thr, w_gate_t, w_up_t, w_down_t, h_thr, xs, xidx, nx, g, h, parts, idx, cnt, tau, out, M, x_row0,
    h_row0)`: one input-sparse MLP on M tokens split by rows (`steps` from `channel_steps`; g, h, parts of at least
    `threads` * M rows, `partial_rows`), its output summed into out [M, d] (overwritten). x_row0 / h_row0: the weight
    stacks' row offsets (a routed expert's; 0 for one block)."""

    @T.macro
    def mlp(x, x_thr, w_gate_t, w_up_t, w_down_t, h_thr, xs, xidx, nx, g, h, parts, idx, cnt, tau, out, M, x_row0,
            h_row0):
        steps.list_inputs(x, x_thr, x, tau, M, xs, xidx, nx, x_row0)
        for t in T.parallel(threads):
            steps.gate_up(t, w_gate_t, w_up_t, xidx, nx, xs, g, h, M)
        for t in T.parallel(threads):
            steps.list_kept(g, h, h_thr, tau, idx, cnt, t, M, h_row0)
            steps.down(t, w_down_t, idx, cnt, h, parts, M)
        for m in range(M):
            for c in T.vectorized(d):
                out[m, c] = parts[m, c]
            for t in range(1, threads):
                for c in T.vectorized(d):
                    out[m, c] = out[m, c] + parts[t * M + m, c]

    return mlp
