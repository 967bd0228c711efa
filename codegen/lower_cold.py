"""Lowering of the cold part of a hot/cold split (the `cold` entry of ir/sparse_variants.py declares the composite
kernel "cold"): a call of the host function that owns the layer's cold neurons (runtime/cold_store.py).

    sparse_gated_mlp(x, @Wg.cold, @Wu.cold, @Wd.t.cold){mode='cold', store=s}
        -> reshape(call_dps_packed("actsparse.cold.<s>", [x2d, Wg.cold]) : f32[M, d_out], [..., d_out])

Only x and the resident gate rows are passed: the up and down rows are the store's to read (from the file, or
from host memory on a GPU target), so the graph's tensors for them are never touched.
"""

from __future__ import annotations

from tvm import relax

from .context import KERNEL_DTYPE, TVM_DTYPES, flatten_tokens
from .lower_kernels import COMPOSITE_KERNELS

R = relax.op


def lower_cold(ctx, node, args, sched, options):
    x_node = node.inputs[0]
    d_out = node.inputs[3].shape[1]
    x2d, lead, tokens = flatten_tokens(ctx, x_node.type, args[0])
    name = f"actsparse.cold.{options['store']}"
    out = ctx.bb.emit(relax.call_dps_packed(name, [x2d, args[1]],
                                            relax.TensorType([tokens, d_out], TVM_DTYPES[KERNEL_DTYPE])))
    if node.dtype != KERNEL_DTYPE:
        out = ctx.bb.emit(R.astype(out, TVM_DTYPES[node.dtype]))
    return R.reshape(out, [*lead, d_out])


COMPOSITE_KERNELS["cold"] = lower_cold
