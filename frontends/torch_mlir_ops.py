"""The torch-mlir op tables: how each op of @main's body becomes IR nodes or Python values.

- `VALUE_OPS[mlir name](cx, op)`: ops that make Python values, not tensors (lists, tuples, sizes, symbols,
  literals, asserts); `torch.constant.*` ops are read by `constant_value`.
- `SCALAR_FNS[base name]`: size arithmetic and scalar casts (`torch.aten.mul.int`, `torch.aten.Int.bool`, ...),
  on ints and sympy sizes (`evaluate_scalar`).
- `MLIR_OPS[aten name](cx, op, *args, **kwargs)`: the tensor ops whose torch.export handlers read FX metadata,
  and torch-mlir's decomposed forms folded back (`mm(x, permute(@W))` -> `linear`, `view -> bmm -> view` ->
  `matmul`); every other `torch.aten.*` / `torch.prims.*` op goes through the torch.export frontend's table
  (`torch_ops.lookup`), with an `MlirOp` where those handlers take an FX node.

`cx` is the importer (`torch_mlir.MlirImporter`); `has_handler` says whether an op can be translated at all.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch

from ..ir import Node
from ..ir.types import positive_axis
from .torch_importer import TORCH_DTYPES
from .torch_mlir_load import attr_string
from .torch_ops import lookup
from .torch_ops_shape import slice_of

IR_TO_TORCH = {v: k for k, v in TORCH_DTYPES.items()}
_SCALAR_TYPES = ("!torch.int", "!torch.float", "!torch.bool", "!torch.number")


@dataclass(eq=False)
class MlirOp:
    """One MLIR op as the aten handlers see it (where they take an FX node)."""

    op: Any
    name: str  # torch.aten.add.Tensor
    index: int
    target: Any = None  # torch.ops.aten.add.Tensor, when there is one

    @property
    def aten(self) -> str:
        """`aten.add.Tensor` / `aten.linear` / `prims.convert_element_type`: the torch op's name."""
        return self.name.split(".", 1)[1]


def torch_target(name: str):
    """The torch op overload of an MLIR op name (`torch.aten.add.Tensor` -> `torch.ops.aten.add.Tensor`), or None."""
    parts = name.split(".")
    if len(parts) < 3 or parts[1] not in ("aten", "prims"):
        return None
    packet = getattr(getattr(torch.ops, parts[1]), parts[2], None)
    if packet is None:
        return None
    return getattr(packet, parts[3] if len(parts) > 3 else "default", None)


def has_handler(op) -> bool:
    """Whether the MLIR op `op` can be translated (by the tables here or `torch_ops`)."""
    name = op.name
    if name in VALUE_OPS or name.startswith("torch.constant.") or name == "func.return":
        return True
    if is_scalar_op(op):
        return name.split(".")[2] in SCALAR_FNS
    if not name.startswith(("torch.aten.", "torch.prims.")):
        return False
    aten = name.split(".", 1)[1]
    if aten.split(".")[1].endswith("_") and not aten.split(".")[1].startswith("_"):
        return False  # in-place: a value-semantic module never needs one
    return aten in MLIR_OPS or lookup(aten, None) is not None


def is_scalar_op(op) -> bool:
    """An op on and to Python scalars only (size arithmetic), not tensors."""
    return bool(op.results) and all(str(r.type) in _SCALAR_TYPES for r in op.results) and \
        all(str(v.type) in _SCALAR_TYPES for v in op.operands) and op.name.startswith(("torch.aten.",
                                                                                        "torch.prim."))


def evaluate_scalar(cx, op: MlirOp):
    """Size arithmetic and scalar casts (`torch.aten.mul.int`, `torch.aten.Int.bool`, ...), with sympy."""
    base = op.name.split(".")[2]
    fn = SCALAR_FNS.get(base)
    if fn is None:
        raise cx.error(f"the scalar op {op.name} is not supported")
    operands = [cx.values[v] for v in op.op.operands]
    result = fn(*operands)
    if isinstance(result, cx.sympy.logic.boolalg.BooleanAtom):
        return bool(result)
    if isinstance(result, cx.sympy.Rel):
        raise cx.error(f"the condition `{result}` depends on the symbolic sequence length; export with "
                       "static shapes")
    return result


def constant_value(op):
    """A `torch.constant.*` op's value as a Python value (None, int, float, bool, str)."""
    from torch_mlir import ir

    kind = op.name.rsplit(".", 1)[1]
    if kind == "none":
        return None
    attr = op.attributes["value"]
    if kind == "int":
        return ir.IntegerAttr(attr).value
    if kind == "float":
        return ir.FloatAttr(attr).value
    if kind == "bool":
        return ir.BoolAttr(attr).value
    if kind == "number":
        return ir.FloatAttr(attr).value if "f64" in str(attr) else ir.IntegerAttr(attr).value
    return attr_string(attr)  # str, device


