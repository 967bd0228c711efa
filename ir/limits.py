"""The inputs a graph can take without indexing out of bounds, read off the graph itself.

- An integer input that reaches an `embedding` (or the index of an `index_select`) through shape-only ops must
  hold values in [0, rows): a token id past the vocabulary would read outside the table (torch raises there).
- A symbolic dim used as a slice's end over a table of static length (the rotary or position table sliced to the
  sequence length) may not exceed that length: the model has that many positions.

The compiled module checks these before every call; the numpy interpreter raises on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .graph import Graph, Node

SHAPE_ONLY = ("reshape", "permute", "expand", "slice", "cast")  # keep the values they pass on


@dataclass(frozen=True)
class InputLimits:
    index_bounds: dict[str, int] = field(default_factory=dict)  # input name -> values must lie in [0, bound)
    dim_bounds: dict[str, int] = field(default_factory=dict)  # symbolic dim -> largest size the graph allows


def input_limits(graph: Graph) -> InputLimits:
    inputs = {id(n): n.attrs["name"] for n in graph.inputs}
    index_bounds: dict[str, int] = {}
    dim_bounds: dict[str, int] = {}
    for node in graph.nodes:
        indexed = _indexed(node)
        if indexed is not None:
            source, rows = indexed
            name = inputs.get(id(_through_shape_ops(source)))
            if name is not None and isinstance(rows, int):
                index_bounds[name] = min(rows, index_bounds.get(name, rows))
        if node.op == "slice" and isinstance(node.attrs.get("end"), str):
            axis = node.attrs["axis"] % max(node.inputs[0].type.rank, 1)
            size = node.inputs[0].shape[axis]
            if isinstance(size, int):
                end = node.attrs["end"]
                dim_bounds[end] = min(size, dim_bounds.get(end, size))
    return InputLimits(index_bounds, dim_bounds)


def _indexed(node: Node) -> tuple[Node, object] | None:
    """(index operand, number of rows it indexes) of an indexing node."""
    if node.op == "embedding":
        return node.inputs[1], node.inputs[0].shape[0]
    if node.op == "index_select":
        table = node.inputs[0]
        return node.inputs[1], table.shape[node.attrs["axis"] % max(table.type.rank, 1)]
    return None


def _through_shape_ops(node: Node) -> Node:
    while node.op in SHAPE_ONLY and node.inputs:
        node = node.inputs[0]
    return node
