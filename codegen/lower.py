"""IR -> TVM Relax: one lowering per op name (a table, JAX style: `context.LOWERINGS`), emitted with a
BlockBuilder.

The Relax function takes the graph inputs followed by the weights (in sorted name order), so the compiled
library holds code only and the weights travel beside it as safetensors. Linear layers and gated MLPs become
`call_tir`s of our own kernels (`lower_kernels.py`; TVM's CPU pipeline leaves legalized ops unscheduled);
everything else uses Relax's ops (`lowerings.py`).
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Node
from ..targets import Target
from .context import LOWERINGS, TVM_DTYPES, LowerContext, LoweringError, const, tensor_sinfo

__all__ = ["LOWERINGS", "TVM_DTYPES", "LowerContext", "LoweringError", "const", "lower_graph"]


def lower_graph(graph: Graph, target: Target):
    """Build the Relax IRModule for `graph`; returns (module, weight names in parameter order)."""
    import tvm
    from tvm import relax, tirx

    from . import lower_attention, lower_cold, lower_kernels, lower_predictor, lower_state, lowerings  # noqa: F401

    symbols: dict[str, object] = {}
    for node in graph.inputs:
        for d in node.shape:
            if isinstance(d, str) and d not in symbols:
                symbols[d] = tirx.Var(d, "int64")
    bb = relax.BlockBuilder()
    ctx = LowerContext(bb, target, symbols)
    for read in [i for node in graph.nodes for i in node.inputs] + list(graph.outputs):  # outputs read too
        ctx.users[id(read)] = ctx.users.get(id(read), 0) + 1
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
                if 0 in node.shape:  # no elements, nothing to compute (and Relax reads a 0 in reshape's new shape
                    expr = relax.op.zeros(ctx.shape(node.shape), TVM_DTYPES[node.dtype])  # as "copy this dim")
                else:
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
