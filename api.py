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
from .ir.examples import example_inputs_for
from .passes import pipeline_for, run_pipeline
from .passes.pipeline import LOSSY_MODES, MODES
from .runtime import CompiledModule
from .runtime.report import build_report

__all__ = ["LOSSY_MODES", "MODES", "compile", "example_inputs_for", "import_model"]


def import_model(model: Any, example_inputs: Sequence) -> Graph:
    """Any supported model form -> IR graph."""
    if isinstance(model, Graph):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = str(model)
        if not path.endswith((".onnx", ".mlir")):
            raise ActsparseError(f"cannot import {path!r}: expected a .onnx or .mlir file, a torch.nn.Module or a "
                                 "Graph")
        if not os.path.isfile(path):
            raise ActsparseError(f"cannot import {path!r}: no such file")
        package = "onnx" if path.endswith(".onnx") else "torch_mlir"
        try:
            if package == "onnx":
                from .frontends.onnx import import_onnx

                return import_onnx(path)
            from .frontends.torch_mlir import import_mlir

            return import_mlir(path)
        except ModuleNotFoundError as err:
            if (err.name or "").partition(".")[0] != package:
                raise
            raise ActsparseError(f"reading {path} needs the {package} package, which is not installed; install "
                                 f"it: pip install {package.replace('_', '-')}") from None
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
    target `sparsity`; `method` picks the sparsity method (passes/sparsity_methods.METHODS, default
    "teal"). The report then gives each block's calibrated sparsity, the sparsity and effective sparsity
    measured on `example_inputs` (keep them out of the calibration data: they are the held-out check) and the
    outputs' relative error vs the dense model."""
    from . import targets as target_registry
    from .codegen.build import build

    if mode not in MODES:
        hint = " (a lossy mode with calibration; not in this build yet)" if mode == "predictor" else ""
        raise ActsparseError(f"unknown mode {mode!r}{hint}; valid modes: {', '.join(MODES)}")
    if memory_budget is not None:
        raise ActsparseError("memory_budget (the hot/cold neuron split) is not in this build yet; leave it unset: "
                             "every neuron's weights stay in the target's main memory")
    options = _lossy_options(mode, calibration, sparsity, method)
    _check_example_inputs(example_inputs)
    tgt = target_registry.get(target)
    graph = import_model(model, example_inputs)
    if example_inputs is None or (isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 0):
        # an ONNX or MLIR file (or a Graph) carries its input types: make example inputs from them
        example_inputs = example_inputs_for(graph)
    try:
        passes = pipeline_for(mode, tgt, **options)
    except ValueError as err:
        raise ActsparseError(str(err)) from None
    result = run_pipeline(graph, passes)
    arrays = [_to_numpy(x) for x in example_inputs]
    report = build_report(tgt.name, mode, result.graph, graph if mode in LOSSY_MODES else None, arrays,
                          result.stats, result.notes)
    executable, weight_order = build(result.graph, tgt)
    inputs = [(n.attrs["name"], TensorType(n.shape, n.dtype)) for n in result.graph.inputs]
    return CompiledModule(executable, dict(result.graph.weights), weight_order, result.graph, inputs,
                          len(result.graph.outputs), report, tgt.to_dict())


def _check_example_inputs(example_inputs) -> None:
    """A tuple (or list) of inputs, one per model input; a bare tensor is refused rather than unpacked along its
    batch axis."""
    if example_inputs is None or isinstance(example_inputs, (tuple, list)):
        return
    if hasattr(example_inputs, "shape"):
        raise ActsparseError(f"example_inputs must be a tuple with one entry per model input, got a bare "
                             f"{type(example_inputs).__name__}; wrap it: (input_ids,)")
    raise ActsparseError(f"example_inputs must be a tuple with one entry per model input, got a "
                         f"{type(example_inputs).__name__}")


def _lossy_options(mode: str, calibration, sparsity, method) -> dict:
    """Check a lossy mode's arguments before the (slow) import; returns pipeline_for's options. An option the
    mode does not use is an error, not silently ignored."""
    if mode not in LOSSY_MODES:
        given = [f"{k}={v!r}"[:60] for k, v in (("calibration", calibration), ("sparsity", sparsity),
                                                 ("method", method)) if v is not None]
        if given:
            raise ActsparseError(f"{', '.join(given)}: mode={mode!r} does not use them (only "
                                 f"{', '.join(map(repr, LOSSY_MODES))} does); leave them out or pick that mode")
        return {}
    from .passes.calibrate import calibration_samples
    from .passes.sparsity_methods import DEFAULT_METHOD, METHODS

    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.floating, np.integer)) \
            or not 0.0 < float(sparsity) < 1.0:
        raise ActsparseError(f"mode={mode!r} needs a target sparsity, a number between 0 and 1 (exclusive), "
                             f"e.g. sparsity=0.5 (got {sparsity!r})")
    method = method or DEFAULT_METHOD
    if method not in METHODS:
        raise ActsparseError(f"unknown threshold method {method!r}; valid methods: {', '.join(METHODS)}")
    return {"calibration": calibration_samples(calibration), "sparsity": float(sparsity), "method": method}


def _to_numpy(x) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
