"""`actsparse.compile()`: import a model, run the mode's pipeline, measure, build for the target.

    model --frontend--> IR --passes (pipeline.py)--> IR with sparse_gated_mlp --codegen--> TVM executable
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import ActsparseError
from .ir import Graph, TensorType
from .ir.types import is_float, np_dtype
from .passes import pipeline_for, run_pipeline
from .runtime import CompiledModule, Report
from .runtime.report import measure_blocks

MODES = ("dense", "exact", "auto")


def import_model(model: Any, example_inputs: Sequence) -> Graph:
    """Any supported model form -> IR graph."""
    if isinstance(model, Graph):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = str(model)
        if path.endswith(".onnx"):
            from .frontends.onnx import import_onnx

            return import_onnx(path)
        if path.endswith(".mlir"):
            raise ActsparseError(f"{path}: the torch-mlir frontend is not available in this build yet; "
                                 "pass a torch.nn.Module, a .onnx file or an actsparse IR Graph")
        raise ActsparseError(f"cannot import {path!r}: expected a .onnx or .mlir file, a torch.nn.Module or a Graph")
    if type(model).__name__ == "ModelProto" and type(model).__module__.startswith("onnx"):
        from .frontends.onnx import import_onnx

        return import_onnx(model)
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(model, torch.nn.Module):
        from .frontends.torch_export import import_torch

        return import_torch(model.eval(), tuple(example_inputs))
    raise ActsparseError(f"cannot compile a {type(model).__name__}: expected a torch.nn.Module, a path to a "
                         ".onnx/.mlir file, or an actsparse IR Graph")


def compile(model: Any, example_inputs: Sequence, target: Any = "x86", mode: str = "auto", calibration=None,
            sparsity: float | None = None, memory_budget: int | None = None) -> CompiledModule:
    from . import targets as target_registry
    from .codegen.build import build

    if mode not in MODES:
        hint = " (lossy modes come with calibration; not in this build yet)" if mode in ("threshold", "predictor") else ""
        raise ActsparseError(f"unknown mode {mode!r}{hint}; valid modes: {', '.join(MODES)}")
    tgt = target_registry.get(target)
    graph = import_model(model, example_inputs)
    if example_inputs is None or (isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 0):
        # an ONNX file (or a Graph) carries its input types: make example inputs from them
        example_inputs = example_inputs_for(graph)
    result = run_pipeline(graph, pipeline_for(mode))
    arrays = [_to_numpy(x) for x in example_inputs]
    report = Report(tgt.name, mode, measure_blocks(result.graph, arrays), result.stats)
    report.blocks.extend(_dense_notes(result.notes, report))
    executable, weight_order = build(result.graph, tgt)
    inputs = [(n.attrs["name"], TensorType(n.shape, n.dtype)) for n in result.graph.inputs]
    return CompiledModule(executable, dict(result.graph.weights), weight_order, result.graph, inputs,
                          len(result.graph.outputs), report, tgt.to_dict())


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


def _dense_notes(notes: list[dict], report: Report):
    """Attach 'why dense' reasons to measured blocks; blocks not measured (plain MLPs) become rows of their own."""
    from .runtime import BlockReport

    by_loc = {b.location: b for b in report.blocks}
    extra = []
    for n in notes:
        if n["location"] in by_loc:
            by_loc[n["location"]].reason = n["reason"]
        else:
            extra.append(BlockReport(n["location"], n["pattern"], n["mode"], n.get("n_ff", 0), None, n["reason"]))
    return extra


def _to_numpy(x) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
