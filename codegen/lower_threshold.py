"""Lowering of `sparse_gated_mlp{mode='threshold'}` to the threshold kernel (`kernels/threshold_mlp.py`).

    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t){mode='threshold', threshold=t, criterion=c}
        -> reshape(call_tir(gmlp_thr_<c>_d_n_<acts>_t, [x2d, Wg, Wu, Wd.t]), [..., d_out])

The kernel is the target's (`kernels.kernel('threshold', ...)`: CPU or CUDA family by the schedule type).

`lower_kernels._sparse_gated_mlp` dispatches here on the node's mode. TEAL's input mask is not part of the op
(it is `where(|x| > t_x, x, 0)` in front of it, lowered as ordinary Relax ops).
"""

from __future__ import annotations

from .lower import kernel_dtype


def lower_threshold(ctx, node, args):
    from .kernels import kernel as target_kernel
    from .lower_kernels import R, _emit_call, _flatten

    a = node.attrs
    x_node, w_gate = node.inputs[0], node.inputs[1]
    n_ff, d = w_gate.shape
    d_out = node.inputs[3].shape[1]
    x2d, lead, tokens = _flatten(ctx, x_node.type, args[0])
    kernel = target_kernel("threshold", d, n_ff, gate_act=a["gate_act"], up_act=a.get("up_act", "identity"),
                           threshold=a.get("threshold", 0.0), criterion=a.get("criterion", "gate"),
                           dtype=kernel_dtype(w_gate), sched=ctx.target.schedule())
    out = _emit_call(ctx, kernel, [x2d, *args[1:]], tokens, d_out, node.dtype)
    return R.reshape(out, [*lead, d_out])
