"""What a compiled module's call accepts, checked before anything runs (`ir/limits.py`): shapes that bind the
graph's symbols, dtypes, integer values within their type, token ids within the vocabulary and the sequence within
the model's positions — an out-of-range id would otherwise read outside the embedding table. Any other input is an
InputError naming the input and what it takes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from ..ir import Graph, Node, TensorType
from ..ir.interpreter import bind_symbols
from ..ir.limits import InputLimits, too_short
from ..ir.types import np_dtype


def is_torch(value) -> bool:
    return type(value).__module__.startswith("torch")


def as_arrays(inputs: Sequence) -> list[np.ndarray]:
    """numpy arrays of the call's inputs (torch tensors copied off their device)."""
    try:
        return [np.asarray(i.detach().cpu().numpy() if is_torch(i) else i) for i in inputs]
    except (ValueError, TypeError) as err:
        raise InputError(f"inputs are not arrays ({err})") from None


class InputCheck:
    """`check(arrays)` raises an InputError for anything the module compiled for `inputs` ((name, type) pairs)
    cannot take; `limits` (None: shapes and dtypes only) bounds the symbolic dims and the token ids."""

    def __init__(self, inputs: list[tuple[str, TensorType]], limits: InputLimits | None):
        self.inputs = inputs
        self.limits = limits
        self._graph = None  # built once: a graph per call cost as much as a small kernel

    def __call__(self, arrays: Sequence[np.ndarray]) -> None:
        expected = ", ".join(f"{n}: {t}" for n, t in self.inputs)
        if self._graph is None:
            self._graph = Graph([Node("input", (), {"name": n}, t) for n, t in self.inputs], [])
        try:
            env = bind_symbols(self._graph, arrays)
        except ValueError as err:
            hint = static_hint(self.inputs, arrays)
            raise InputError(f"{err} (the module was compiled for inputs {expected}{hint})") from None
        for array, (name, ttype) in zip(arrays, self.inputs):
            check_dtype(name, array, ttype)
        limits = self.limits
        if limits is None:
            return
        for dim, size in env.items():
            bound = limits.dim_bounds.get(dim)
            if bound is not None and size > bound:
                raise InputError(f"{dim} = {size} exceeds the {bound} positions the model has; give at most "
                                 f"{bound} (for longer text, decode with a sliding window)")
            if size < limits.dim_least.get(dim, 0):
                raise InputError(too_short(dim, size, limits.dim_least[dim]))
        for array, (name, _) in zip(arrays, self.inputs):
            bound = limits.index_bounds.get(name)
            if bound is not None and array.size and (array.min() < 0 or array.max() >= bound):
                bad = array.min() if array.min() < 0 else array.max()
                raise InputError(f"input {name} holds id {bad}, outside the vocabulary of {bound} tokens "
                                 f"(valid: 0 .. {bound - 1})")


STATIC_WAY_OUT = ("; its shapes are static: to take other sizes, compile a model whose dims are symbolic (a "
                   "torch.export.ExportedProgram exported with dynamic_shapes, e.g. {0: torch.export.Dim('batch')}, or "
                   "an ONNX file with named dims)")


def static_hint(inputs: list[tuple[str, TensorType]], arrays: Sequence[np.ndarray]) -> str:
    """The way out of a shape error from inputs of the right ranks where no input has a symbolic dim (other sizes
    of the same arrays need another compile); "" otherwise."""
    symbolic = any(not isinstance(d, int) for _, t in inputs for d in t.shape)
    ranks = len(arrays) == len(inputs) and all(np.ndim(a) == len(t.shape) for a, (_, t) in zip(arrays, inputs))
    return STATIC_WAY_OUT if ranks and not symbolic else ""


def check_dtype(name: str, array: np.ndarray, ttype: TensorType) -> None:
    kind = np.dtype(np_dtype(ttype.dtype)).kind
    if array.dtype.kind not in {"f": "fiub", "i": "iub", "u": "iub", "b": "b"}.get(kind, "fiub"):
        raise InputError(f"input {name} expects {ttype.dtype} values, got {array.dtype}"
                         + (" (token ids are integers)" if kind in "iu" else ""))
    if kind in "iu" and array.size and array.dtype.kind in "iu":
        info = np.iinfo(np_dtype(ttype.dtype))
        if array.min() < info.min or array.max() > info.max:
            raise InputError(f"input {name} holds values outside {ttype.dtype}'s range")