# --- value ops: the ones that make Python values, not tensors ----------------------------------------------
def _list(cx, op):
    return [cx.values[v] for v in op.op.operands]


def _unpack(cx, op):
    parts = cx.values[op.op.operands[0]]
    return tuple(parts) if len(op.op.results) > 1 else parts[0]


def _size(cx, op):  # torch.aten.size.int(t, dim) -> the dim, as an int or a sympy symbol
    x, axis = cx.values[op.op.operands[0]], cx.values[op.op.operands[1]]
    d = x.shape[positive_axis(axis, x.type.rank)]
    if isinstance(d, int):
        return d
    symbol = next((s for s, n in cx.symbols.items() if n == d), None)
    return symbol if symbol is not None else cx.sympy.Symbol(d, integer=True)


def _numel(cx, op):
    x = cx.values[op.op.operands[0]]
    total = 1
    for d in x.shape:
        total = total * (d if isinstance(d, int) else next(s for s, n in cx.symbols.items() if n == d))
    return total


def _nothing(cx, op):
    return None


def _num_to_tensor(cx, op):  # torch.prim.NumToTensor.Scalar(n) -> a 0-d constant
    return cx.tensor(cx.value(op.op.operands[0]), cx.out(op).dtype)


VALUE_OPS = {
    "torch.prim.ListConstruct": _list, "torch.prim.ListUnpack": _unpack,
    "torch.prim.TupleConstruct": lambda cx, op: tuple(_list(cx, op)), "torch.prim.TupleUnpack": _unpack,
    "torch.prim.TupleIndex": lambda cx, op: cx.values[op.op.operands[0]][cx.value(op.op.operands[1])],
    "torch.aten.size.int": _size, "torch.aten.numel": _numel,
    "torch.symbolic_int": lambda cx, op: next(iter(s for s in cx.symbols if s.name == attr_string(
        op.op.attributes["symbol_name"])), None),
    "torch.bind_symbolic_shape": _nothing, "torch.runtime.assert": _nothing,
    "torch.vtensor.literal": lambda cx, op: cx.literal(op),
    "torch.prim.NumToTensor.Scalar": _num_to_tensor,
}


def _truediv(a, b):
    return a / b


SCALAR_FNS = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": _truediv, "floordiv": operator.floordiv,
    "remainder": operator.mod, "fmod": operator.mod, "neg": operator.neg, "eq": operator.eq, "ne": operator.ne,
    "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
    "Int": int, "Float": float, "Bool": bool, "ScalarImplicit": lambda x: x, "max": max, "min": min,
    "__and__": operator.and_, "__or__": operator.or_, "__not__": operator.not_,
}


# --- tensor ops whose torch.export handlers read FX metadata, and torch-mlir's decomposed forms --------------
def _torch_dtype(dtype: str):
    return IR_TO_TORCH[dtype]


def _compare(op_name):
    def handle(cx, node, a, b):  # a <op> b, both in torch's promoted dtype (tensors outweigh scalars)
        probes = []
        for v in (a, b):
            if isinstance(v, Node):
                probes.append(torch.empty([1] * v.type.rank, dtype=_torch_dtype(v.dtype)))
            else:
                probes.append(v if isinstance(v, (bool, int, float)) else 0)
        dtype = TORCH_DTYPES[torch.result_type(*probes)]
        return cx.emit(op_name, [cx.tensor(a, dtype), cx.tensor(b, dtype)])
    return handle


def _split(cx, node, x, size_or_sizes, dim=0):  # split / split_with_sizes / chunk -> slices, sizes per MLIR
    axis, start, parts = positive_axis(dim, x.type.rank), 0, []
    user = next((u.owner for u in node.op.results[0].uses), None)
    if user is None or user.name != "torch.prim.ListUnpack":
        raise cx.error("a split whose parts are not unpacked (torch.prim.ListUnpack) is not supported")
    for value in user.results:
        size = cx.type_of(value).shape[axis]
        if isinstance(size, str):
            raise cx.error(f"splitting the symbolic dim `{size}` cannot be expressed; export with static shapes")
        parts.append(slice_of(cx, x, axis, start, start + size))
        start += size
    return parts


def _unbind(cx, node, x, dim=0):
    axis = positive_axis(dim, x.type.rank)
    shape = tuple(d for i, d in enumerate(x.shape) if i != axis)
    return [cx.emit("reshape", [slice_of(cx, x, axis, i, i + 1)], shape=shape) for i in range(x.shape[axis])]


