"""The one node type and the graph that owns the weights.

A `Node` is immutable: op name, input nodes, attributes, result type and an optional source location. Nodes
compare by identity (the same object is the same value), which keeps hashing O(1) on deep graphs; structural
comparison is done on the text form (see `printer.py`), which is what golden tests use.

Weights are named numpy arrays held by the `Graph`; a `weight` node refers to one by name and is printed inline
as `@name`. Passes that change a weight's layout add a new named array instead of editing one in place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from .types import TensorType, dtype_of


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


@dataclass(frozen=True, eq=False)
class Node:
    op: str
    inputs: tuple[Node, ...]
    attrs: Mapping[str, Any]
    type: TensorType
    loc: str = ""

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "attrs", MappingProxyType({k: _freeze(v) for k, v in dict(self.attrs).items()}))

    @property
    def shape(self):
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def replace(self, **changes) -> Node:
        fields = {"op": self.op, "inputs": self.inputs, "attrs": dict(self.attrs), "type": self.type, "loc": self.loc}
        fields.update(changes)
        return Node(**fields)

    def __repr__(self) -> str:
        return f"Node({self.op}, {self.type}{', ' + self.loc if self.loc else ''})"


def topo_order(outputs: Iterable[Node]) -> list[Node]:
    """Nodes reachable from `outputs`, every node after its inputs (iterative: graphs can be deep)."""
    order: list[Node] = []
    seen: set[int] = set()
    for root in outputs:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in seen:
                continue
            if expanded:
                seen.add(id(node))
                order.append(node)
                continue
            stack.append((node, True))
            stack.extend((i, False) for i in reversed(node.inputs) if id(i) not in seen)
    return order


@dataclass(frozen=True, eq=False)
class Graph:
    inputs: tuple[Node, ...]
    outputs: tuple[Node, ...]
    weights: Mapping[str, np.ndarray] = field(default_factory=dict)
    name: str = "main"

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))

    @property
    def nodes(self) -> list[Node]:
        cached = self.__dict__.get("_nodes")
        if cached is None:
            cached = topo_order(self.outputs)
            object.__setattr__(self, "_nodes", cached)
        return cached

    def users(self) -> dict[int, list[Node]]:
        """id(node) -> the nodes that read it (graph outputs count as a user of None)."""
        users: dict[int, list[Node]] = {id(n): [] for n in self.nodes}
        for node in self.nodes:
            for i in node.inputs:
                users[id(i)].append(node)
        return users

    def count(self, op: str) -> int:
        return sum(1 for n in self.nodes if n.op == op)

    def with_outputs(self, outputs: Iterable[Node], weights: Mapping[str, np.ndarray] | None = None) -> Graph:
        """A new graph over new outputs, keeping only the weights still referenced."""
        outputs = tuple(outputs)
        pool = dict(self.weights)
        if weights:
            pool.update(weights)
        used = {n.attrs["name"] for n in topo_order(outputs) if n.op == "weight"}
        return Graph(self.inputs, outputs, {k: v for k, v in pool.items() if k in used}, self.name)

    def __str__(self) -> str:
        from .printing import print_graph

        return print_graph(self)


def weight_node(name: str, array: np.ndarray) -> Node:
    return Node("weight", (), {"name": name}, TensorType(array.shape, dtype_of(array)))


def rewrite(graph: Graph, fn: Callable[[Node], Node | None], weights: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Rebuild `graph` bottom-up: each node gets its (rewritten) inputs, then `fn` may replace it.

    `fn` returns a replacement node or None to keep the node. Rebuilt nodes keep their identity when nothing
    under them changed, so untouched subgraphs are shared between the old and the new graph.
    """
    new: dict[int, Node] = {}
    for node in graph.nodes:
        inputs = tuple(new[id(i)] for i in node.inputs)
        current = node if all(a is b for a, b in zip(inputs, node.inputs)) else node.replace(inputs=inputs)
        replaced = fn(current)
        new[id(node)] = replaced if replaced is not None else current
    return graph.with_outputs((new[id(o)] for o in graph.outputs), weights)
