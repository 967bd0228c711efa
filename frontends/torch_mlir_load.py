"""Reading a torch-dialect module: parsing it, choosing its function, and reading what the bindings cannot.

`load_module` takes a `torch_mlir.ir.Module` (printed with its locations) or a .mlir file (text or MLIR bytecode)
and parses it with the MLIR Python bindings shipped with torch-mlir (`torch_mlir.ir`, torch dialect registered).
A file that does not parse (truncated, malformed) is one `MlirImportError` naming the line and column. The public
`func.func` (`@main`, or the only one) is the graph; a module holding ops of other dialects (lowered past the
torch dialect: linalg, tosa, stablehlo, ...) is refused, saying how to export the torch dialect.

The bindings cannot read `dense_resource` blobs, so the weights' bytes are read from the module's text: the
`{-# dialect_resources: { builtin: { key: "0x..." } } #-}` section (`Loaded.blob`). Also here: the other
attribute readers the importer needs (`resource_key`, `dense_array`, `attr_string`, `location_frames`).
torch-mlir is imported on first use (`torch_mlir_bindings`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..ir import TensorType
from ..ir.types import np_dtype
from .errors import FrontendError

_FRAME = re.compile(r'"((?:[^"\\]|\\.)*)":(\d+):(\d+)')
_RESOURCE_KEY = re.compile(r'dense_resource<("(?:[^"\\]|\\.)*"|[^>]+)>')
HINT = ("export the torch dialect with actsparse.frontends.export_mlir(model, inputs) or "
        "torch_mlir.fx.export_and_import(model, *inputs) (output_type 'raw', the default)")


class MlirImportError(FrontendError):
    """A torch-mlir module could not be read (corrupt or truncated file, not the torch dialect, missing blobs)."""


def torch_mlir_bindings():
    """(torch_mlir.fx, torch_mlir.ir, the torch dialect, FxImporter), or an error saying how to install them."""
    try:
        from torch_mlir import fx, ir
        from torch_mlir.dialects import torch as torch_d
        from torch_mlir.extras.fx_importer import FxImporter
    except ImportError as err:
        raise MlirImportError(f"the torch-mlir frontend needs the torch-mlir package (pip install "
                              f"'actsparse[mlir]'): {err}") from None
    return fx, ir, torch_d, FxImporter


@dataclass
class Loaded:
    func: Any  # the func.func operation
    text: str  # the module's text (resources included)
    source: str  # the file, or a description of the object, for messages
    path: str = ""  # the file the locations without Python frames point into
    context: Any = None
    module: Any = None
    blobs: dict[str, tuple[int, int]] = field(default_factory=dict)  # resource key -> span of its hex digits

    def blob(self, key: str, ttype: TensorType) -> np.ndarray:
        """The weight held by resource blob `key`, of type `ttype` (its bytes checked against the type)."""
        span = self.blobs.get(key)
        if span is None:
            raise MlirImportError(f"{self.source}: the weight blob {key!r} is missing from the module's "
                                  "dialect_resources section (truncated file?)")
        data = bytes.fromhex(self.text[span[0] + 8: span[1]])  # the first 4 bytes hold the alignment
        dtype = np.dtype(np_dtype(ttype.dtype))
        expected = int(np.prod(ttype.shape, dtype=np.int64)) * dtype.itemsize
        if len(data) != expected:
            raise MlirImportError(f"{self.source}: the weight blob {key!r} holds {len(data)} bytes but its "
                                  f"type {ttype} needs {expected} (truncated or corrupt file?)")
        return np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(ttype.shape)


def load_module(module_or_path) -> Loaded:
    """A torch-mlir module or a .mlir file, parsed, its @main chosen and checked to be in the torch dialect."""
    _, ir, torch_d, _ = torch_mlir_bindings()
    context = ir.Context()
    torch_d.register_dialect(context)
    context.allow_unregistered_dialects = True  # so a lowered module parses, and is refused by name below
    if isinstance(module_or_path, (str, os.PathLike)):
        path = Path(module_or_path)
        source = str(path)
        if not path.is_file():
            raise MlirImportError(f"{source}: no such MLIR file")
        data = path.read_bytes()
        if data.startswith(b"ML\xefR"):  # MLIR bytecode: parse it (elsewhere: blob names are per context), then
            scratch = ir.Context()       # work on its text form
            torch_d.register_dialect(scratch)
            scratch.allow_unregistered_dialects = True
            text = _parse(ir.Module.parse, data, scratch, source).operation.get_asm(enable_debug_info=True)
            module = _parse(ir.Module.parse, text, context, source)
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise MlirImportError(f"{source}: not a readable MLIR module (neither text nor MLIR bytecode)") \
                    from None
            if "{-#" in text and not text.rstrip().endswith("#-}"):  # (MLIR's parser crashes on this one)
                line = text.count("\n", 0, text.rfind("{-#")) + 1
                raise MlirImportError(f"{source}: not a readable MLIR module (truncated or malformed?): its "
                                      f"resource section (from line {line}, holding the weights) does not end "
                                      "with `#-}`")
            module = _parse(lambda _, ctx: ir.Module.parseFile(str(path), ctx), text, context, source)
    elif hasattr(module_or_path, "operation") and type(module_or_path).__module__.startswith("torch_mlir"):
        source, path = "torch-mlir module", None
        text = module_or_path.operation.get_asm(enable_debug_info=True)
        module = _parse(ir.Module.parse, text, context, source)
    else:
        raise MlirImportError(f"expected a path to a .mlir file or a torch_mlir.ir.Module, got "
                              f"{type(module_or_path).__name__}")
    func = main_func(module, source)
    _check_dialect(func, source)
    return Loaded(func, text, source, str(path) if path is not None else "", context, module, _blob_spans(text))


def _parse(parse, text, context, source: str):
    from torch_mlir import ir

    try:
        return parse(text, context)
    except ir.MLIRError as err:
        diags = err.error_diagnostics
        where = ""
        if diags:
            found = _FRAME.search(str(diags[0].location))
            where = f" at line {found.group(2)}, column {found.group(3)}" if found else ""
        message = diags[0].message if diags else str(err).strip().splitlines()[-1]
        raise MlirImportError(f"{source}: not a readable MLIR module (truncated or malformed?){where}: "
                              f"{message}") from None


def main_func(module, source: str):
    """The function holding the model: `@main`, else the only public `func.func`."""
    funcs = [op for op in module.body.operations if op.operation.name == "func.func"]
    public = [f for f in funcs if "sym_visibility" not in f.attributes]
    named = [f for f in funcs if str(f.attributes["sym_name"]) == '"main"']
    chosen = named or (public if len(public) == 1 else [])
    if not chosen:
        found = ", ".join(str(f.attributes["sym_name"]) for f in funcs) or "none"
        raise MlirImportError(f"{source}: expected one public func.func (@main) holding the model, found {found}; "
                              f"{HINT}")
    return chosen[0].operation


def _check_dialect(func, source: str) -> None:
    ops = [op.operation.name for op in func.regions[0].blocks[0].operations]
    foreign = sorted({n for n in ops if not n.startswith(("torch.", "func.return"))})
    argument_types = [str(a.type) for a in func.regions[0].blocks[0].arguments]
    if foreign or any(not t.startswith("!torch.") for t in argument_types):
        dialects = sorted({n.split(".")[0] for n in foreign}) or ["builtin tensors"]
        examples = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "") or ", ".join(argument_types[:2])
        raise MlirImportError(f"{source}: not a torch-dialect module: @main holds {', '.join(dialects)} ops "
                              f"({examples}), i.e. it was lowered past the torch dialect; {HINT}")


def _blob_spans(text: str) -> dict[str, tuple[int, int]]:
    """key -> (start, end) of its hex digits in `text`, from the `dialect_resources` section."""
    start = text.rfind("{-#")
    if start < 0:
        return {}
    found = {}
    for m in re.finditer(r'("(?:[^"\\]|\\.)*"|[\w.$\-]+)\s*:\s*"0x([0-9A-Fa-f]*)"', text[start:]):
        key = m.group(1)
        found[key[1:-1] if key.startswith('"') else key] = (start + m.start(2), start + m.end(2))
    return found


# --- attributes and locations ---------------------------------------------------------------------------------
def location_frames(location) -> list[tuple[str, int, int]]:
    """(file, line, column) of an MLIR location, innermost first (callsite(callee at caller))."""
    return [(f, int(line), int(col)) for f, line, col in _FRAME.findall(str(location))]


def attr_string(attr) -> str:
    """A string attribute's text, unquoted."""
    text = str(attr)
    return text[1:-1] if text.startswith('"') else text