def _all(cx, node, x, dim=None, keepdim=False):  # all(x, dims) -> eq(max(cast(not x, f32), dims), 0)
    dims = [dim] if isinstance(dim, int) else list(dim or range(x.type.rank))
    none_false = cx.emit("max", [cx.cast(cx.emit("logical_not", [cx.cast(x, "bool")]), "f32")],
                         axes=tuple(positive_axis(d, x.type.rank) for d in dims), keepdim=bool(keepdim))
    return cx.emit("eq", [none_false, cx.const(0.0, "f32")])


def _empty(cx, node, *args, **kwargs):  # empty / empty_strided / empty_like: any content will do -> zeros
    ttype = cx.out(node)
    return cx.full(ttype.shape, ttype.dtype, False if ttype.dtype == "bool" else 0)


def _convert(cx, node, x, dtype, *args):  # prims.convert_element_type -> cast
    return cx.cast(x, cx.out(node).dtype)


def _weight_t(n: Node) -> Node | None:
    """W when `n` is permute(@W, (1, 0)): the [in, out] view of a linear weight that decompositions make."""
    if n.op == "permute" and tuple(n.attrs["axes"]) == (1, 0) and n.inputs[0].op == "weight":
        return n.inputs[0]
    return None


def _mm(cx, node, a, b):  # mm(x, permute(@W)) -> linear(x, @W); other matrix products -> matmul
    w = _weight_t(b)
    if w is not None:
        return cx.emit("linear", [a, w])
    return lookup("aten.mm")(cx, node, a, b)


def _addmm(cx, node, bias, a, b, beta=1, alpha=1):  # addmm(b, x, permute(@W)) -> linear(x, @W, b)
    w = _weight_t(b)
    if w is not None and beta == 1 and alpha == 1 and bias.type.rank == 1:
        return cx.emit("linear", [a, w, bias])
    return lookup("aten.addmm")(cx, node, bias, a, b, beta, alpha)


def _view(cx, node, x, *args, **kwargs):
    # view(linear(view(x, [-1, d]), W), [..., n]) -> linear(x, W);
    # view(matmul(view(a), view(b)), [*batch, m, n]) -> matmul(a, b)  (torch-mlir's decomposed linear / matmul)
    shape = cx.out(node).shape
    folded = _unflatten_linear(x, shape) or _unflatten_matmul(x, shape)
    if folded is not None:  # located where the product is (the view's own line may have no module)
        return cx.emit(folded[0], folded[1]).replace(loc=x.loc)
    return lookup("aten.view")(cx, node, x, *args, **kwargs)


def _unflatten_linear(y: Node, shape: tuple):
    if y.op != "linear" or y.inputs[0].op != "reshape":
        return None
    x = y.inputs[0].inputs[0]
    if x.type.rank > 2 and y.inputs[0].shape[-1] == x.shape[-1] and shape == (*x.shape[:-1], y.shape[-1]):
        return "linear", [x, *y.inputs[1:]]
    return None


def _unflatten_matmul(y: Node, shape: tuple):
    if y.op != "matmul" or any(i.op != "reshape" for i in y.inputs):
        return None
    a, b = (i.inputs[0] for i in y.inputs)
    a, b = (_unexpanded(t) for t in (a, b))
    if a.type.rank < 3 or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        return None
    if shape != (*a.shape[:-2], a.shape[-2], b.shape[-1]) or y.inputs[0].shape[-2:] != a.shape[-2:] \
            or y.inputs[1].shape[-2:] != b.shape[-2:]:
        return None
    return "matmul", [a, b]


def _unexpanded(n: Node) -> Node:
    return n.inputs[0] if n.op == "expand" and n.inputs[0].shape == n.shape else n


MLIR_OPS = {
    **{f"aten.{op}.{kind}": _compare(op) for op in ["gt", "ge", "lt", "le", "eq", "ne"]
       for kind in ("Tensor", "Scalar")},
    "aten.split.Tensor": _split, "aten.split_with_sizes": _split, "aten.chunk": _split,
    "aten.unbind.int": _unbind,
    "aten.all.dim": _all, "aten.all.dims": _all, "aten.all": _all,
    "aten.empty.memory_format": _empty, "aten.empty_strided": _empty, "aten.empty_like": _empty,
    "prims.convert_element_type": _convert,
    "aten.mm": _mm, "aten.addmm": _addmm,
    "aten.view": _view, "aten._unsafe_view": _view, "aten.reshape": _view,
}

__all__ = ["IR_TO_TORCH", "MLIR_OPS", "SCALAR_FNS", "VALUE_OPS", "MlirOp", "constant_value", "evaluate_scalar",
           "has_handler", "is_scalar_op", "torch_target"]
