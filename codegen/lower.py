"""IR -> TVM Relax: one lowering per op name (a table, JAX style), emitted with a BlockBuilder.

The Relax function takes the graph inputs followed by the weights (in sorted name order), so the compiled
library holds code only and the weights travel beside it as safetensors. Linear layers and gated MLPs become
`call_tir`s of our own kernels (TVM's CPU pipeline leaves legalized ops unscheduled); everything else uses
Relax's ops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import ActsparseError
from ..ir import Graph, Node
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

    def dim(self, d):
        if isinstance(d, int):
            return d
        if d not in self.symbols:
            raise LoweringError(f"symbolic dim {d!r} is not bound by any graph input")
        return self.symbols[d]

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


def lower_graph(graph: Graph, target: Target):
    """Build the Relax IRModule for `graph`; returns (module, weight names in parameter order)."""
    import tvm
    from tvm import relax, tirx

    from . import lowerings  # noqa: F401  (fills LOWERINGS)

    symbols: dict[str, object] = {}
    for node in graph.inputs:
        for d in node.shape:
            if isinstance(d, str) and d not in symbols:
                symbols[d] = tirx.Var(d, "int64")
    bb = relax.BlockBuilder()
    ctx = LowerContext(bb, target, symbols)
    weight_names = sorted(graph.weights)
    params = [relax.Var(n.attrs["name"], tensor_sinfo(ctx, n)) for n in graph.inputs]
    weight_params = {}
    for name in weight_names:
        array = graph.weights[name]
        weight_params[name] = relax.Var("w_" + name.replace(".", "_"),
                                        relax.TensorType(list(array.shape), TVM_DTYPES[_ir_dtype(array)]))
    with bb.function("main", [*params, *weight_params.values()]):
        with bb.dataflow():
            values = {id(n): p for n, p in zip(graph.inputs, params)}
            for node in graph.nodes:
                if id(node) in values:
                    continue
                if node.op == "weight":
                    values[id(node)] = weight_params[node.attrs["name"]]
                    continue
                fn = LOWERINGS.get(node.op)
                if fn is None:
                    raise LoweringError(f"no lowering for op {node.op!r} at {node.loc or 'unknown location'}")
                expr = fn(ctx, node, [values[id(i)] for i in node.inputs])
                values[id(node)] = _with_known_shape(ctx, node, bb.emit(expr))
            outs = [values[id(o)] for o in graph.outputs]
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result)
    mod = bb.get()
    return tvm.ir.IRModule(mod.functions), weight_names


def _with_known_shape(ctx: LowerContext, node: Node, var):
    """Relax loses static shapes through some ops (e.g. a slice ending at a symbolic dim); legalization then
    skips the value. The IR knows the type, so assert it back with a match_cast."""
    if getattr(var.ty, "shape", None) is None:
        return ctx.bb.match_cast(var, tensor_sinfo(ctx, node))
    return var


def _ir_dtype(array: np.ndarray) -> str:
    from ..ir.types import dtype_of

    return dtype_of(array)


def const(value, dtype: str):
    from tvm import relax

    return relax.const(np.asarray(value, dtype=np_dtype(dtype)), TVM_DTYPES[dtype])  # keep i64/f64 as they are
