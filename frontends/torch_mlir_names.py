"""Weight names and source locations for the torch-mlir importer (MLIR keeps neither FQNs nor module paths).

Weights (`name_weights`): every `torch.vtensor.literal(dense_resource<key>)` is a weight. Names, in this order:
(a) the key itself when it is not torch-mlir's automatic `torch_tensor_<shape>_<dtype>[_n]` — `export_mlir`
names every blob by its state-dict FQN, so its modules and files carry their names; (b) with `state_dict=`, the
state-dict entry holding exactly the same values (equal-valued entries — fresh norm weights, tied embeddings —
are given out in first-use / state-dict order); (c) otherwise the key (sanitized). torch-mlir's FX importer
itself keeps no FQNs. A wrapper module holding the whole model (`CausalLMLogits`) is dropped from names and
paths, as the other frontends do (`onnx_names.wrapper_prefix`).

Locations: an IR node's `loc` is "<module path> (<file>:<line>)" like the torch frontend's. The file:line
(`source_of`) is the innermost frame outside torch of the op's MLIR `callsite(...)` location (or the op's
line:col in the .mlir file when it was printed without locations). Module paths are inferred (`infer_modules`):
an op reading a named weight is in that weight's module (`...mlp.gate_proj`); another op is placed by its call
stack, in the module whose forward frame it shares with the nearest such op (frames that call the same function
from the same line belong to one invocation). Modules without weights of their own (`act_fn`) are therefore
reported as their parent (`...mlp`). Without Python locations, ops are placed by where their operands come from
(a weight's module, or the common module of their operands' modules), else in `<unknown>` (`UNKNOWN`).
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .onnx_names import sanitize, wrapper_prefix
from .torch_importer import TORCH_DTYPES
from .torch_mlir_load import Loaded, resource_key

AUTO_BLOB = re.compile(r"^torch_tensor_[\d_]*_?torch\.\w+?(_\d+)?$")  # torch-mlir's own blob names
WEIGHT_VIEWS = ("torch.aten.permute", "torch.aten.t", "torch.aten.transpose.int", "torch.aten.view",
                "torch.aten.unsqueeze", "torch.aten.expand")  # a decomposition's views of a weight
UNKNOWN = "<unknown>"  # the module path of an op that neither a weight nor a call stack places
_TORCH_DIRS = (os.path.dirname(torch.__file__) + os.sep, f"{os.sep}site-packages{os.sep}torch{os.sep}")

Frame = tuple[str, int, int]  # (file, line, column) of one MLIR location


# --- weights --------------------------------------------------------------------------------------------------
@dataclass
class WeightNames:
    names: dict[str, str]  # blob key -> weight name (the FQN when known), the wrapper prefix dropped
    known: set[str]  # the names that are module paths (FQNs), so they can place ops
    prefix: str  # the dropped wrapper prefix with its trailing dot, or ''


def name_weights(ops, blob_array: Callable[[str], np.ndarray], state_dict=None,
                 prefix: str | None = None) -> WeightNames:
    """Names for the resource literals among `ops`; `blob_array(key)` reads a blob, for matching `state_dict`.
    `prefix` is the module path to drop (None: a wrapper holding the whole model, if there is one)."""
    keys = []
    for op in ops:
        if op.name == "torch.vtensor.literal":
            key = resource_key(op.attributes["value"])
            if key is not None and key not in keys:
                keys.append(key)
    matcher = _StateDictMatcher(state_dict) if state_dict is not None else None
    names, known = {}, []
    for key in keys:
        if not AUTO_BLOB.match(key):
            names[key] = key
            known.append(key)
        elif matcher is not None:
            array = blob_array(key)
            fqn = matcher.match(array)
            names[key] = fqn or sanitize(key)
            if fqn:
                known.append(fqn)
        else:
            names[key] = sanitize(key)
    prefix = prefix if prefix is not None else wrapper_prefix([], known)
    prefix = prefix + "." if prefix else ""
    known_names = {strip_prefix(names[k], prefix) for k in keys if names[k] in known}
    return WeightNames({k: strip_prefix(v, prefix) for k, v in names.items()}, known_names, prefix)


def strip_prefix(path: str, prefix: str) -> str:
    """`path` without the wrapper `prefix` (given with its trailing dot); the wrapper itself is ''."""
    if prefix and path.startswith(prefix):
        return path[len(prefix):]
    return "" if prefix and path == prefix[:-1] else path


class _StateDictMatcher:
    """Weight names for automatically named blobs: the state-dict entry with the same values (first unclaimed)."""

    def __init__(self, state_dict):
        self.groups: dict[tuple, list[tuple[str, np.ndarray]]] = {}
        self.claimed: set[str] = set()
        for name, tensor in state_dict.items():
            if not isinstance(tensor, torch.Tensor) or tensor.dtype not in TORCH_DTYPES:
                continue
            array = tensor.detach().cpu().numpy()
            self.groups.setdefault((array.shape, array.dtype.str), []).append((name, array))

    def match(self, array: np.ndarray) -> str | None:
        candidates = [name for name, a in self.groups.get((array.shape, array.dtype.str), [])
                      if np.array_equal(a, array)]
        for name in candidates:
            if name not in self.claimed:
                self.claimed.add(name)
                return name
        return candidates[0] if candidates else None


def arg_names(func, count: int) -> list[str]:
    """The input names: `actsparse.name` argument attributes (set by `export_mlir`), else `arg0`, `arg1`, ..."""
    names = [f"arg{i}" for i in range(count)]
    if "arg_attrs" in func.attributes:
        for i, found in enumerate(re.finditer(r"\{([^{}]*)\}", str(func.attributes["arg_attrs"]))):
            named = re.search(r'actsparse\.name\s*=\s*"([^"]+)"', found.group(1))
            if named and i < count:
                names[i] = sanitize(named.group(1))
    return names


# --- locations ------------------------------------------------------------------------------------------------
def infer_modules(ops, frames: list[list[Frame]], names: dict[str, str], known: set[str]) -> list[str | None]:
    """The module path of every op (None: unknown), from named weights and call stacks (module docstring).
    `frames[i]` are op i's location frames, `names` the weight names by blob key, `known` those that are FQNs."""
    literal_name = {}
    for op in ops:
        if op.name == "torch.vtensor.literal":
            key = resource_key(op.attributes["value"])
            if key is not None and names[key] in known:
                literal_name[op.results[0]] = names[key]
        elif op.name in WEIGHT_VIEWS and op.operands[0] in literal_name:  # permute(W): still W for users
            literal_name[op.results[0]] = literal_name[op.operands[0]]
    modules: list[str | None] = [None] * len(ops)
    table: dict[tuple, list] = {}  # (caller chain, file of the frame) -> [(op index, module), ...]
    for index, op in enumerate(ops):
        read = [literal_name[v] for v in op.operands if v in literal_name]
        if not read:
            continue
        module = read[0].rsplit(".", 1)[0] if "." in read[0] else ""
        modules[index] = module
        stack = [(f, line) for f, line, _ in frames[index]]
        if not stack or not is_python(frames[index][0]):
            continue
        for k in range(len(stack)):
            table.setdefault((tuple(stack[k + 1:]), stack[k][0]), []).append((index, _ancestor(module, k)))
    for index, stack in enumerate(frames):
        if modules[index] is not None or not stack or not is_python(stack[0]):
            continue
        stack = [(f, line) for f, line, _ in stack]
        for j in range(len(stack)):
            entries = table.get((tuple(stack[j + 1:]), stack[j][0]))
            if entries:
                at = bisect.bisect_left(entries, (index,))  # the nearest such op, before or after
                near = entries[max(at - 1, 0): at + 1]
                modules[index] = min(near, key=lambda e: abs(e[0] - index))[1]
                break
    producer = {r: i for i, op in enumerate(ops) for r in op.results}
    for index, op in enumerate(ops):  # the rest (no Python frames): where their operands come from
        if modules[index] is None:
            found = [modules[producer[v]] for v in op.operands if v in producer and str(v.type).startswith(
                "!torch.vtensor") and modules[producer[v]] is not None]
            modules[index] = _common(found) if found else None
    return modules