def resource_key(attr) -> str | None:
    """The blob key of a `dense_resource<key>` attribute (None for any other attribute)."""
    found = _RESOURCE_KEY.match(str(attr))
    if found is None:
        return None
    key = found.group(1)
    return key[1:-1] if key.startswith('"') else key


def dense_array(attr, ttype: TensorType) -> np.ndarray:
    """An inline `dense<...>` attribute (splat or not) as a numpy array of type `ttype`."""
    from torch_mlir import ir

    dtype = np.dtype(np_dtype(ttype.dtype))
    dense = ir.DenseElementsAttr(attr)
    if dense.is_splat:
        splat = dense.get_splat_value()
        value = ir.BoolAttr(splat).value if ttype.dtype == "bool" else (
            ir.FloatAttr(splat).value if ttype.dtype.startswith("f") else ir.IntegerAttr(splat).value)
        return np.full(ttype.shape, value, dtype=dtype)
    kind = ir.DenseFPElementsAttr if ttype.dtype.startswith("f") else ir.DenseIntElementsAttr
    return np.array([v for v in kind(attr)], dtype=dtype).reshape(ttype.shape)


__all__ = ["HINT", "Loaded", "MlirImportError", "attr_string", "dense_array", "load_module", "location_frames",
           "main_func", "resource_key", "torch_mlir_bindings"]
