"""Routed mixture-of-experts kernel for CUDA GPUs: each (token, slot) runs only the expert the router chose for it.

The CPU's routed kernel (`routed_moe.py`) gathers the tokens of each expert in a serial loop over the experts, which
a GPU would run on one thread. Here the lowering first spreads each token over its K slots (x repeated K times, the
slots' experts as one list, `lower_kernels._routed_moe`); this kernel then runs, for every such virtual token v,
the gated MLP of expert e = expert[v] — weight rows e * n_ff .. (e + 1) * n_ff - 1 of the stacked experts — and the
lowering sums the K outputs of a token weighted by the router. A decoding step (M = 1) reads k experts' rows, not E.

Buffers (destination passing, after `out` the scratch the caller allocates, `scratch.py`):

    x        [V, d]          float32, V symbolic (tokens x slots)
    w_gate   [E * n_ff, d]   the experts' gate rows stacked (expert e owns rows e * n_ff ..), any weight layout
    w_up     [E * n_ff, d]   likewise
    w_down_t [E * n_ff, d]   the down projections transposed (a neuron per row), stacked; `down_dtype` its layout
          or [E * d, n_ff]   with `down_rows="outputs"` (dense mode): an output per row, as a GGUF's `ffn_down_exps`
    expert   [V]             int64 expert of each virtual token
          or [V, 1 + 2 n_ff] float32 with `thresholds` (threshold mode): each virtual token's expert id (exact in
                             float32), then that expert's neurons' gate cuts, then their cuts on h, each over the
                             slot's |routing weight| (ir/moe.py's |a|·|r| > t), the lowering's slot table
    out      [V, d]          float32, each virtual token's expert output (unweighted)
    h        [V, n_ff], part [splits, V, d]   scratch (by outputs: h only)

Three launches, as the per-block kernels (`cuda_mlp.py`): a warp per neuron j computes h[v, j] for every virtual
token (exact: the up row is read only where the gate keeps the neuron — the gate value is the same in every lane, so
the branch is warp-uniform; threshold mode likewise where |act(g_j)| is above the slot's expert's neuron j's gate cut,
and h is kept where |h| is above its cut on h),
the down launch's split-K parts read the rows of expert[v] (exact: only the positions whose h is not zero), the last
sums the parts. With the down stack by outputs the second launch is a warp per output column j, a row dot of row
expert[v] * d + j with h[v] (staged as the linear kernel stages x), and there is no third.
Biased experts (gpt-oss) keep the all-experts form.
"""

from __future__ import annotations

from functools import cache

from tvm.script import tirx as T

from ...ir.moe import down_rows_problem
from .common import activation, is_active, skipping_value
from .cuda_blocks import row_dots_launch
from .cuda_mlp import dense_body, finish, hidden_launch, mlp_parts, tokens
from .quant_blocks import weight_buffer
from .schedule import GpuSchedule
from .sparse_mlp import EXACT_GATE_ACTS, GATE_ACTS

ROUTED_SCRATCH = 2  # h [V, n_ff], part [splits, V, d]


