"""Routed mixture-of-experts kernel for CPUs: only the experts a token is routed to run (ir/moe.py's `routed_moe`).

Buffers (destination passing, as `relax.call_tir` wants):

    x        [M, d]          float32, M symbolic (decode M = 1, prefill M > 1)
    w_gate   [E * n_ff, d]   the experts' gate rows stacked: expert e owns rows e * n_ff .. (e + 1) * n_ff - 1
    w_up     [E * n_ff, d]   likewise
    w_down_t [E * n_ff, d]   the down projections transposed (one neuron per row), stacked; in a layout of its
                             own where `down_dtype` says (q8_0 beside a GGUF's 4-bit gate / up rows)
          or [E * d, n_ff]   with `down_rows="outputs"` (dense mode): the down projections as stored, an output per
                             row (a GGUF's `ffn_down_exps`, its blocks running along n_ff)
    route_w  [M, K]          float32 routing weights of each token's K slots
    route_i  [M, K]          int64 expert of each slot (the router's top-k indices)
    b_gate, b_up [E * n_ff], b_down [E, d]   float32 biases (gpt-oss's experts; dense mode), or, unbiased,
                             the empty [0], [0], [0, d] of `absent_biases`: one parameter list either way
    thr      [2, E * n_ff]   float32 each expert neuron's cuts (on the gate, on h), stacked as the rows, only with
                             `thresholds` (threshold mode)
    out      [M, d]          float32

For each expert e in turn: the tokens routed to e are gathered (with their summed routing weight); an expert no
token chose is skipped before any of its rows is read, so a decoding step (M = 1) reads k experts' weights, not E.
The gathered tokens then run the expert's gated MLP with the bodies of `sparse_mlp.py` at a row offset — exact mode
lists the neurons some gathered token activates and reads only their up and down rows, threshold mode likewise with
each token's gate values first dropped where |act(g_i)|·|r_e| <= thr[0, e * n_ff + i] (the CATS criterion, a
threshold per neuron, on the layer's output scale: r_e the token's routing weight to e) and, once the kept neurons' up
rows are read, h_i where |h_i|·|r_e| <= thr[1, e * n_ff + i] (their down rows unread), dense mode reads every row — and
the expert's output rows (plus its down bias) are added to `out`, scaled by the tokens' routing weights. Same macros,
same schedule, same float32 accumulation as the per-block kernels; where the host's int8 dot serves the weights' layout,
x is quantized once to 8-bit blocks (`common.x_operand`) and each expert's tokens are gathered as those bytes, so the
row dots run in integers as the per-block kernels' do (a synthetic Qwen3-MoE GGUF, 4-bit: 132 -> 201 decode tokens/s on
AVX512-VNNI, BENCHMARKS.md session 33), and the down projection takes the integer axpy where the target lists "routed"
(`Target.int8_axpy_kernels`). With the down stack by outputs, a dense expert's h is computed first (every neuron) and
then its d outputs are row dots over h — h quantized to 8-bit blocks where the host's int8 dot serves the down layout,
as x for the gate and up rows — so a MoE GGUF's 4-bit `ffn_down_exps` is read as the file stores it (ir/moe.py's
`down_rows`).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from tvm.script import tirx as T

from ...ir.activations import reads_input
from ...ir.moe import down_rows_problem
from .common import GATE_ACTS, activation, dots_macro, skipping_value, x_operand
from .quant_blocks import weight_buffer
from .schedule import CpuSchedule
from .sparse_mlp import EXACT_GATE_ACTS, check_mlp, compacting_body, dense_body, hidden_body, mlp_symbol


@cache
def routed_moe(d: int, n_ff: int, experts: int, *, gate_act: str = "relu", up_act: str = "identity",
               threshold: float = 0.0, dtype: str = "float32", down_dtype: str | None = None, exact: bool = True,
               bias: bool = False, down_rows: str = "neurons", thresholds: bool = False, sched: CpuSchedule):
    """(x, w_gate, w_up, w_down_t, route_w, route_i, b_gate, b_up, b_down[, thr], out), see the module docstring.
    `exact`: skip the neurons whose gate is exactly zero (gate_act of the ReLU family); otherwise every row of a
    routed expert is read. `thresholds` (threshold mode; any gate activation, not `exact`): thr[2, E * n_ff] is read and
    a token keeps neuron i of expert e only where |act_gate(g_i)|·|r_e| > thr[0, e * n_ff + i] (r_e its routing weight;
    the listed neurons' up rows are read) and |h_i|·|r_e| > thr[1, e * n_ff + i] (their down rows are read). `bias`: the
    biases are read (dense mode only); else they are `absent_biases(d)`. `down_dtype`: w_down_t's layout where it is not
    `dtype`'s. `down_rows`: how the down stack's rows run."""
    check_mlp(d, n_ff, gate_act, up_act, dtype, EXACT_GATE_ACTS if exact else GATE_ACTS, down_dtype)
    if experts < 1:
        raise ValueError(f"a routed MoE needs at least one expert, got {experts}")
    if bias and (exact or thresholds):
        raise ValueError("routed experts with biases run dense (exact=False): a gate bias moves the gate's zero")
    if exact and thresholds:
        raise ValueError("routed experts run exact or with thresholds, not both (exact=False, thresholds=True)")
    mode = "threshold" if thresholds else "exact" if exact else "dense"
    if (problem := down_rows_problem(down_rows, mode)) is not None:
        raise ValueError(problem)
    compact = exact or thresholds   # the compacting body: only listed neurons' up and down rows
    down = down_dtype or dtype
    sched = sched.fitted(d, dtype, down)
    act_g, act_u = activation(gate_act, threshold), activation(up_act)
    # an expert's gated MLP: sparse_mlp's regions at the expert's row offset (exact: idx lists absolute rows)
    reads_up = reads_input(up_act)
    # x8: x quantized once to 8-bit blocks, each expert's tokens gathered as those bytes, for the integer row dots
    x8, x8_bytes, prep_x = x_operand(d, dtype, sched)
    xcols, xdtype = (x8_bytes, "uint8") if x8 else (d, "float32")
    compacting = compacting_body(d, n_ff, dtype, sched, gate_value=skipping_value(act_g), act_u=act_u, x8=x8,
                                 kernel="routed", reads_up=reads_up, down_dtype=down,
                                 masked=thresholds) if compact else None
    by_outputs = down_rows == "outputs"
    dense = None if compact or by_outputs else dense_body(d, n_ff, dtype, sched, act_g=act_g, act_u=act_u, x8=x8,
                                                        kernel="routed", biased=bias, reads_up=reads_up,
                                                        down_dtype=down)
    hidden = hidden_body(d, n_ff, dtype, sched, act_g=act_g, act_u=act_u, x8=x8, biased=bias,
                         reads_up=reads_up) if by_outputs else None
    h8, h8_bytes, down_outputs = output_rows_down(d, n_ff, down, sched) if by_outputs else (False, 0, None)
    threads = sched.threads
    gather = gather_macro(xcols)
    zero_rows, add_rows = output_macros(d, bias)
    wshape, wdtype = weight_buffer(experts * n_ff, d, dtype)
    dshape, ddtype = weight_buffer(experts * d, n_ff, down) if by_outputs else weight_buffer(experts * n_ff, d, down)

    @T.macro
    def expert_mlp(xg, Mx, e, w_gate, w_up, w_down_t, g, h, hb, idx, cnt, og, b_gate, b_up, thr, wt):
        if thresholds:
            compacting(xg, Mx, e * n_ff, w_gate, w_up, w_down_t, g, h, idx, cnt, og, thr, wt)
        elif exact:
            compacting(xg, Mx, e * n_ff, w_gate, w_up, w_down_t, g, h, idx, cnt, og)
        elif by_outputs:
            hidden(xg, Mx, e * n_ff, w_gate, w_up, g, h, b_gate, b_up)
            down_outputs(h, hb, Mx, e * d, w_down_t, og)
        else:
            dense(xg, Mx, e * n_ff, w_gate, w_up, w_down_t, g, h, og, b_gate, b_up)

    @T.macro
    def routed(x_h, w_gate, w_up, w_down_t, rw_h, ri_h, out_h, b_gate, b_up, b_down, thr):
        M = T.int64()
        K = T.int64()
        x = T.match_buffer(x_h, (M, d), "float32")
        route_w = T.match_buffer(rw_h, (M, K), "float32")
        route_i = T.match_buffer(ri_h, (M, K), "int64")
        out = T.match_buffer(out_h, (M, d), "float32")
        xg = T.alloc_buffer((M, xcols), xdtype)  # the tokens routed to the current expert, gathered
        og = T.alloc_buffer((M, d), "float32")  # their outputs
        tok = T.alloc_buffer((M,), "int32")
        wt = T.alloc_buffer((M,), "float32")
        g = T.alloc_buffer((M, n_ff), "float32")
        h = T.alloc_buffer((M, n_ff), "float32")
        if h8:  # h's 8-bit blocks (the down stack by outputs on the int8 dot)
            hb = T.alloc_buffer((M, h8_bytes), "uint8")
        else:
            hb = h
        idx = T.alloc_buffer((n_ff,), "int32")
        cnt = T.alloc_buffer((threads,), "int32")
        nt = T.alloc_buffer((1,), "int32")
        if x8:
            xd = T.alloc_buffer((M, x8_bytes), "uint8")
            prep_x(x, xd, M)
        else:
            xd = T.decl_buffer((M, d), "float32", data=x.data)
        zero_rows(out, M)
        for e in range(experts):
            gather(e, M, K, route_i, route_w, xd, xg, tok, wt, nt)
            Mx: T.let = T.Cast("int64", nt[0])
            if Mx > 0:  # no token chose expert e: none of its rows is read
                expert_mlp(xg, Mx, e, w_gate, w_up, w_down_t, g, h, hb, idx, cnt, og, b_gate, b_up, thr, wt)
                add_rows(Mx, tok, wt, og, out, b_down, e)

    bias_rows, down_rows = (experts * n_ff, experts) if bias else (0, 0)  # unbiased: empty, never read

    if thresholds:
        @T.prim_func
        def kernel(x_h: T.handle, w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
                   w_down_t: T.Buffer(dshape, ddtype), rw_h: T.handle, ri_h: T.handle,
                   b_gate: T.Buffer((0,), "float32"), b_up: T.Buffer((0,), "float32"),
                   b_down: T.Buffer((0, d), "float32"), thr: T.Buffer((2, experts * n_ff), "float32"),
                   out_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            routed(x_h, w_gate, w_up, w_down_t, rw_h, ri_h, out_h, b_gate, b_up, b_down, thr)
    else:
        @T.prim_func
        def kernel(x_h: T.handle, w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
                   w_down_t: T.Buffer(dshape, ddtype), rw_h: T.handle, ri_h: T.handle,
                   b_gate: T.Buffer((bias_rows,), "float32"), b_up: T.Buffer((bias_rows,), "float32"),
                   b_down: T.Buffer((down_rows, d), "float32"), out_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            routed(x_h, w_gate, w_up, w_down_t, rw_h, ri_h, out_h, b_gate, b_up, b_down, None)

    name = mlp_symbol("routed" + ("t" if thresholds else "x" if exact else "d") + ("b" if bias else "")
                      + ("o" if by_outputs else "")
                      + f"e{experts}", d, n_ff, gate_act, up_act, threshold, dtype, sched, down)
    return kernel.with_attr("global_symbol", name)


def gather_macro(cols: int):
    """`gather(e, M, K, route_i, route_w, x, xg, tok, wt, nt)`: the tokens routed to expert e: nt[0] of them, token
    tok[i]'s row of x [M, cols] copied to xg[i] and its summed routing weight to e in wt[i]."""
    zero = T.float32(0)

    @T.macro
    def gather(e, M, K, route_i, route_w, x, xg, tok, wt, nt):
        nt[0] = 0
        wsum = T.alloc_buffer((1,), "float32", scope="global")
        hit = T.alloc_buffer((1,), "int32", scope="global")
        for m in range(M):
            wsum[0] = zero
            hit[0] = 0
            for s in range(K):
                if route_i[m, s] == T.int64(e):
                    wsum[0] = wsum[0] + route_w[m, s]
                    hit[0] = 1
            if hit[0] != 0:
                tok[nt[0]] = T.Cast("int32", m)
                wt[nt[0]] = wsum[0]
                for c in T.vectorized(cols):
                    xg[nt[0], c] = x[m, c]
                nt[0] = nt[0] + 1

    return gather


def output_macros(d: int, bias: bool = False):
    """(`zero_rows(out, M)`, `add_rows(Mx, tok, wt, og, out, b_down, e)`): out [M, d] zeroed; an expert's output
    rows og[i] (plus its down bias b_down[e] where `bias`) added to out[tok[i]], scaled by wt[i]."""
    zero = T.float32(0)

    @T.macro
    def zero_rows(out, M):
        for m in range(M):
            for c in T.vectorized(d):
                out[m, c] = zero

    @T.macro
    def add_rows(Mx, tok, wt, og, out, b_down, e):
        for i in range(Mx):
            for c in T.vectorized(d):
                if bias:
                    out[tok[i], c] = out[tok[i], c] + wt[i] * (og[i, c] + b_down[e, c])
                else:
                    out[tok[i], c] = out[tok[i], c] + wt[i] * og[i, c]

    return zero_rows, add_rows


def output_rows_down(d: int, n_ff: int, down: str, sched: CpuSchedule):
    """(h8, nbytes, `down(h, hb, M, row0, w_down, out)`): out[m, :d] = w_down[row0 : row0 + d] · h[m] for m < M,
    a row dot per output over the n_ff values of h, the d rows split over the tasks (as `linear.py`). With h8 (the
    host's int8 dot serves `down` rows) h is first quantized to 8-bit blocks in hb [M, nbytes] (as x for the gate
    and up rows) and the dots run in integers."""
    dsched = sched.fitted(n_ff, down)
    h8, h8_bytes, prep_h = x_operand(n_ff, down, dsched)
    dots, _ = dots_macro(n_ff, down, dsched, gathered=False, x8=h8)
    threads, R = dsched.threads, dsched.rows
    nper = (d + threads - 1) // threads

    @T.macro
    def down_rows(h, hb, M, row0, w_down, out):
        if h8:
            prep_h(h, hb, M)
        for t in T.parallel(threads):
            j0: T.let = t * nper
            nj: T.let = T.max(T.min(nper, d - j0), 0)
            for st in range((nj + R - 1) // R):
                if h8:
                    dots(w_down, hb, M, w_down, row0 + j0, st * R, nj, out, j0)
                else:
                    dots(w_down, h, M, w_down, row0 + j0, st * R, nj, out, j0)

    return h8, h8_bytes, down_rows


def absent_biases(d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """b_gate, b_up, b_down of an unbiased kernel: empty arrays (one calling convention; nothing reads them)."""
    return np.zeros((0,), np.float32), np.zeros((0,), np.float32), np.zeros((0, d), np.float32)

