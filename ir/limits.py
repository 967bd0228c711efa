"""The inputs a graph can take without indexing out of bounds, read off the graph itself.

- An integer input that reaches an `embedding` (or the index of `index_select`, `gather`, `scatter`) through
  shape-only ops must hold values in [0, rows): a token id past the vocabulary would read outside the table
  (torch raises there).
- A symbolic dim used as a slice's end over a table of static length (the rotary or position table sliced to the
  sequence length) may not exceed that length: the model has that many positions. So may a slice's symbolic
  start not fall before the table's first row: `table[64 - seq:]` (MPT's ALiBi bias, MiniMax's key decay) holds
  for seq <= 64.
- An input's `least` attribute (dim -> least size) is a lower bound the frontend recorded: a program torch's
  export traced from some length on only (a branch on a count of windows, DeepSeek-V4's `if n_windows > 1`)
  has another structure below it, which the graph does not hold.

The compiled module checks these before every call; the numpy interpreter raises on its own (and checks the least
sizes when it binds the inputs: `least_sizes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .dims import terms
from .graph import Graph, Node

SHAPE_ONLY = ("reshape", "permute", "expand", "slice", "cast")  # keep the values they pass on
LEAST = "least"  # an input node's attribute: {dim name: least size the graph holds for}


@dataclass(frozen=True)
class InputLimits:
    index_bounds: dict[str, int] = field(default_factory=dict)  # input name -> values must lie in [0, bound)
    dim_bounds: dict[str, int] = field(default_factory=dict)  # symbolic dim -> largest size the graph allows
    dim_least: dict[str, int] = field(default_factory=dict)  # symbolic dim -> least size the graph holds for


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
        if node.op == "slice" and isinstance(node.attrs.get("start"), str):
            axis = node.attrs["axis"] % max(node.inputs[0].type.rank, 1)
            if isinstance(node.inputs[0].shape[axis], int):
                name, most = _start_bound(node.attrs["start"])
                if name is not None:
                    dim_bounds[name] = min(most, dim_bounds.get(name, most))
    return InputLimits(index_bounds, dim_bounds, least_sizes(graph.inputs))


def too_short(dim: str, size: int, least: int) -> str:
    """The error for a size below its dim's least: what was given, what the graph holds for, and the way out."""
    return (f"{dim} = {size} is below the least {dim} = {least} this graph holds for (its export traced the "
            f"model's branches for {dim} >= {least} only; shorter inputs take others); give at least {least}")


def least_sizes(inputs) -> dict[str, int]:
    """dim name -> the least size the graph holds for, from its input nodes' `least` attributes."""
    least: dict[str, int] = {}
    for node in inputs:
        for name, size in dict(node.attrs.get(LEAST) or {}).items():
            least[name] = max(size, least.get(name, size))
    return least


def _start_bound(start: str) -> tuple[str | None, int]:
    """(name, most) where a start `c - k*name` is >= 0 for name <= most; (None, 0) for any other start."""
    coefs, const = terms(start)
    if len(coefs) != 1:
        return None, 0
    (name, coef), = coefs.items()
    return (name, const // -coef) if coef < 0 and name.isidentifier() else (None, 0)


def _indexed(node: Node) -> tuple[Node, object] | None:
    """(index operand, number of rows it indexes) of an indexing node."""
    if node.op == "embedding":
        return node.inputs[1], node.inputs[0].shape[0]
    if node.op in ("index_select", "gather", "scatter"):  # the index is input 1, along `axis` of input 0
        table = node.inputs[0]
        return node.inputs[1], table.shape[node.attrs.get("axis", 0) % max(table.type.rank, 1)]
    return None


def _through_shape_ops(node: Node) -> Node:
    while node.op in SHAPE_ONLY and node.inputs:
        node = node.inputs[0]
    return node
