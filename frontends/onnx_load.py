"""Loading and validating an ONNX model before anything is translated.

`load_model` parses the file (a truncated or corrupt file is one clear error), checks that the default-domain
opset is in `OPSETS`, that external-data weights exist beside the model and that every node has a handler in
the op table, then runs `onnx.checker.check_model` and strict `onnx.shape_inference.infer_shapes`. Every
failure is an `OnnxImportError` (or `UnsupportedOpError`) naming the model and the way out; the importer in
`onnx.py` can then assume a well-formed, shape-inferred model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import FrontendError, UnsupportedOpError
from .onnx_names import module_from_name
from .onnx_ops import HANDLERS

OPSETS = (14, 21)  # supported versions of the default ONNX domain, inclusive


class OnnxImportError(FrontendError):
    """An ONNX model could not be read or validated (corrupt file, bad opset, missing external data, ...)."""


def _check_names_are_text(proto, source: str) -> None:
    """protobuf hands a string field that is not valid UTF-8 back as bytes (a corrupt file): refuse it here."""
    graph = proto.graph
    names = [graph.name, *(v.name for v in (*graph.input, *graph.output, *graph.initializer, *graph.value_info))]
    for node in graph.node:
        names += [node.name, node.op_type, node.domain, *node.input, *node.output, *(a.name for a in node.attribute)]
    if not all(isinstance(n, str) for n in names):
        raise OnnxImportError(f"{source}: not a readable ONNX model (a name is not valid UTF-8; corrupt file?)")


def load_model(model) -> tuple[Any, str]:
    """-> (validated ModelProto with weights loaded and shapes inferred, a name for messages)."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        source = str(path)
        if not path.is_file():
            raise OnnxImportError(f"{source}: no such ONNX file")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as err:  # noqa: BLE001 - protobuf raises DecodeError, RuntimeWarning, ...
            raise OnnxImportError(f"{source}: not a readable ONNX model (truncated or corrupt file?): "
                                  f"{_first_line(err)}") from None
        base_dir = str(path.parent)
    elif type(model).__name__ == "ModelProto" and type(model).__module__.startswith("onnx"):
        proto, source, base_dir = model, f"ONNX model {model.graph.name or '<unnamed>'}", None
    else:
        raise OnnxImportError(f"expected a path to a .onnx file or an onnx.ModelProto, got {type(model).__name__}")
    if not proto.HasField("graph") or not proto.graph.output:
        raise OnnxImportError(f"{source}: not a readable ONNX model (no graph or no outputs; truncated file?)")
    _check_names_are_text(proto, source)
    _check_opset(proto, source)
    _check_external_data(proto, source, base_dir)
    try:
        onnx.checker.check_model(str(model) if base_dir is not None else proto)
    except Exception as err:  # noqa: BLE001 - ValidationError and friends
        raise OnnxImportError(f"{source}: the ONNX checker rejected the model: {_first_line(err)}") from None
    _check_supported(proto)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as err:  # noqa: BLE001 - InferenceError
        raise OnnxImportError(f"{source}: ONNX shape inference failed: {_first_line(err)}") from None
    if base_dir is not None:
        onnx.load_external_data_for_model(inferred, base_dir)
    return inferred, source


def _check_opset(proto, source: str) -> None:
    versions = {o.domain: o.version for o in proto.opset_import}
    version = versions.get("", versions.get("ai.onnx"))
    if version is None:
        raise OnnxImportError(f"{source}: the model imports no default-domain opset; actsparse imports opsets "
                              f"{OPSETS[0]}–{OPSETS[1]}")
    if not OPSETS[0] <= version <= OPSETS[1]:
        raise OnnxImportError(
            f"{source}: opset {version} is not supported; actsparse imports ONNX opsets {OPSETS[0]}–{OPSETS[1]} "
            f"(re-export with e.g. torch.onnx.export(..., opset_version=17), or convert it with "
            f"onnx.version_converter.convert_version)")


def _check_external_data(proto, source: str, base_dir: str | None) -> None:
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    for tensor in proto.graph.initializer:
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        if base_dir is None:
            raise OnnxImportError(f"{source}: weight {tensor.name} is stored in the external file {location}; "
                                  "pass the model's path instead of a ModelProto, or load it with "
                                  "onnx.load(path, load_external_data=True)")
        if not (Path(base_dir) / location).is_file():
            raise OnnxImportError(f"{source}: the external data file {location} (holding weight {tensor.name}) "
                                  f"is missing; it must sit beside the model, in {base_dir}")


def _check_supported(proto) -> None:
    missing = [(i, n) for i, n in enumerate(proto.graph.node)
               if n.domain not in ("", "ai.onnx") or n.op_type not in HANDLERS]
    if missing:
        index, node = missing[0]
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        others = sorted({n.op_type for _, n in missing[1:]} - {node.op_type})
        detail = f"ONNX node {node.name or '<unnamed>'!r}, index {index}" + (
            f"; also unsupported: {', '.join(others)}" if others else "")
        raise UnsupportedOpError(op, module_from_name(node.name), detail=detail)


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


__all__ = ["OPSETS", "OnnxImportError", "load_model"]
