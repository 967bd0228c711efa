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


def lower_graph(graph: Graph, target: Target, specialized: dict[str, dict[str, int]] | None = None,
                graphs: dict[str, Graph] | None = None):
    """Build the Relax IRModule for `graph`: `main` over the graph's own (symbolic) shapes, plus one function per
    entry of `specialized` (name -> {symbolic dim: value}) with those dims fixed, sharing the kernels (a decoder's
    one-token `step`: static shapes, so the VM computes and checks far fewer shapes per call); such a function
    computes `graphs[name]` where given (the same inputs and weights, other outputs). Returns (module, weight
    names in parameter order)."""
    import tvm
    from tvm import relax

    from . import lower_attention, lower_cold, lower_cutoff, lower_kernels, lower_predictor, lower_state, lowerings  # noqa: F401

    bb = relax.BlockBuilder()
    kernels: dict[str, object] = {}
    weight_names = sorted(graph.weights)
    for name, bound in {"main": {}, **(specialized or {})}.items():
        _lower_function(bb, (graphs or {}).get(name, graph), target, name, bound, kernels, weight_names)
    # a kernel that absorbs its inputs' computation (the certified MLP computes its scores) leaves them unused
    entries = ["main", *(specialized or {})]
    return relax.transform.DeadCodeElimination(entries)(tvm.ir.IRModule(bb.get().functions)), weight_names


def _lower_function(bb, graph: Graph, target: Target, name: str, bound: dict[str, int], kernels: dict,
                    weight_names: list[str]) -> None:
    from tvm import relax, tirx

    symbols: dict[str, object] = {}
    for node in graph.inputs:
        for d in node.shape:
            if isinstance(d, str) and d not in symbols:  # inputs name their dims (no expression: see ir/dims.py)
                symbols[d] = bound.get(d) or tirx.Var(d, "int64")
    ctx = LowerContext(bb, target, symbols, kernels)
    for read in [i for node in graph.nodes for i in node.inputs] + list(graph.outputs):  # outputs read too
        ctx.users[id(read)] = ctx.users.get(id(read), 0) + 1
    for node in graph.nodes:
        for i in dict.fromkeys(map(id, node.inputs)):
            ctx.readers.setdefault(i, []).append(node)
    params = [relax.Var(n.attrs["name"], tensor_sinfo(ctx, n)) for n in graph.inputs]
    weight_params = {}
    for wname in weight_names:
        array = graph.weights[wname]
        weight_params[wname] = relax.Var("w_" + wname.replace(".", "_"),
                                         relax.TensorType(list(array.shape), TVM_DTYPES[_ir_dtype(array)]))
    with bb.function(name, [*params, *weight_params.values()]):
        with bb.dataflow():
            values = ctx.values  # a lowering may read values further up its inputs (lower_predictor's certified)
            values.update({id(n): p for n, p in zip(graph.inputs, params)})
            values.update({id(n): weight_params[n.attrs["name"]] for n in graph.nodes if n.op == "weight"})
            for node in graph.nodes:
                if id(node) in values:   # an input, a weight, or a node a lowering computed with an earlier one
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


def _with_known_shape(ctx: LowerContext, node: Node, var):
    """Relax loses static shapes through some ops (e.g. a slice ending at a symbolic dim); legalization then
    skips the value. The IR knows the type, so assert it back with a match_cast."""
    if getattr(var.ty, "shape", None) is None:
        return ctx.bb.match_cast(var, tensor_sinfo(ctx, node))
    return var


def _ir_dtype(array: np.ndarray) -> str:
    from ..ir.types import dtype_of

    return dtype_of(array)
