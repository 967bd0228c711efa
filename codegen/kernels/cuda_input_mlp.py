"""Input-sparse gated-MLP kernel for CUDA GPUs (TEAL / WINA, mode 'input'): the CPU kernel's buffers and
semantics (`input_sparse_mlp.py`, `ir/input_sparse.py`) from the blocks of `cuda_blocks.py`:

  1) a thread per input channel flags it when some token keeps it (|x[m, i]| > x_thr[i]) and writes the
     token's kept value (0 where it drops it);
  2) gate and up are row-gather axpys over the flagged rows of w_gate_t / w_up_t ([d, n_ff]: a channel's
     weights are one contiguous row, read coalesced) — the down projection's part launches with n_ff output
     columns, reading the flag mask (no compaction kernel), each into its own partial sums;
  3) a thread per neuron sums its gate and up parts (in the order the parts' own sum launch would), forms
     h = act_g(g)·act_u(u), masks it per token by |h| ('product') or |act_g(g)| ('gate') > h_thr, and flags
     neurons some token keeps; 4) down over the flagged rows, parts summed.
A token reads (1 - s_x)·(gate + up) + (1 - s_h)·down bytes. Quantized weights (q8_0 / q4_0 / q4_1) take the
same path: the down-projection blocks read a quantized row column by column (a warp reads one block).
Deterministic (no atomics); 6 launches, none of them a single block (8 before the gate and up sums moved into
the neuron launch). The scratch between the launches (flags, kept values, partial sums, g and u) are the
parameters after `out` (`scratch.py`): the caller allocates them.
"""

from __future__ import annotations

from functools import cache

from tvm.script import tirx as T

from ...errors import ActsparseError
from .common import symbol
from .cuda_blocks import by_flag, down_macros, down_splits
from .cuda_mlp import finish, tokens
from .input_sparse_mlp import check_input_sparse, masked_h_macro
from .quant_blocks import weight_buffer
from .schedule import GpuSchedule


@cache
def input_sparse_gated_mlp(d: int, n_ff: int, *, gate_act: str = "silu", up_act: str = "identity",
                           criterion: str = "product", dtype: str = "float32", sched: GpuSchedule,
                           x_keep: int = 0, h_keep: int = 0):
    """(x, w_gate_t, w_up_t, w_down_t, x_thr, h_thr, out), see the module docstring."""
    if not isinstance(sched, GpuSchedule):
        raise TypeError(f"the CUDA kernels take a GpuSchedule, got {type(sched).__name__}")
    if x_keep or h_keep:
        raise ActsparseError("the top-k (fixed count) method has no CUDA kernel yet (the CPU targets have one); "
                             "compile for CUDA with a threshold method (method='rotated-wina-greedy', 'wina-greedy', "
                             "'teal', ...)")
    check_input_sparse(d, n_ff, gate_act, up_act, dtype, criterion)
    T_ = sched.threads
    zero, mask_h = T.float32(0), masked_h_macro(gate_act, up_act, criterion, "cuda")
    split_in = down_splits(n_ff, dtype, sched, d)
    split_out = down_splits(d, dtype, sched, n_ff)
    row, count, keep = by_flag(d)  # over the flagged channels
    in_parts, _ = down_macros(n_ff, dtype, sched, row, count, split_in, keep)
    row, count, keep = by_flag(n_ff)  # over the flagged neurons
    down_parts, down_sum = down_macros(d, dtype, sched, row, count, split_out, keep)
    in_shape, wdtype = weight_buffer(d, n_ff, dtype)
    down_shape, _ = weight_buffer(n_ff, d, dtype)
    name = symbol("cuda", "gmlp", "input", criterion, f"d{d}", f"f{n_ff}", gate_act.replace("_", ""), up_act, dtype,
                  sched.tag)

    M = tokens()

    @T.prim_func
    def kernel(x: T.Buffer((M, d), "float32"), w_gate_t: T.Buffer(in_shape, wdtype),
               w_up_t: T.Buffer(in_shape, wdtype), w_down_t: T.Buffer(down_shape, wdtype),
               x_thr: T.Buffer((d,), "float32"), h_thr: T.Buffer((n_ff,), "float32"), out: T.Buffer((M, d), "float32"),
               fx: T.Buffer((d,), "int32"), xs: T.Buffer((M, d), "float32"),  # xs by channel: the kept x values
               pin: T.Buffer((split_in, M, n_ff), "float32"), pin_u: T.Buffer((split_in, M, n_ff), "float32"),
               g: T.Buffer((M, n_ff), "float32"),
               u: T.Buffer((M, n_ff), "float32"), fh: T.Buffer((n_ff,), "int32"),
               pout: T.Buffer((split_out, M, d), "float32")):
        # 1) channels some token keeps, and the kept values
        for b in T.thread_binding((d + T_ - 1) // T_, "blockIdx.x"):
            for tx in T.thread_binding(T_, "threadIdx.x"):
                live = T.alloc_buffer((1,), "int32", scope="local")
                i: T.let = b * T_ + tx
                if i < d:
                    live[0] = 0
                    for m in range(M):
                        if T.abs(x[m, i]) > x_thr[i]:
                            live[0] = 1
                            xs[m, i] = x[m, i]
                        else:
                            xs[m, i] = zero
                    fx[i] = live[0]
        # 2) gate and up over the flagged rows: partial sums only
        in_parts(w_gate_t, xs, fx, fx, pin, M)
        in_parts(w_up_t, xs, fx, fx, pin_u, M)
        # 3) g and u summed from their parts; h, masked per token; neurons some token keeps flagged
        for b in T.thread_binding((n_ff + T_ - 1) // T_, "blockIdx.x"):
            for tx in T.thread_binding(T_, "threadIdx.x"):
                live = T.alloc_buffer((1,), "int32", scope="local")
                gu = T.alloc_buffer((2,), "float32", scope="local")
                j: T.let = b * T_ + tx
                if j < n_ff:
                    for m in range(M):
                        gu[0] = pin[0, m, j]
                        gu[1] = pin_u[0, m, j]
                        for sp in range(1, split_in):
                            gu[0] = gu[0] + pin[sp, m, j]
                            gu[1] = gu[1] + pin_u[sp, m, j]
                        g[m, j] = gu[0]
                        u[m, j] = gu[1]
                    mask_h(g, u, h_thr, j, M, live)
                    fh[j] = live[0]
        # 4) down over the flagged rows
        down_parts(w_down_t, u, fh, fh, pout, M)
        down_sum(pout, out, M)

    return finish(kernel, name, 8)