@cache
def routed_gated_mlp(d: int, n_ff: int, experts: int, *, gate_act: str = "relu", up_act: str = "identity",
                     threshold: float = 0.0, dtype: str = "float32", down_dtype: str | None = None,
                     exact: bool = True, down_rows: str = "neurons", thresholds: bool = False, sched: GpuSchedule):
    """(x, w_gate, w_up, w_down_t, expert, out, h, part), see the module docstring. `exact`: skip the neurons whose
    gate is exactly zero (gate_act of the ReLU family): their up and down rows are not read. `thresholds` (threshold
    mode, not `exact`): `expert` is the [V, 1 + 2 n_ff] slot table, and a slot keeps neuron i where |act_gate(g_i)|
    is above its gate cut (the up and down rows of the others are not read) and then |h_i| above its cut on h (the
    down rows of the others are not read: the down launch skips h = 0). `down_rows`: how the down stack's rows run
    (ir/moe.py; "outputs": dense mode, and no `part`)."""
    if experts < 1:
        raise ValueError(f"a routed MoE needs at least one expert, got {experts}")
    if exact and thresholds:
        raise ValueError("routed experts run exact or with thresholds, not both (exact=False, thresholds=True)")
    mode = "threshold" if thresholds else "exact" if exact else "dense"
    if (problem := down_rows_problem(down_rows, mode)) is not None:
        raise ValueError(problem)
    by_outputs = down_rows == "outputs"
    skipping = exact or thresholds   # the up and down rows of the neurons a slot drops are not read

    def row(expert, v, p):   # position p of virtual token v's list: neuron p of its expert
        return T.Cast("int32", expert[v, 0] if thresholds else expert[v]) * n_ff + p

    kind = f"routed{'t' if thresholds else 'x' if exact else 'd'}{'o' if by_outputs else ''}e{experts}"
    k = mlp_parts(kind, d, n_ff, gate_act, up_act, threshold, dtype, sched, row, lambda expert, v: n_ff,
                  EXACT_GATE_ACTS if exact else GATE_ACTS, down_dtype=down_dtype, skip_zero_h=skipping)
    wshape, wdtype = weight_buffer(experts * n_ff, d, dtype)
    dshape, ddtype = (weight_buffer(experts * d, n_ff, down_dtype or dtype) if by_outputs
                      else weight_buffer(experts * n_ff, d, down_dtype or dtype))
    warp_dot, act_u, reads_up = k.warp_dot, k.act_u, k.reads_up
    gate_value = skipping_value(activation(gate_act, threshold, "cuda"))

    @T.macro
    def neuron(w_gate, w_up, j, x, xs, v, lane, s, expert):
        """s[0] = h of virtual token v's neuron j: its expert's rows (exact: the up row only where the gate keeps the
        neuron; the gate value is the same in every lane, so the branch is warp-uniform)."""
        if skipping:
            gs = T.alloc_buffer((1,), "float32", scope="local")
            warp_dot(w_gate, row(expert, v, j), x, xs, v, lane, s)
            gs[0] = gate_value(s[0])
            if thresholds:   # the slot's expert's neuron j's threshold: |a| above it kept (NaN too: it reaches the
                # output)
                gs[0] = T.if_then_else(T.Or(T.isnan(gs[0]), T.fabs(gs[0]) > expert[v, 1 + j]), gs[0], T.float32(0))
            if is_active(gs[0]):
                if reads_up:
                    warp_dot(w_up, row(expert, v, j), x, xs, v, lane, s)
                    s[0] = gs[0] * act_u(s[0])
                else:
                    s[0] = gs[0]
                if thresholds:   # the cut on h (NaN kept)
                    s[0] = T.if_then_else(T.Or(T.isnan(s[0]), T.fabs(s[0]) > expert[v, 1 + n_ff + j]), s[0],
                                          T.float32(0))
            else:
                s[0] = T.float32(0)
        else:
            k.gated_dot(w_gate, w_up, row(expert, v, j), x, xs, v, lane, s)

    V = tokens()
    if by_outputs:
        hidden, down = hidden_launch(k, n_ff, neuron), output_rows_launch(d, n_ff, down_dtype or dtype, sched)

        @T.prim_func
        def kernel_outputs(x: T.Buffer((V, d), "float32"), w_gate: T.Buffer(wshape, wdtype),
                           w_up: T.Buffer(wshape, wdtype), w_down: T.Buffer(dshape, ddtype),
                           expert: T.Buffer((V,), "int64"), out: T.Buffer((V, d), "float32"),
                           h: T.Buffer((V, n_ff), "float32")):
            hidden(x, w_gate, w_up, expert, h, V)
            down(w_down, expert, h, out, V)

        return finish(kernel_outputs, k.name, 1)

    body = dense_body(k, n_ff, neuron)   # the per-block dense kernel's launches, rows by expert[v]
    if thresholds:
        @T.prim_func
        def kernel_thresholds(x: T.Buffer((V, d), "float32"), w_gate: T.Buffer(wshape, wdtype),
                              w_up: T.Buffer(wshape, wdtype), w_down_t: T.Buffer(dshape, ddtype),
                              slots: T.Buffer((V, 1 + 2 * n_ff), "float32"), out: T.Buffer((V, d), "float32"),
                              h: T.Buffer((V, n_ff), "float32"), part: T.Buffer((k.splits, V, d), "float32")):
            body(x, w_gate, w_up, w_down_t, slots, out, h, part, V)

        return finish(kernel_thresholds, k.name, ROUTED_SCRATCH)

    @T.prim_func
    def kernel(x: T.Buffer((V, d), "float32"), w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
               w_down_t: T.Buffer(dshape, ddtype), expert: T.Buffer((V,), "int64"), out: T.Buffer((V, d), "float32"),
               h: T.Buffer((V, n_ff), "float32"), part: T.Buffer((k.splits, V, d), "float32")):
        body(x, w_gate, w_up, w_down_t, expert, out, h, part, V)

    return finish(kernel, k.name, ROUTED_SCRATCH)


def output_rows_launch(d: int, n_ff: int, down: str, sched: GpuSchedule):
    """`down(w_down, expert, h, out, V)`: out[v, j] = w_down[expert[v] * d + j] · h[v], a warp per output column j
    (the linear kernel's launch, `cuda_mlp.row_dots_launch`, its rows by the slot's expert)."""
    launch = row_dots_launch(n_ff, d, down, sched, lambda expert, v, j: T.Cast("int32", expert[v]) * d + j)

    @T.macro
    def down_launch(w_down, expert, h, out, V):
        launch(h, w_down, w_down, out, V, expert)

    return down_launch
