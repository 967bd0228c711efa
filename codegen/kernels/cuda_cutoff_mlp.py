"""CUDA kernels of a gate cut per token (Gemma 3n's gelu_tanh(relu(P - mean(P) - z·std(P)))), whose activated gate a
[M, n_ff] comes in computed (the graph's own ops before the kernel: see `cutoff_mlp.py`, the CPU kernel):

    cutoff_gated_mlp        the cutoff variant: the exact kernel's three launches (`cuda_mlp.flagging_body`) with the
                            gate dots replaced by reading a[m, j]; a neuron is flagged when some token has a != 0 (or
                            NaN, which must reach the output), then only its up and down rows are read
    cutoff_dense_gated_mlp  its dense twin (`actsparse bench`, passes/densify.py): the dense kernel
                            (`cuda_mlp.dense_body`) given a, every up and down row read

Buffers: (x [M, d] f32, w_gate, w_up, w_down_t [n_ff, d] in the weights' layout (fp32, fp16, quantized), a [M, n_ff]
f32, out [M, d] f32) and the scratch parameters of the kernel they are made from. w_gate is never read (the gate
projection ran before the kernel); it stays a parameter so every sparse variant takes the same weights.
"""

from __future__ import annotations

from functools import cache

from tvm.script import tirx as T

from .common import is_active
from .cuda_blocks import by_flag
from .cuda_mlp import FLAGGING_SCRATCH, dense_body, dense_mlp, finish, flagging_body, mlp_parts, tokens
from .quant_blocks import weight_buffer
from .schedule import GpuSchedule


@cache
def cutoff_gated_mlp(d: int, n_ff: int, *, up_act: str = "identity", dtype: str = "float32", sched: GpuSchedule):
    """A gate cut per token (Gemma 3n, `cutoff_mlp.py`) given activated (x, w_gate, w_up, w_down_t, a, out): the exact
    kernel's three launches with its gate dots replaced by reading a[m, j] (the same word in every lane:
    warp-uniform); a neuron some token has a != 0 for (or NaN) is flagged, its up rows read, h = a * act_u(up), and
    the down launch reads the flagged rows. w_gate is not read (the gate projection ran before the kernel)."""
    row, count, keep = by_flag(n_ff)
    k = mlp_parts("cutoff", d, n_ff, "identity", up_act, 0.0, dtype, sched, row, count, keep=keep, tag="given")
    wshape, wdtype = weight_buffer(n_ff, d, dtype)

    @T.macro
    def decide(x, xs, w_gate, w_up, a, cutoff, j, m, lane, s, live):
        s[0] = a[m, j]
        if is_active(s[0]):
            live[0] = 1

    body = flagging_body(k, d, n_ff, decide, up_after=True, decide_reads_x=False)

    M = tokens()

    @T.prim_func
    def kernel(x: T.Buffer((M, d), "float32"), w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
               w_down_t: T.Buffer(wshape, wdtype), a: T.Buffer((M, n_ff), "float32"),
               out: T.Buffer((M, d), "float32"), h: T.Buffer((M, n_ff), "float32"), flag: T.Buffer((n_ff,), "int32"),
               part: T.Buffer((k.splits, M, d), "float32")):
        body(x, w_gate, w_up, w_down_t, a, a, out, h, flag, part, M)

    return finish(kernel, k.name, FLAGGING_SCRATCH)


@cache
def cutoff_dense_gated_mlp(d: int, n_ff: int, *, up_act: str = "identity", dtype: str = "float32",
                           sched: GpuSchedule):
    """The cutoff kernel's dense twin (x, w_gate, w_up, w_down_t, a, out): the dense kernel with its gate dots
    replaced by reading the given gate a, so every up and down row is read (what `actsparse bench` compares with)."""
    k = dense_mlp("cutoffdense", d, n_ff, "identity", up_act, 0.0, dtype, sched, tag="given")
    wshape, wdtype = weight_buffer(n_ff, d, dtype)

    @T.macro
    def neuron(w_gate, w_up, j, x, xs, m, lane, s, a):
        k.warp_dot(w_up, j, x, xs, m, lane, s)
        s[0] = a[m, j] * k.act_u(s[0])

    body = dense_body(k, n_ff, neuron)
    M = tokens()

    @T.prim_func
    def kernel(x: T.Buffer((M, d), "float32"), w_gate: T.Buffer(wshape, wdtype), w_up: T.Buffer(wshape, wdtype),
               w_down_t: T.Buffer(wshape, wdtype), a: T.Buffer((M, n_ff), "float32"),
               out: T.Buffer((M, d), "float32"), h: T.Buffer((M, n_ff), "float32"),
               part: T.Buffer((k.splits, M, d), "float32")):
        body(x, w_gate, w_up, w_down_t, a, out, h, part, M)

    return finish(kernel, k.name, 2)
