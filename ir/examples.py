"""Example inputs made from a graph's own input types (for ONNX/MLIR files and artifacts, which carry them)."""

from __future__ import annotations

import numpy as np

from .graph import Graph
from .types import is_float, np_dtype


def example_inputs_for(graph: Graph, seq: int = 8, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Inputs matching the graph's input types: symbolic dims are `seq` long (1 for other names); integer inputs
    read by an `embedding` are token ids below its vocabulary size, other integers 0, floats standard normal."""
    rng = np.random.default_rng(seed)
    vocab = {id(n.inputs[1]): n.inputs[0].shape[0] for n in graph.nodes if n.op == "embedding"}
    arrays = []
    for node in graph.inputs:
        shape = tuple(d if isinstance(d, int) else (seq if d == "seq" else 1) for d in node.shape)
        dtype = np.dtype(np_dtype(node.dtype))
        if node.dtype == "bool":
            arrays.append(np.ones(shape, dtype))
        elif is_float(node.dtype):
            arrays.append(rng.standard_normal(shape).astype(dtype))
        else:
            arrays.append(rng.integers(0, vocab.get(id(node), 1), shape).astype(dtype))
    return tuple(arrays)
