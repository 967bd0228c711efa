"""Sibling linears: linear layers that read the same x, lowered to one kernel call (kernels/sibling_linears.py).

    q = linear(x, @Wq); k = linear(x, @Wk); v = linear(x, @Wv)
        -> (q2d, k2d, v2d) = call_tir(linears_k_nq_nk_nv, [x2d, Wq, Wk, Wv]); q = reshape(q2d, [..., nq]); ...

A group is up to MAX_SIBLINGS linears with constant weights of one layout and length, x as their first input, all
with or all without a constant bias and the same x rounding (`float_x`), in graph order. When the first of a group
is lowered the call computes them all and the others' values are set (the lowering loop skips a node whose value
is set). Targets whose kernel family has no such kernel (CUDA) keep one linear kernel per layer.
"""

from __future__ import annotations

import dataclasses

from tvm import relax

from .context import KERNEL_DTYPE, TVM_DTYPES, kernel_dtype
from .kernel_input import kernel_x
from .schedules import schedule_for


def _kind(node) -> tuple | None:
    """What siblings must share; None for a linear the kernel cannot take (weight or bias computed, no elements)."""
    w, rest = node.inputs[1], node.inputs[2:]
    if w.op != "weight" or any(b.op != "weight" for b in rest) or 0 in node.shape:
        return None
    return kernel_dtype(w), w.shape[1], bool(rest), node.attrs.get("float_x", False), node.dtype


def sibling_group(ctx, node) -> list:
    """The linears lowered with `node` in one call (`node` first), or [] where it has no sibling or no such kernel."""
    from .kernels import has_kernel
    from .kernels.sibling_linears import MAX_SIBLINGS

    kind = _kind(node)
    if kind is None or not has_kernel("linears", schedule_for(ctx.target)):
        return []
    x = node.inputs[0]
    group = [n for n in ctx.readers.get(id(x), ()) if n.op == "linear" and n.inputs[0] is x
             and id(n) not in ctx.values and _kind(n) == kind][:MAX_SIBLINGS]
    return group if len(group) > 1 and group[0] is node else []


def lower_siblings(ctx, group: list, x) -> object:
    """One call for every linear of `group` reading x (its Relax value); sets ctx.values of all but the first and
    returns the first's expression."""
    from .kernels import kernel as target_kernel

    first = group[0]
    ns = tuple(n.inputs[1].shape[0] for n in group)
    kx = kernel_x(ctx, first.inputs[0], x)
    lead, tokens = kx.lead, kx.tokens
    sched = schedule_for(ctx.target)
    if first.attrs.get("float_x", False) and getattr(sched, "int8_dot", ""):
        sched = dataclasses.replace(sched, int8_dot="")
    bias = len(first.inputs) == 3
    prim = target_kernel("linears", first.inputs[1].shape[1], ns, dtype=kernel_dtype(first.inputs[1]), sched=sched,
                         bias=bias)
    weights = [ctx.values[id(n.inputs[1])] for n in group]
    biases = [_float32(ctx, ctx.values[id(n.inputs[2])]) for n in group] if bias else []
    outs = ctx.bb.emit(relax.call_tir(ctx.kernel(kx.kernel(prim)), [*kx.args, *weights, *biases],
                                      [relax.TensorType([tokens, n], TVM_DTYPES[KERNEL_DTYPE]) for n in ns]))
    exprs = []
    for i, (node, n) in enumerate(zip(group, ns)):
        out = ctx.bb.emit(relax.TupleGetItem(outs, i))
        if node.dtype != KERNEL_DTYPE:
            out = ctx.bb.emit(relax.op.astype(out, TVM_DTYPES[node.dtype]))
        exprs.append(relax.op.reshape(out, [*lead, n]))
    for node, expr in zip(group[1:], exprs[1:]):
        ctx.values[id(node)] = ctx.bb.emit(expr)
    return exprs[0]


def _float32(ctx, b):
    """The kernels add float32 biases."""
    return b if getattr(b.ty, "dtype", "float32") == "float32" else ctx.bb.emit(relax.op.astype(b, "float32"))
