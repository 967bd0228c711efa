"""`verify(graph)`: every node names a known op, has the right arity and attributes, and the type its op's
rule infers; weights exist with the declared type; inputs are the graph's own. Run after every pass."""

from __future__ import annotations

from ..errors import ActsparseError
from .graph import Graph
from .ops import REQUIRED, op_def
from .types import TensorType, dtype_of


class VerifyError(ActsparseError, ValueError):
    pass


def verify(graph: Graph) -> Graph:
    graph_inputs = {id(n) for n in graph.inputs}
    for node in graph.nodes:
        where = f"{node.op} node{' at ' + node.loc if node.loc else ''}"
        try:
            opdef = op_def(node.op)
        except KeyError as err:
            raise VerifyError(f"{where}: {err.args[0]}") from None
        lo, hi = opdef.arity
        if len(node.inputs) < lo or (hi >= 0 and len(node.inputs) > hi):
            raise VerifyError(f"{where}: takes {lo}..{hi if hi >= 0 else 'n'} inputs, got {len(node.inputs)}")
        missing = [k for k, v in opdef.attrs.items() if v is REQUIRED and k not in node.attrs]
        unknown = [k for k in node.attrs if k not in opdef.attrs]
        if missing or unknown:
            raise VerifyError(f"{where}: missing attrs {missing}, unknown attrs {unknown}")
        if node.op == "input" and id(node) not in graph_inputs:
            raise VerifyError(f"{where}: input %{node.attrs['name']} is not among the graph's inputs")
        if node.op == "input" and not _least_ok(node):
            raise VerifyError(f"{where}: input %{node.attrs['name']}'s least sizes must map its symbolic dims to "
                              f"positive ints, got {node.attrs.get('least')!r}")
        if node.op == "weight":
            _verify_weight(graph, node, where)
        if lo == hi == 0:
            continue
        attrs = {**{k: v for k, v in opdef.attrs.items() if v is not REQUIRED}, **node.attrs}
        try:
            inferred = opdef.infer([i.type for i in node.inputs], attrs)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError, ZeroDivisionError, OverflowError,
                RecursionError) as err:  # an op's type rule on attributes of the wrong kind (text read from a file)
            raise VerifyError(f"{where}: {type(err).__name__}: {err}") from None
        if inferred != node.type:
            raise VerifyError(f"{where}: declared type {node.type} but inputs give {inferred}")
    return graph


def _least_ok(node) -> bool:
    """An input's least sizes (ir/limits.py) name its own symbolic dims and are positive ints (text read back)."""
    least = node.attrs.get("least")
    return least is None or isinstance(least, dict) and all(
        d in node.shape and isinstance(d, str) and type(n) is int and n >= 1 for d, n in least.items())


def _verify_weight(graph: Graph, node, where: str) -> None:
    name = node.attrs["name"]
    if name not in graph.weights:
        raise VerifyError(f"{where}: weight @{name} is not held by the graph")
    array = graph.weights[name]
    if node.attrs.get("layout", "dense") != "dense":
        from .quant import QuantizationError, check_blob

        try:
            check_blob(array, node.attrs["layout"], node.shape)
        except QuantizationError as err:
            raise VerifyError(f"{where}: weight @{name}: {err}") from None
        return
    actual = TensorType(array.shape, dtype_of(array))
    if actual != node.type:
        raise VerifyError(f"{where}: weight @{name} is {actual} but the node says {node.type}")
