"""What every lowering needs: the lowering table (`LOWERINGS`, filled by `lowerings.py` and `lower_kernels.py`
through `@lowering(op, ...)`), the per-module `LowerContext`, dtype names and the kernel-call helpers.

A lowering is `fn(ctx, node, args) -> Relax expression` with `args` the Relax values of the node's inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import ActsparseError
from ..ir import Node, TensorType
from ..ir.dims import build, evaluate, names
from ..ir.types import np_dtype
from ..targets import Target

TVM_DTYPES = {"f32": "float32", "f16": "float16", "f64": "float64", "i64": "int64", "i32": "int32", "bool": "bool",
              "u8": "uint8"}


def kernel_dtype(weight) -> str:
    """The kernels' `dtype` for a weight node: its quantized layout (ir.quant: "q4_0", ...) or its TVM dtype."""
    layout = weight.attrs.get("layout", "dense") if weight.op == "weight" else "dense"
    return TVM_DTYPES[weight.dtype] if layout == "dense" else layout


class LoweringError(ActsparseError):
    pass


@dataclass
class LowerContext:
    bb: object
    target: Target
    symbols: dict[str, object]  # symbolic dim name -> tirx.Var
    kernels: dict[str, object] = field(default_factory=dict)  # global_symbol -> GlobalVar
    users: dict[int, int] = field(default_factory=dict)  # id(node) -> how many nodes (and outputs) read it
    values: dict[int, object] = field(default_factory=dict)  # id(node) -> its Relax value, for nodes lowered so far
    readers: dict[int, list] = field(default_factory=dict)  # id(node) -> the nodes that read it, in graph order

    def dim(self, d):
        """An IR dim as TVM sees it: an int, a graph input's dim variable, or a PrimExpr of them (kv+1, and floor
        divisions by constants as tirx.floordiv: a chunked scan's `64*((seq+63)//64)`)."""
        if isinstance(d, int):
            return d
        unbound = [n for n in names(d) if n not in self.symbols]
        if unbound:
            raise LoweringError(f"symbolic dim {d!r}: {', '.join(unbound)} bound by no graph input")
        if d in self.symbols:
            return self.symbols[d]
        values = {n: self.symbols[n] for n in names(d)}
        if all(isinstance(v, int) for v in values.values()):  # a function specialised to static sizes: a number
            return evaluate(d, values)  # (tirx.floordiv of Python ints is an int32 constant Relax shapes refuse)
        from tvm import tirx

        return build(d, self.symbols.__getitem__, tirx.floordiv, tirx.min, tirx.max)

    def shape(self, shape):
        return [self.dim(d) for d in shape]

    def kernel(self, primfunc):
        """Add a PrimFunc once per module (kernels are keyed by their global_symbol)."""
        name = str(primfunc.attrs["global_symbol"])
        if name not in self.kernels:
            self.kernels[name] = self.bb.add_func(primfunc, name)
        return self.kernels[name]


LOWERINGS: dict[str, Callable] = {}


def lowering(*ops: str):
    def register(fn):
        for op in ops:
            LOWERINGS[op] = fn
        return fn
    return register


def tensor_sinfo(ctx: LowerContext, node: Node):
    from tvm import relax

    return relax.TensorType(ctx.shape(node.shape), TVM_DTYPES[node.dtype])


def const(value, dtype: str):
    from tvm import relax

    return relax.const(np.asarray(value, dtype=np_dtype(dtype)), TVM_DTYPES[dtype])  # keep i64/f64 as they are


KERNEL_DTYPE = "f32"  # the kernels' activations (x, out); weights are float32 or float16, accumulated in float32


def token_count(lead):
    """The product of x's leading dims (Relax expressions or ints): the M of a kernel's x[M, k]."""
    from functools import reduce

    return reduce(lambda a, b: a * b, lead, 1)


def flatten_tokens(ctx: LowerContext, x_type: TensorType, x):
    """x[..., k] -> (x2d[M, k], the leading dims, M): kernels take one token axis."""
    from tvm import relax

    lead = ctx.shape(x_type.shape[:-1])
    tokens = token_count(lead)
    x2d = ctx.bb.emit(relax.op.reshape(x, [tokens, ctx.dim(x_type.shape[-1])]))
    if x_type.dtype != KERNEL_DTYPE:  # a float16 model: its activations enter (and leave) the kernels as float32
        x2d = ctx.bb.emit(relax.op.astype(x2d, TVM_DTYPES[KERNEL_DTYPE]))
    return x2d, lead, tokens


def emit_kernel_call(ctx: LowerContext, primfunc, args, tokens, width: int, dtype: str):
    """call_tir of `primfunc` (added to the module once) writing a [tokens, width] `dtype` result. A kernel's scratch
    parameters (`kernels/scratch.py`) are further outputs of the call, unused after it: Relax allocates them."""
    from tvm import relax

    from .kernels.scratch import scratch_count, scratch_shapes

    gv = ctx.kernel(primfunc)
    result = relax.TensorType([tokens, width], TVM_DTYPES[KERNEL_DTYPE])
    if scratch_count(primfunc):
        scratch = scratch_shapes(primfunc, [list(a.ty.shape.values) for a in args] + [[tokens, width]])
        outs = ctx.bb.emit(relax.call_tir(gv, args, [result, *(relax.TensorType(s, t) for s, t in scratch)]))
        out = ctx.bb.emit(relax.TupleGetItem(outs, 0))
    else:
        out = ctx.bb.emit(relax.call_tir(gv, args, result))
    return out if dtype == KERNEL_DTYPE else ctx.bb.emit(relax.op.astype(out, TVM_DTYPES[dtype]))