def source_of(frames: list[Frame], path: str) -> str:
    """`file:line` of the innermost Python frame outside torch, else the op's `file:line:col` in the .mlir file
    (`path`, when known), else ''."""
    python = [f for f in frames if is_python(f) and not f[0].startswith(("<", _TORCH_DIRS[0]))
              and _TORCH_DIRS[1] not in f[0]]  # (`<eval_with_key>`: generated code, no source line)
    if python:
        return f"{python[0][0]}:{python[0][1]}"
    if frames and not is_python(frames[0]):
        return f"{path or frames[0][0]}:{frames[0][1]}:{frames[0][2]}"
    return ""


def text_position(loaded: Loaded, ops, frames: list[Frame], index: int) -> str:
    """Where op `index` is in the module's text: `file:line:col` (the n-th op of its name in the body)."""
    op = ops[index]
    if frames and not is_python(frames[0]):
        file, line, col = frames[0]
        return f"{loaded.path or file}:{line}:{col}"
    nth = sum(1 for o in ops[:index] if o.name == op.name)
    body = loaded.text[: loaded.text.rfind("{-#")] if "{-#" in loaded.text else loaded.text
    pattern = re.compile(rf"(?<![\w.]){re.escape(op.name)}(?![\w.])")
    for i, m in enumerate(pattern.finditer(body)):
        if i == nth:
            line = body.count("\n", 0, m.start()) + 1
            col = m.start() - body.rfind("\n", 0, m.start())
            loc = f", loc({', '.join(f'{os.path.basename(f)}:{ln}:{c}' for f, ln, c in frames[:3])})" \
                if frames else ""
            return f"{loaded.path or loaded.source}:{line}:{col}{loc}"
    return loaded.path or loaded.source


def is_python(frame: Frame) -> bool:
    """A frame in Python source (not a line of a .mlir file or of stdin)."""
    return not frame[0].endswith(".mlir") and frame[0] not in ("-", "<stdin>")


def _common(paths: list[str]) -> str:
    """The deepest module path containing all of `paths`."""
    common = []
    for parts in zip(*(p.split(".") for p in paths)):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def _ancestor(path: str, levels: int) -> str:
    """`model.layers.0.mlp` up one level -> `model.layers.0`, up two -> `model` (a list index is no level)."""
    parts = path.split(".") if path else []
    for _ in range(levels):
        if not parts:
            break
        last = parts.pop()
        if last.isdigit() and parts:
            parts.pop()
    return ".".join(parts)


__all__ = ["AUTO_BLOB", "UNKNOWN", "WEIGHT_VIEWS", "WeightNames", "arg_names", "infer_modules", "is_python",
           "name_weights", "source_of", "strip_prefix", "text_position"]
