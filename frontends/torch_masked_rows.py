"""A boolean-mask dispatch imported without data-dependent sizes: every row computed, the masked rows kept.

    rows = x[mask]                 # [u, ...]: u, the number of True entries, depends on the mask's values
    y[mask] = f(rows)              # f row-wise: each output row reads only its own input row

is exactly `y = where(mask, f(x), y)`, with f run on every row of x (the unmasked rows' results are dropped by
the `where`, whatever they are). X-MOD routes each sentence to its language's adapter so, and a mixture of
experts written with boolean masks has the same shape. The import takes that form: `x[mask]` becomes x with the
mask's dims merged into one row axis of static or symbolic size (the unbacked count `u` is bound to it), and the
write-back becomes the `where`.

That equality needs f to be row-wise, which the FX graph is checked for before anything is built
(`check_row_wise`): every op reached from `x[mask]` must be elementwise (`torch.Tag.pointwise`) or one of
`ROW_WISE` (linear, norms over the last dims, shape-keeping views), carry `u` as its dim 0 and nowhere else in
its operands and result, and the path must end in `y[mask] = ...` with the same mask. Anything else (a sum over
the selected rows, the selection returned as it is, another mask's write-back) is one error naming the op.
"""

from __future__ import annotations

import math
import operator
import os
import re

import torch

from ..ir import Node

ROW_WISE = {"aten.linear", "aten.matmul", "aten.mm", "aten.layer_norm", "aten.native_layer_norm", "aten.rms_norm",
            "aten._fused_rms_norm", "aten.dropout", "aten.clone", "aten.alias", "aten.detach", "aten._to_copy",
            "aten.to", "aten.view", "aten.reshape", "aten._unsafe_view", "aten.gelu", "aten.silu", "aten.relu",
            "aten.softmax", "aten._softmax", "aten.log_softmax", "aten._log_softmax"}
WRITE_BACK = {"aten.index_put", "aten.index_put_"}
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
DIM_ARG_OPS = {"aten.softmax", "aten._softmax", "aten.log_softmax", "aten._log_softmax"}  # row-wise unless dim 0


def masked_rows(cx, node, x: Node, mask: Node) -> Node:
    """x[mask] -> x with the mask's dims merged into one row axis; the count `u` torch recorded is bound to it."""
    if mask.type.rank > x.type.rank or tuple(mask.shape) != tuple(x.shape[:mask.type.rank]):
        raise cx.error(f"x[mask] with a mask of shape {list(mask.shape)} over x of shape {list(x.shape)}: only a "
                       "mask over x's leading dims is supported")
    if _count(node) is None:
        raise cx.error("indexing with a boolean mask has a data-dependent shape and is not supported")
    check_row_wise(cx, node)
    wide = [d for d in mask.shape if d != 1]
    if len(wide) > 1 and not all(isinstance(d, int) for d in wide):
        raise cx.symbolic_error("a boolean mask over several dims, one of them symbolic, selects a number of rows "
                                "the IR cannot name; import with dynamic_seq=False")
    rows = math.prod(wide) if all(isinstance(d, int) for d in wide) else wide[0]
    cx.symbols[_count(node)] = rows
    cx.masked_rows[_count(node)] = mask
    shape = (rows, *x.shape[mask.type.rank:])
    return x if tuple(x.shape) == shape else cx.emit("reshape", [x], shape=shape)


def masked_write_back(cx, node, x: Node, mask: Node, values: Node) -> Node | None:
    """y[mask] = f(x[mask]) -> where(mask, f(x), y), or None when `values` is no masked selection's."""
    val = node.args[2].meta.get("val") if isinstance(node.args[2], torch.fx.Node) else None
    count = _symbol(val.shape[0]) if isinstance(val, torch.Tensor) and val.ndim else None
    if count is None or count not in cx.masked_rows:
        return None
    if cx.masked_rows[count] is not mask:
        raise cx.error("y[mask] = f(x[other_mask]): the write-back's mask is not the selection's")
    full = values if tuple(values.shape) == tuple(x.shape) else cx.emit("reshape", [values], shape=x.shape)
    mask = mask if mask.type.rank == x.type.rank else cx.emit(
        "reshape", [mask], shape=(*mask.shape, *(1,) * (x.type.rank - mask.type.rank)))
    return cx.emit("where", [mask, cx.cast(full, x.dtype), x])


