"""In-place aten ops and ops with data-dependent result sizes, for the aten -> IR table (`torch_ops.py`).

`torch.export` at its default level keeps in-place ops such as `aten.div_.Tensor` (a router normalising its
top-k weights in place). The table maps them onto their functional handler, and later reads of the updated
tensor see the result (`Importer.rebind`):

    x.div_(y)  ->  div(x, y), rebound to x

That is only the tensor's new value when no other tensor aliases it. A program with an in-place op on a view, or
on a tensor a view was taken of before the update, is functionalized by torch before import
(`torch_export.decompose_missing`: `x[..., i] = v` becomes `select_scatter`); where that has not happened (a
program imported as exported) such an op is an error asking for the out-of-place form.
"""

from __future__ import annotations

import torch

VIEW_OPS = {"aten.view", "aten._unsafe_view", "aten.slice", "aten.select", "aten.narrow", "aten.transpose",
            "aten.t", "aten.permute", "aten.expand", "aten.unsqueeze", "aten.squeeze", "aten.as_strided",
            "aten.alias", "aten.diagonal", "aten.unflatten", "aten.flatten", "aten.reshape", "aten.view_as",
            "aten.split", "aten.split_with_sizes", "aten.chunk", "aten.unbind", "aten.expand_as", "aten.swapaxes"}
# ops whose result size depends on tensor values: the IR's shapes cannot express them
DATA_DEPENDENT = ("aten.nonzero", "aten.masked_select", "aten.unique", "aten._unique2", "aten.bincount",
                  "aten.where.default", "aten.argwhere", "aten.repeat_interleave.Tensor")


def functional_name(op: str) -> str | None:
    """`div_` -> `div`: the functional twin's name of an in-place op's name (None for one that is not in place:
    no trailing `_`, or a private `_op_`)."""
    return op[:-1] if op.endswith("_") and not op.startswith("_") else None


def in_place(handler):
    def handle(cx, node, *args, **kwargs):  # x.div_(y) -> div(x, y), and later reads of x see the result
        target = node.args[0]
        if isinstance(target, torch.fx.Node) and aliased(target, node):
            raise cx.error(f"in-place {node.target} on a tensor that shares memory with another (a view, or "
                           "viewed before the update) cannot be expressed; write it out of place (y = x / z)")
        result = handler(cx, node, *args, **kwargs)
        cx.rebind(target, result)
        return result
    return handle


def aliased(target, node) -> bool:
    """`target` is a view, or a view of it was taken before `node` updates it (the view would see the update)."""
    def packet(n):
        return str(getattr(n.target, "overloadpacket", n.target)) if n.op == "call_function" else ""

    if packet(target) in VIEW_OPS:
        return True
    between = target.next
    while between is not node and between.op != "root":
        if between in target.users and packet(between) in VIEW_OPS:
            return True
        between = between.next
    return False
