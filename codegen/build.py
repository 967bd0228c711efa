"""Build a graph for a target: lower to Relax, then `tvm.compile` with the target's TVM target."""

from __future__ import annotations

from ..ir import Graph
from ..targets import Target
from .lower import lower_graph


def build(graph: Graph, target: Target):
    """Returns (executable, weight names in the order the executable's `main` takes them after the inputs)."""
    import tvm

    mod, weight_order = lower_graph(graph, target)
    executable = tvm.compile(mod, target=target.tvm_target())
    return executable, weight_order
