"""Names and locations of imported graphs: module paths, the wrapper prefix to drop, weight names.

An ONNX node's location is its module path, from the dynamo exporter's `name_scopes` metadata (plus the source
file:line of its stack trace) or from the TorchScript exporter's node names
(`/model/layers.0/mlp/gate_proj/MatMul` -> `model.layers.0.mlp.gate_proj`). A wrapper module that only holds the
model (e.g. `hf.CausalLMLogits`, attribute `model`) is dropped from paths and weight names (`wrapper_prefix`).
Exporter-made names (`onnx::MatMul_12`, `val_7`) are told apart from module paths by `is_anonymous`.

These live apart from the importer because the torch-mlir frontend names its weights and finds its wrapper the
same way (`wrapper_prefix`, `sanitize`).
"""

from __future__ import annotations

import ast
import os
import re

_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
_ANONYMOUS = re.compile(r"^(onnx::|val_\d|/|_v_)|::|_output_\d+$")


def is_anonymous(name: str) -> bool:
    """An exporter-made name (`onnx::MatMul_12`, `val_7`, `/model/Constant_output_0`), not a module path."""
    return bool(_ANONYMOUS.search(name))


def module_from_name(name: str) -> str:
    """`/model/layers.0/mlp/gate_proj/MatMul` -> `model.layers.0.mlp.gate_proj` (TorchScript exporter names)."""
    if not name.startswith("/"):
        return ""
    return ".".join(p for p in name.split("/")[1:-1] if p)


def node_location(node) -> tuple[str, str]:
    """(module path, source file:line) of an ONNX node."""
    meta = {p.key: p.value for p in node.metadata_props}
    module = module_from_name(node.name)
    scopes = meta.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            entries = [s for s in ast.literal_eval(scopes)[:-1] if s and not s.startswith("_empty")]
            module = entries[-1] if entries else ""
        except (ValueError, SyntaxError):
            pass
    frames = [(f, ln) for f, ln in _FRAME.findall(meta.get("pkg.torch.onnx.stack_trace", ""))
              if f"{os.sep}torch{os.sep}" not in f]
    return module, (f"{os.path.basename(frames[-1][0])}:{frames[-1][1]}" if frames else "")


def wrapper_prefix(modules: list[str], weight_names: list[str]) -> str:
    """The one top-level module every located node and named weight sits under (a pure wrapper), or ''.

    Not a container: `layers.0.mlp` / `layers.1.mlp` keep their `layers`. `modules` are node locations (module
    paths), `weight_names` initializer or parameter names; exporter-made names and names without a dot are
    ignored (they say nothing about the wrapper).
    """
    paths = [m for m in modules if m] + [w for w in weight_names if not is_anonymous(w) and "." in w]
    heads = {p.split(".")[0] for p in paths}
    if len(heads) == 1 and not any(p.split(".")[1:2] and p.split(".")[1].isdigit() for p in paths):
        return heads.pop()
    return ""


def sanitize(name: str) -> str:
    """A weight name the text form and codegen accept: `/a/b:0` -> `a.b_0`."""
    return re.sub(r"[^\w.]", "_", name.strip("/").replace("/", ".")) or "w"


__all__ = ["is_anonymous", "module_from_name", "node_location", "sanitize", "wrapper_prefix"]
