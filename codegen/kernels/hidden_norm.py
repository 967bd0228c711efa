"""A block's hidden RMS norm inside the CPU kernels that list neurons (BitNet's ffn_sub_norm, `hidden_rms_eps`):

    out = (h / sqrt(mean(h²) + eps)) · w_down_t  =  (h · w_down_t) / sqrt(Σ h² / n_ff + eps)

1 / rms is one number per token, so it commutes with the down projection: each task sums the squares of the h it
kept in the first region (a skipped neuron's h is 0 and adds nothing), and in the second region, after its axpys,
scales the output columns it owns by 1 / sqrt(Σ over the tasks' sums / n_ff + eps). No pass over all n_ff neurons,
no extra region.
"""

from __future__ import annotations

from tvm.script import tirx as T

from .axpy import task_columns
from .schedule import CpuSchedule


def hidden_norm_macros(d: int, n_ff: int, sched: CpuSchedule, down_dtype: str, eps: float):
    """(`sum_squares(h, j0, n, sq, t, M)`: sq[t, m] = Σ h[m, j0 .. j0 + n - 1]², `scale_columns(out, sq, t, M)`: task
    t's output columns (the axpy's split for `down_dtype`) times 1 / sqrt(Σ_t' sq[t', m] / n_ff + eps))."""
    threads, zero = sched.threads, T.float32(0)

    @T.macro
    def sum_squares(h, j0, n, sq, t, M):
        for m in range(M):
            sq[t, m] = zero
            for i in range(n):
                sq[t, m] = sq[t, m] + h[m, j0 + i] * h[m, j0 + i]

    @T.macro
    def scale_columns(out, sq, t, M):
        c0: T.let = task_columns(t, d, sched, down_dtype)[0]
        c1: T.let = task_columns(t, d, sched, down_dtype)[1]
        for m in range(M):
            total = T.alloc_buffer((1,), "float32", scope="global")
            total[0] = zero
            for t2 in range(threads):
                total[0] = total[0] + sq[t2, m]
            scale: T.let = T.float32(1) / T.sqrt(total[0] / T.float32(n_ff) + T.float32(eps))
            for c in range(c1 - c0):
                out[m, c0 + c] = out[m, c0 + c] * scale

    return sum_squares, scale_columns