def check_row_wise(cx, select: torch.fx.Node) -> None:
    """Every use of the rows `select` picks is row-wise and ends in a write-back through the same mask."""
    count, mask = _count(select), select.args[1][0]
    seen, todo = set(), list(select.users)
    while todo:
        user = todo.pop()
        if user in seen:
            continue
        seen.add(user)
        if _is_size(user):  # sym_size and the range asserts torch adds for `u`
            continue
        name = _packet(user)
        if name in WRITE_BACK and len(user.args[1]) == 1 and user.args[1][0] is mask and _carries(
                user.args[2], count) and not _carries(user.args[0], count):
            continue
        if user.op == "call_function" and (user.target is operator.getitem or _row_wise(user, name, count)):
            todo.extend(user.users)
            continue
        frames = _FRAME.findall(user.meta.get("stack_trace") or "")
        where = f"{os.path.basename(frames[-1][0])}:{frames[-1][1]}" if frames else user.name
        raise cx.error(f"x[mask] selects a data-dependent number of rows, imported as every row with the result "
                       f"kept where the mask holds; that needs every op up to `y[mask] = ...` (same mask) to be "
                       f"row-wise, and {name if user.op == 'call_function' else 'the model output'} is not "
                       f"({where})")


def _row_wise(user, name: str, count) -> bool:
    if not (name in ROW_WISE or torch.Tag.pointwise in getattr(user.target, "tags", ())):
        return False
    if name in DIM_ARG_OPS and len(user.args) > 1 and user.args[1] in (0, -_rank(user)):
        return False
    operands = [a for a in _flat((user.args, user.kwargs)) if isinstance(a, torch.fx.Node)]
    results = user.meta.get("val")
    results = list(results) if isinstance(results, (tuple, list)) else [results]
    return all(_only_first(a.meta.get("val"), count) for a in operands) and all(
        _only_first(r, count, need=i == 0) for i, r in enumerate(results))


def _only_first(val, count, need: bool = False) -> bool:
    """`val` (a tensor's record) has the row count `count` as dim 0 and nowhere else (dim 0 required: `need`)."""
    if not isinstance(val, torch.Tensor):
        return not need
    mentions = [_mentions(d, count) for d in val.shape]
    if any(mentions[1:]):
        return False
    if not mentions or not mentions[0]:
        return not need
    return _symbol(val.shape[0]) == count


def _flat(value):
    if isinstance(value, (tuple, list)):
        for v in value:
            yield from _flat(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _flat(v)
    else:
        yield value


def _carries(arg, count) -> bool:
    val = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None
    return isinstance(val, torch.Tensor) and any(_mentions(d, count) for d in val.shape)


def _mentions(d, count) -> bool:
    return isinstance(d, torch.SymInt) and count in d.node.expr.free_symbols


def _symbol(d):
    return d.node.expr if isinstance(d, torch.SymInt) and d.node.expr.is_Symbol else None


def _count(select: torch.fx.Node):
    val = select.meta.get("val")
    return _symbol(val.shape[0]) if isinstance(val, torch.Tensor) and val.ndim else None


def _rank(user) -> int:
    val = user.meta.get("val")
    return val.ndim if isinstance(val, torch.Tensor) else 0


def _packet(user) -> str:
    name = str(user.target)
    return name.rpartition(".")[0] if name.startswith("aten.") and name.count(".") >= 2 else name


def _is_size(user) -> bool:
    val = user.meta.get("val")
    return user.op == "call_function" and (val is None or isinstance(val, (torch.SymInt, torch.SymBool, int, bool)))
