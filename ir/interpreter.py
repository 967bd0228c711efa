"""The numpy reference interpreter: the semantics oracle every pass and every backend is checked against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .graph import Graph, Node
from .limits import least_sizes, too_short
from .ops import REQUIRED, op_def
from .types import np_dtype


def bind_symbols(graph: Graph, arrays: Sequence[np.ndarray]) -> dict[str, int]:
    if len(arrays) != len(graph.inputs):
        raise ValueError(f"graph takes {len(graph.inputs)} inputs, got {len(arrays)}")
    env: dict[str, int] = {}
    for node, array in zip(graph.inputs, arrays):
        if len(node.shape) != np.ndim(array):
            raise ValueError(f"input %{node.attrs['name']} expects {node.type}, got shape {np.shape(array)}")
        for dim, size in zip(node.shape, np.shape(array)):
            if isinstance(dim, str):
                if env.setdefault(dim, size) != size:
                    raise ValueError(f"symbolic dim {dim} bound to both {env[dim]} and {size}")
            elif dim != size:
                raise ValueError(f"input %{node.attrs['name']} expects {node.type}, got shape {np.shape(array)}")
    for dim, least in least_sizes(graph.inputs).items():
        if env.get(dim, least) < least:
            raise ValueError(too_short(dim, env[dim], least))
    return env


def evaluate(graph: Graph, arrays: Sequence[np.ndarray], keep: Sequence[Node] = ()) -> list[np.ndarray]:
    """Run `graph` on numpy inputs; returns its outputs, followed by the values of the `keep` nodes."""
    arrays = [np.asarray(a) for a in arrays]
    env = bind_symbols(graph, arrays)
    values: dict[int, np.ndarray] = {id(n): a.astype(np_dtype(n.dtype), copy=False)
                                     for n, a in zip(graph.inputs, arrays)}
    wanted = {id(n) for n in graph.outputs} | {id(n) for n in keep}
    remaining = {id(n): 0 for n in graph.nodes}
    for node in graph.nodes:
        for i in node.inputs:
            remaining[id(i)] += 1
    streamed = _streamed_weights(graph.nodes)
    for node in graph.nodes:
        if id(node) not in values and id(node) not in streamed:
            values[id(node)] = _run(node, values, graph, env)
        for i in node.inputs:  # free intermediates early: full-model graphs hold many activations
            remaining[id(i)] -= 1
            if remaining[id(i)] == 0 and id(i) not in wanted:
                values.pop(id(i), None)
    return [values[id(n)] for n in (*graph.outputs, *keep)]


def evaluate_from(graph: Graph, node: Node, known: dict[int, np.ndarray]) -> np.ndarray:
    """`node`'s value from the values of nodes it depends on (`known`: id(node) -> array), running only the nodes
    between them and weights (e.g. a sparse block's scores from the block's input). A path to a graph input not in
    `known` is a KeyError naming it."""
    values = dict(known)
    order: list[Node] = []
    seen: set[int] = set()

    def visit(n: Node) -> None:
        if id(n) in values or id(n) in seen:
            return
        if n.op == "input":
            raise KeyError(f"{node.op} depends on input %{n.attrs['name']}, whose value was not given")
        seen.add(id(n))
        for i in n.inputs:
            visit(i)
        order.append(n)

    visit(node)
    streamed = _streamed_weights(order)
    for n in order:
        if id(n) not in streamed:
            values[id(n)] = _run(n, values, graph, {})
    return values[id(node)]


def weight_value(graph: Graph, node: Node) -> np.ndarray:
    """A weight node's values: the graph's array, dequantized when the node has a quantized `layout` (ir.quant)."""
    array = graph.weights[node.attrs["name"]]
    if node.attrs.get("layout", "dense") == "dense":
        return array
    from .quant import dequantize

    return dequantize(array, node.attrs["layout"], node.shape[-1])


QUANTIZED_ROWS_PER_STEP = 4096   # rows dequantized at once by `_quantized_linear` (a 7B gate: 3 BLAS calls, not 11:
#                                 each multi-threaded OpenBLAS call cost ~2.5x more under load; 64 MB transient)


def _streamed_weights(nodes: Sequence[Node]) -> set[int]:
    """ids of the quantized weight nodes that `nodes` read only as a float32 linear's weight or an embedding's table:
    those are never dequantized whole (`_quantized_linear` dequantizes a block of rows at a time,
    `_quantized_embedding` the rows looked up)."""
    uses: dict[int, list[bool]] = {}
    for n in nodes:
        for k, i in enumerate(n.inputs):
            if i.op == "weight" and i.attrs.get("layout", "dense") != "dense":
                uses.setdefault(id(i), []).append(n.op == "linear" and k == 1 and n.dtype == "f32"
                                                  or n.op == "embedding" and k == 0)
    return {i for i, streamed_only in uses.items() if all(streamed_only)}


def _quantized_embedding(node: Node, values, graph: Graph) -> np.ndarray:
    """embedding(@table_quantized, ids): only the distinct rows looked up are dequantized (a tied Gemma 3 table
    dequantized whole is 671 MB per call); the op's reference reads them by the ids' positions among them."""
    from .quant import dequantize

    table, ids = node.inputs[0], values[id(node.inputs[1])]
    rows, at = np.unique(np.asarray(ids), return_inverse=True)
    picked = dequantize(graph.weights[table.attrs["name"]][rows], table.attrs["layout"], table.shape[1])
    return picked[at.reshape(np.shape(ids))]


def _quantized_linear(node: Node, values, graph: Graph, reference, attrs: dict, env) -> np.ndarray:
    """linear(x, @w_quantized) without the whole dequantized weight: the op table's linear (`reference`) on
    `QUANTIZED_ROWS_PER_STEP` dequantized rows at a time, each block of outputs written into one result. The
    compile report evaluates each certified gate's scores this way (runtime/report.py); a Llama-2-7B gate
    dequantized at once is 180 MB, and the process kept that much per layer (compile_scale, issue 11 item 4)."""
    from .quant import dequantize

    x, w = values[id(node.inputs[0])], node.inputs[1]
    bias = values[id(node.inputs[2])] if len(node.inputs) == 3 else None
    blob, cols = graph.weights[w.attrs["name"]], w.shape[-1]
    out = np.empty((*x.shape[:-1], blob.shape[0]), np_dtype(node.dtype))
    for a in range(0, blob.shape[0], QUANTIZED_ROWS_PER_STEP):
        rows = slice(a, a + QUANTIZED_ROWS_PER_STEP)
        out[..., rows] = reference(x, dequantize(blob[rows], w.attrs["layout"], cols),
                                   *(() if bias is None else (bias[..., rows],)), attrs, env)
    return out


def _run(node: Node, values, graph: Graph, env) -> np.ndarray:
    dtype = np_dtype(node.dtype)
    if node.op == "weight":
        return weight_value(graph, node)
    if node.op == "constant":
        return np.asarray(node.attrs["value"], dtype=dtype)
    opdef = op_def(node.op)
    attrs = {**{k: v for k, v in opdef.attrs.items() if v is not REQUIRED}, **node.attrs}
    if node.op == "linear" and id(node.inputs[1]) not in values:   # a streamed weight (`_streamed_weights`)
        return _quantized_linear(node, values, graph, opdef.reference, attrs, env)
    if node.op == "embedding" and id(node.inputs[0]) not in values:   # a streamed table (`_streamed_weights`)
        return _quantized_embedding(node, values, graph).astype(dtype, copy=False)
    out = opdef.reference(*(values[id(i)] for i in node.inputs), attrs, env)
    return np.asarray(out).astype(dtype, copy=False)
