"""Lowering of the cold part of a hot/cold split (the `cold` entry of ir/sparse_variants.py declares the composite
kernel "cold"): a call of the host function that owns the layer's cold neurons (runtime/cold_store.py).

    sparse_gated_mlp(x, @Wg.cold, @Wu.cold, @Wd.t.cold){mode='cold', store=s}
        -> g = linear(x2d, @Wg.cold)                                  (the target's linear kernel: resident rows)
           reshape(call_dps_packed("actsparse.cold.<s>", [x2d, g]) : f32[M, d_out], [..., d_out])

The gate pre-activations are computed where the gate rows live (the target's own kernel, on the GPU for a cuda
target); the host function gets x and g and reads the up and down rows of the neurons that fire (from the file, or
from host memory on a GPU target), so the graph's tensors for them are never touched. In predictor mode
("cold-predictor") the scores pick the neurons and the gate rows are cold too; the host function gets the scores:

    sparse_gated_mlp(x, @Wg.cold, @Wu.cold, @Wd.t.cold, s){mode='cold-predictor', store=s, cutoff=t}
        -> reshape(call_dps_packed("actsparse.cold.<s>", [x2d, s2d]) : f32[M, d_out], [..., d_out])
"""

from __future__ import annotations

from tvm import relax

from ..ir import TensorType
from .context import KERNEL_DTYPE, TVM_DTYPES, flatten_tokens
from .lower_kernels import COMPOSITE_KERNELS, linear_call

R = relax.op


def lower_cold(ctx, node, args, sched, options):
    x_node = node.inputs[0]
    d_out = node.inputs[3].shape[1]
    x2d, lead, tokens = flatten_tokens(ctx, x_node.type, args[0])
    if len(node.inputs) > 4:   # the predictor's scores decide; the gate rows are in the store
        g2d, _, _ = flatten_tokens(ctx, node.inputs[4].type, args[4])
    else:
        gate = ctx.bb.emit(linear_call(ctx, node.inputs[0].type, args[0], node.inputs[1], args[1]))
        g2d, _, _ = flatten_tokens(ctx, TensorType((*x_node.shape[:-1], node.inputs[1].shape[0]), x_node.dtype),
                                   gate)
    name = f"actsparse.cold.{options['store']}"
    out = ctx.bb.emit(relax.call_dps_packed(name, [x2d, g2d],
                                            relax.TensorType([tokens, d_out], TVM_DTYPES[KERNEL_DTYPE])))
    if node.dtype != KERNEL_DTYPE:
        out = ctx.bb.emit(R.astype(out, TVM_DTYPES[node.dtype]))
    return R.reshape(out, [*lead, d_out])


COMPOSITE_KERNELS["cold"] = lower_cold
