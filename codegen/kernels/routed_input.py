"""Routed mixture-of-experts kernel for CPUs in input mode: each expert runs TEAL / WINA input sparsity on the tokens
routed to it (ir/moe.py's `routed_moe{mode=input}`).

Buffers (destination passing):

    x        [M, d]          float32: what the experts read (a rotated-* method's x·Q, turned once for the layer)
    w_gate_t [E * d, n_ff]   each expert's gate projection transposed, stacked: expert e's input channel i is row
    w_up_t   [E * d, n_ff]   e * d + i (one contiguous row per skipped channel); float or a quantized layout
    w_down_t [E * n_ff, d]   the down projections transposed (a neuron per row), stacked
    route_w  [M, K]          float32 routing weights of each token's K slots
    route_i  [M, K]          int64 expert of each slot
    x_thr    [E * d]         float32 each expert's input channels' thresholds
    h_thr    [E * n_ff]      float32 each expert's neurons' thresholds
    out      [M, d]          float32

For each expert e in turn the tokens routed to it are gathered (`routed_moe.gather_macro`; an expert no token chose
reads nothing) and run through the input-sparse kernel's steps (`input_sparse_mlp.input_steps`) at the expert's row
offsets: the channels some gathered token keeps (|x_i| > x_thr[e·d + i]) are listed, only their rows of the gate and
up stacks are read (a row-axpy each), h is masked (|h_j| or |act(g_j)| > h_thr[e·n + j]) and only the kept neurons'
down rows are read; the expert's output rows are added to `out` scaled by the tokens' routing weights. An expert's
tokens up to `by_rows` (decoding) run the steps split by rows (`input_channels.py`: each task whole rows of n_ff, where
a slice of each was 216 bytes of q4_0 per task at n_ff 768 and 2 tasks). A token so
reads (1 - s_x)·(gate + up) + (1 - s_h)·down of each of its k experts. The steps read the expert's thresholds in
place, through views of x_thr / h_thr at its offsets (they read thresholds from index 0).
"""

from __future__ import annotations

from functools import cache

from tvm.script import tirx as T

from .input_channels import channel_mlp_macro, channel_steps, checked_by_rows, partial_rows
from .input_sparse_mlp import check_input_sparse, input_steps
from .quant_blocks import weight_buffer
from .routed_moe import gather_macro, output_macros
from .schedule import CpuSchedule
from .sparse_mlp import mlp_symbol


@cache
def routed_input_moe(d: int, n_ff: int, experts: int, *, gate_act: str = "silu", up_act: str = "identity",
                     criterion: str = "product", dtype: str = "float32", sched: CpuSchedule,
                     by_rows: int | None = None):
    """(x, w_gate_t, w_up_t, w_down_t, route_w, route_i, x_thr, h_thr, out), see the module docstring. `by_rows`: an
    expert with at most this many tokens splits its work by rows (`input_channels.py`; None: `channel_tokens`, 0:
    never)."""
    check_input_sparse(d, n_ff, gate_act, up_act, dtype, criterion)
    if experts < 1:
        raise ValueError(f"a routed MoE needs at least one expert, got {experts}")
    threads = sched.threads
    steps = input_steps(d, n_ff, gate_act, up_act, criterion, dtype, sched)
    by_rows = checked_by_rows(by_rows, n_ff, sched)
    rows_mlp = channel_mlp_macro(channel_steps(steps, d, n_ff, up_act, dtype, sched), d, threads)
    gather = gather_macro(d)
    zero_rows, add_rows = output_macros(d)
    in_shape, wdtype = weight_buffer(experts * d, n_ff, dtype)
    down_shape, _ = weight_buffer(experts * n_ff, d, dtype)

    @T.prim_func
    def kernel(x_h: T.handle, w_gate_t: T.Buffer(in_shape, wdtype), w_up_t: T.Buffer(in_shape, wdtype),
               w_down_t: T.Buffer(down_shape, wdtype), rw_h: T.handle, ri_h: T.handle,
               x_thr: T.Buffer((experts * d,), "float32"), h_thr: T.Buffer((experts * n_ff,), "float32"),
               out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        M = T.int64()
        K = T.int64()
        x = T.match_buffer(x_h, (M, d), "float32")
        route_w = T.match_buffer(rw_h, (M, K), "float32")
        route_i = T.match_buffer(ri_h, (M, K), "int64")
        out = T.match_buffer(out_h, (M, d), "float32")
        xg = T.alloc_buffer((M, d), "float32")     # the tokens routed to the current expert, gathered
        og = T.alloc_buffer((M, d), "float32")     # their outputs
        tok = T.alloc_buffer((M,), "int32")
        wt = T.alloc_buffer((M,), "float32")
        nt = T.alloc_buffer((1,), "int32")
        xs = T.alloc_buffer((M, d), "float32")     # kept x values by slot
        xidx = T.alloc_buffer((d,), "int32")       # stack row of each slot's channel
        nx = T.alloc_buffer((1,), "int32")
        g = T.alloc_buffer((M, n_ff), "float32")
        h = T.alloc_buffer((M, n_ff), "float32")
        idx = T.alloc_buffer((n_ff,), "int32")     # stack row of each slot's neuron
        cnt = T.alloc_buffer((threads,), "int32")
        unused = T.alloc_buffer((1, 2), "int32")   # the steps' top-k state (thresholds here)
        gp = T.alloc_buffer((partial_rows(M, by_rows, threads), n_ff), "float32")   # split by rows: each task's
        hp = T.alloc_buffer((partial_rows(M, by_rows, threads), n_ff), "float32")   # partial g, u and output
        parts = T.alloc_buffer((partial_rows(M, by_rows, threads), d), "float32")
        zero_rows(out, M)
        for e in range(experts):
            gather(e, M, K, route_i, route_w, x, xg, tok, wt, nt)
            Mx: T.let = T.Cast("int64", nt[0])
            if Mx > 0:   # no token chose expert e: none of its rows is read
                xt = T.decl_buffer((d,), "float32", data=x_thr.data, elem_offset=e * d)   # the expert's thresholds
                ht = T.decl_buffer((n_ff,), "float32", data=h_thr.data, elem_offset=e * n_ff)
                if Mx <= by_rows:
                    rows_mlp(xg, xt, w_gate_t, w_up_t, w_down_t, ht, xs, xidx, nx, gp, hp, parts, idx, cnt, unused, og,
                             Mx, e * d, e * n_ff)
                else:
                    steps.list_inputs(xg, xt, xg, unused, Mx, xs, xidx, nx, e * d)
                    for t in T.parallel(threads):
                        steps.gate_up(t, w_gate_t, w_up_t, xidx, nx, xs, g, h, Mx)
                        steps.list_kept(g, h, ht, unused, idx, cnt, t, Mx, e * n_ff)
                    for t in T.parallel(threads):
                        steps.down(t, w_down_t, idx, cnt, h, og, Mx)
                add_rows(Mx, tok, wt, og, out, og, e)   # (no down bias: og stands in for it, unread)

    name = mlp_symbol(f"routedi{criterion[0]}b{by_rows}e{experts}", d, n_ff, gate_act, up_act, 0.0, dtype, sched, dtype)
    return kernel.with_attr("global_symbol", name)
