"""The lowering of `sparse_gated_mlp{mode='cutoff'}` (ir/sparse_variants.py): the activated gate (an input computed
by the graph's own ops) flattened to [M, n_ff] like x, then the target family's cutoff kernel (CPUs:
codegen/kernels/cutoff_mlp.py; CUDA: kernels/cuda_cutoff_mlp.py, the exact kernel's three launches reading a).

    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t, a){mode='cutoff'} -> reshape(call_tir(cutoff, [x2d, Wg, Wu, Wd.t, a2d]))

Its dense twin (mode 'cutoff-dense', passes/densify.py) lowers the same way to the "cutoff-dense" kernel.
"""

from __future__ import annotations

from functools import partial

from tvm import relax

from .context import emit_kernel_call, flatten_tokens, kernel_dtype
from .lower_kernels import COMPOSITE_KERNELS


def lower_given_gate(kernel_name, ctx, node, args, sched, options):
    from .kernels import kernel as target_kernel

    x_node, w_gate = node.inputs[0], node.inputs[1]
    n_ff, d = w_gate.shape
    d_out = node.inputs[3].shape[1]
    x2d, lead, tokens = flatten_tokens(ctx, x_node.type, args[0])
    gate2d = flatten_tokens(ctx, node.inputs[4].type, args[4])[0]
    kernel = target_kernel(kernel_name, d, n_ff, dtype=kernel_dtype(w_gate), sched=sched, **options)
    out = emit_kernel_call(ctx, kernel, [x2d, *args[1:4], gate2d], tokens, d_out, node.dtype)
    return relax.op.reshape(out, [*lead, d_out])


COMPOSITE_KERNELS.update({name: partial(lower_given_gate, name) for name in ("cutoff", "cutoff-dense")})
