"""Values known at import time (`Const`) and folding IR ops over them.

A value of the ONNX importer is either static (a `Const`: a numpy array known at import time, from
initializers, Constant nodes and everything computed only from them and from shapes) or dynamic (an IR `Node`).
Shapes may hold the symbolic sequence length, so a `Const` may be an object array of ints and sympy
expressions. `fold` runs an IR op on static inputs with the op table's own numpy reference (and the symbolic
rules below for object arrays); `normalize` / `make_const` turn object arrays back into numeric ones when every
element is a plain number; `literal` spells a static value as a `constant` node attribute.

Kept apart from the importer (`onnx.py`) and the op table (`onnx_ops.py`), which both build on it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from ..ir import TensorType, op_def
from ..ir.types import is_float, np_dtype
from .errors import FrontendError

ONNX_DTYPES = {1: "f32", 10: "f16", 11: "f64", 7: "i64", 6: "i32", 9: "bool"}


@dataclass(eq=False)
class Const:
    """A value known at import time: numeric, or an object array of ints / sympy expressions (shapes)."""

    array: np.ndarray
    dtype: str
    name: str = ""

    @property
    def shape(self) -> tuple:
        return self.array.shape

    @property
    def symbolic(self) -> bool:
        return self.array.dtype == object

    def uniform(self):
        """The single value of a numeric array whose elements are all equal, else None."""
        if self.symbolic or self.array.size == 0:
            return None
        flat = self.array.reshape(-1)
        return flat[0].item() if (flat == flat[0]).all() else None


def make_const(values, dtype: str) -> Const:
    """A static tensor from a (nested) list that may hold sympy expressions; numeric when it can be."""
    array = np.array(values, dtype=object)
    return normalize(array, dtype)


def normalize(array: np.ndarray, dtype: str) -> Const:
    """Object arrays whose elements are all plain numbers become numeric arrays of `dtype`."""
    if array.dtype == object:
        flat = array.reshape(-1).tolist()
        if all(_is_number(x) for x in flat):
            array = np.array([_to_number(x) for x in flat], dtype=np_dtype(dtype)).reshape(array.shape)
        else:
            array = np.array([_to_number(x) if _is_number(x) else x for x in flat] or [],
                             dtype=object).reshape(array.shape)
    else:
        array = array.astype(np_dtype(dtype), copy=False)
    return Const(array, dtype)


def _is_number(x) -> bool:
    return isinstance(x, (int, float, bool, np.number, np.bool_)) or bool(getattr(x, "is_number", False))


def _to_number(x):
    if isinstance(x, (int, float, bool, np.number, np.bool_)):
        return x
    return int(x) if x.is_Integer else float(x)


def literal(array: np.ndarray, dtype: str):
    """A (nested) tuple of Python scalars for a `constant` node; ±inf becomes the dtype's extreme value."""
    array = np.asarray(array)
    if is_float(dtype):
        big = float(np.finfo(np_dtype(dtype)).max)
        array = np.clip(array.astype(np.float64), -big, big)
        if np.isnan(array).any():
            raise FrontendError("a constant holds NaN, which the IR's text form cannot spell")
    value = array.tolist()
    return _tuples(value) if isinstance(value, list) else value


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def fold(cx, op: str, inputs: list[Const], attrs: dict, ttype: TensorType) -> Const:
    """Run IR op `op` at import time with its numpy reference (object arrays: the symbolic rules below)."""
    opdef = op_def(op)
    attrs = {**{k: v for k, v in opdef.attrs.items() if k not in attrs}, **attrs}
    arrays = [i.array for i in inputs]
    if any(i.symbolic for i in inputs):
        # numpy's object ops give a bare sympy expression, not a 0-d array, for 0-d operands (`seq - seq`)
        return normalize(np.asarray(_fold_symbolic(cx, op, arrays, attrs, ttype), dtype=object), ttype.dtype)
    with np.errstate(all="ignore"):
        out = opdef.reference(*arrays, attrs, {})
    return Const(np.asarray(out).astype(np_dtype(ttype.dtype)), ttype.dtype)


def _trunc_div(a, b):
    if isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)):
        return int(a / b)
    q = a / b
    if not getattr(q, "is_integer", False):
        raise ValueError(f"{a} / {b} is not a whole number")
    return q


def _fold_symbolic(cx, op, arrays, attrs, ttype):
    sympy = cx.sympy
    arrays = [a.astype(object) if not (op == "index_select" and i == 1) else a for i, a in enumerate(arrays)]
    structural = {"reshape", "permute", "expand", "slice", "concat", "index_select"}
    if op in structural:
        return np.asarray(op_def(op).reference(*arrays, attrs, {}), dtype=object)
    if op == "cast":
        if is_float(ttype.dtype):
            raise cx.error("a symbolic size is converted to a float, which the IR cannot express; export with "
                           "static shapes")
        if ttype.dtype == "bool":
            return np.frompyfunc(lambda x: _truth(cx, sympy.Ne(x, 0)), 1, 1)(arrays[0])
        return arrays[0]
    if op == "where":
        return np.where(arrays[0].astype(bool), arrays[1], arrays[2])
    compare = {"eq": sympy.Eq, "ne": sympy.Ne, "lt": sympy.Lt, "le": sympy.Le, "gt": sympy.Gt, "ge": sympy.Ge}
    if op in compare:
        fn = compare[op]
        return np.frompyfunc(lambda a, b: _truth(cx, fn(a, b)), 2, 1)(*arrays)
    arith = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": _trunc_div,
             "maximum": sympy.Max, "minimum": sympy.Min, "neg": operator.neg}
    if op not in arith:
        raise cx.error(f"{op} of a symbolic size cannot be computed at import time; export with static shapes")
    try:
        return np.frompyfunc(arith[op], len(arrays), 1)(*arrays)
    except (ValueError, TypeError) as err:
        raise cx.error(f"{op} of symbolic sizes: {err}; export with static shapes") from None


def _truth(cx, relation) -> bool:
    if relation in (cx.sympy.true, cx.sympy.false) or isinstance(relation, bool):
        return bool(relation)
    raise cx.error(f"the condition `{relation}` depends on the symbolic sequence length; export with static "
                   "shapes")


__all__ = ["ONNX_DTYPES", "Const", "fold", "literal", "make_const", "normalize"]
