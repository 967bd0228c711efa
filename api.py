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
from .runtime.report import measure_blocks, output_rel_error

MODES = ("dense", "exact", "auto", "threshold")
LOSSY_MODES = ("threshold",)


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
            from .frontends.torch_mlir import import_mlir

            return import_mlir(path)
        raise ActsparseError(f"cannot import {path!r}: expected a .onnx or .mlir file, a torch.nn.Module or a Graph")
    if type(model).__name__ == "ModelProto" and type(model).__module__.startswith("onnx"):
        from .frontends.onnx import import_onnx

        return import_onnx(model)
    if type(model).__module__.startswith("torch_mlir") and hasattr(model, "operation"):  # a torch-mlir Module
        from .frontends.torch_mlir import import_mlir

        return import_mlir(model)
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(model, torch.nn.Module):
        from .frontends.torch_export import import_torch

        # numpy example inputs are as good as tensors (the compiled module takes numpy): share their memory
        inputs = tuple(torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in example_inputs)
        return import_torch(model.eval(), inputs)
    raise ActsparseError(f"cannot compile a {type(model).__name__}: expected a torch.nn.Module, a path to a "
                         ".onnx/.mlir file, or an actsparse IR Graph")


def compile(model: Any, example_inputs: Sequence, target: Any = "x86", mode: str = "auto", calibration=None,
            sparsity: float | None = None, memory_budget: int | None = None, method: str | None = None
            ) -> CompiledModule:
    """See the package docstring and DESIGN.md. Lossy modes: `calibration` (iterable of input tuples) and the
    target `sparsity`; `method` picks the threshold calibration ("cats" default, "teal", "topk"). The report then
    gives each block's calibrated sparsity, the sparsity measured on `example_inputs` (keep them out of the
    calibration data: they are the held-out check) and the outputs' relative error vs the dense model."""
    from . import targets as target_registry
    from .codegen.build import build

    if mode not in MODES:
        hint = " (a lossy mode with calibration; not in this build yet)" if mode == "predictor" else ""
        raise ActsparseError(f"unknown mode {mode!r}{hint}; valid modes: {', '.join(MODES)}")
    if memory_budget is not None:
        raise ActsparseError("memory_budget (the hot/cold neuron split) is not in this build yet; leave it unset: "
                             "every neuron's weights stay in the target's main memory")
    options = _lossy_options(mode, calibration, sparsity, method)
    tgt = target_registry.get(target)
    graph = import_model(model, example_inputs)
    if example_inputs is None or (isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 0):
        # an ONNX or MLIR file (or a Graph) carries its input types: make example inputs from them
        example_inputs = example_inputs_for(graph)
    try:
        passes = pipeline_for(mode, **options)
    except ValueError as err:
        raise ActsparseError(str(err)) from None
    result = run_pipeline(graph, passes)
    arrays = [_to_numpy(x) for x in example_inputs]
    report = Report(tgt.name, mode, measure_blocks(result.graph, arrays), result.stats)
    _calibration_notes([n for n in result.notes if n.get("kind") == "calibration"], report)
    report.blocks.extend(_dense_notes([n for n in result.notes if n.get("kind") != "calibration"], report))
    if mode in LOSSY_MODES:
        report.output_rel_error = output_rel_error(graph, result.graph, arrays)
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


def _lossy_options(mode: str, calibration, sparsity, method) -> dict:
    """Check a lossy mode's arguments before the (slow) import; returns pipeline_for's options."""
    if mode not in LOSSY_MODES:
        if method is not None:
            raise ActsparseError(f"method={method!r} applies to mode='threshold', not mode={mode!r}")
        return {}
    from .passes.calibrate import calibration_samples
    from .passes.sparsity_methods import DEFAULT_METHOD, METHODS

    if sparsity is None or not 0.0 < float(sparsity) < 1.0:
        raise ActsparseError(f"mode={mode!r} needs a target sparsity between 0 and 1, e.g. sparsity=0.5 "
                             f"(got {sparsity!r})")
    method = method or DEFAULT_METHOD
    if method not in METHODS:
        raise ActsparseError(f"unknown threshold method {method!r}; valid methods: {', '.join(METHODS)}")
    return {"calibration": calibration_samples(calibration), "sparsity": float(sparsity), "method": method}


def _calibration_notes(notes: list[dict], report: Report) -> None:
    """Attach what calibration chose (threshold, calibrated sparsity) to the measured blocks."""
    by_loc = {b.location: b for b in report.blocks}
    for n in notes:
        block = by_loc.get(n["location"])
        if block is not None:
            block.calibrated_sparsity = n["calibrated_sparsity"]
            block.threshold = n["threshold"]
            block.method = n["method"]
            block.effective_calibrated = n.get("effective_sparsity")
            block.input_sparsity = n.get("input_sparsity")


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
