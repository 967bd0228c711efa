"""Lowering of `sparse_gated_mlp{mode='threshold'}` to the threshold kernel (`kernels/threshold_mlp.py`).

    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t){mode='threshold', threshold=t, criterion=c}
        -> reshape(call_tir(gmlp_thr_<c>_d_n_<acts>_t, [x2d, Wg, Wu, Wd.t]), [..., d_out])

The kernel is the target's (`kernels.kernel('threshold', ...)`: CPU or CUDA family by the schedule type).

    sparse_gated_mlp(x, @Wg.t, @Wu.t, @Wd.t, @x_thr, @h_thr){mode='input', criterion=c}
        -> reshape(call_tir(gmlp_input_<c>_d_n_<acts>, [x2d, Wg.t, Wu.t, Wd.t, x_thr, h_thr]), [..., d_out])

`lower_kernels._sparse_gated_mlp` dispatches here on the node's mode.
"""

from __future__ import annotations

from ..errors import ActsparseError
from .lower import TVM_DTYPES


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
                           dtype=TVM_DTYPES[w_gate.dtype], sched=ctx.target.schedule())
    out = _emit_call(ctx, kernel, [x2d, *args[1:]], tokens, d_out, node.dtype)
    return R.reshape(out, [*lead, d_out])


def lower_input(ctx, node, args):
    from .kernels import kernel as target_kernel
    from .lower_kernels import R, _emit_call, _flatten

    a = node.attrs
    if a.get("x_keep", 0) or a.get("h_keep", 0):
        raise ActsparseError(f"{node.loc or 'a gated MLP'}: the top-k (fixed count) method has no kernel yet; "
                             "compile with a threshold method (method='wina-greedy', 'teal', ...)")
    d, n_ff = node.inputs[1].shape
    d_out = node.inputs[3].shape[1]
    x2d, lead, tokens = _flatten(ctx, node.inputs[0].type, args[0])
    kernel = target_kernel("input", d, n_ff, gate_act=a["gate_act"], up_act=a.get("up_act", "identity"),
                           criterion=a.get("criterion", "product"), dtype=TVM_DTYPES[node.inputs[1].dtype],
                           sched=ctx.target.schedule())
    out = _emit_call(ctx, kernel, [x2d, *args[1:]], tokens, d_out, node.dtype)
    return R.reshape(out, [*lead, d_out])
