"""Writes through slices, selects and permutes of a tensor the program made, made functional in its FX graph.

Matches: an in-place aten op (`copy_`, `fill_`, `add_`, ...) whose first argument is a chain of `slice` / `select` /
`permute` views of a tensor computed in the graph (not an input), such as DeepSeek-V3's key assembly

    key = k_nope.new_empty(..., nope + rope); key[..., :nope].copy_(k_nope); key[..., nope:].copy_(k_rot)

Produces: the op's functional form on the view (`copy`, `fill`, `add`), scattered back up the chain
(`slice_scatter`, `select_scatter`, the inverse permute) into a new value of the base; reads after the write see
that value, and reads of the written view see the functional result.

Why: the IR has no aliasing, so such a program was handed to torch's functionalization, which re-traces the whole
program (`run_decompositions`: 5 to 26 s of a tiny model's compile, and it grows with the layers of a real one).
A write this file cannot prove local (another view of the base read after it, a view of the written view, a base
that is an input) is left as it was, and torch's pass still takes the program.
"""

from __future__ import annotations

import operator

import torch

from .torch_inplace import VIEW_OPS, functional_name

ATEN = torch.ops.aten


def _slice(graph, view, new):
    x, *rest = view.args
    return graph.call_function(ATEN.slice_scatter.default, (x, new, *rest), dict(view.kwargs))


def _select(graph, view, new):
    x, *rest = view.args
    return graph.call_function(ATEN.select_scatter.default, (x, new, *rest), dict(view.kwargs))


def _permute(graph, view, new):
    dims = [d % view.args[0].meta["val"].dim() for d in view.args[1]]
    return graph.call_function(ATEN.permute.default, (new, [dims.index(i) for i in range(len(dims))]))


# view op -> (graph, the view node, the view's new value) -> the new value of the view's input
SCATTERS = {ATEN.slice.Tensor: _slice, ATEN.select.int: _select, ATEN.permute.default: _permute}


def functionalize_view_writes(graph_module: torch.fx.GraphModule) -> int:
    """Rewrite every local write through a view chain in `graph_module` (module docstring); returns how many."""
    done = 0
    while (found := _next_write(graph_module.graph)) is not None:
        _rewrite(graph_module.graph, *found)
        done += 1
    if done:
        graph_module.graph.lint()
        graph_module.recompile()
    return done


def _packet(node) -> str:
    return str(getattr(node.target, "overloadpacket", node.target)) if node.op == "call_function" else ""


def _functional(op):
    """`aten.copy_.default` -> `aten.copy.default` (None where the in-place op has no functional twin)."""
    name = functional_name(op._schema.name.split("::")[-1])
    packet = getattr(ATEN, name, None) if name is not None else None
    return getattr(packet, op._overloadname, None) if packet is not None else None


def _next_write(graph):
    """(write, its chain of views from the written one outwards, the base) of the first local write, or None."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload) \
                or not node.target._schema.is_mutable or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        chain, base = [], node.args[0]
        while base.op == "call_function" and base.target in SCATTERS:
            chain.append(base)
            base = base.args[0]
        if chain and base.op == "call_function" and _packet(base) not in VIEW_OPS and not _viewed_item(base) \
                and _functional(node.target) is not None and _local(node, chain, base, order):
            return node, chain, base
    return None


def _viewed_item(node) -> bool:
    """An item of a view op's tuple (`split`, `unbind`): itself a view of that op's input."""
    return node.target is operator.getitem and isinstance(node.args[0], torch.fx.Node) \
        and _packet(node.args[0]) in VIEW_OPS


def _mutates(node, tensor) -> bool:
    return node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) \
        and node.target._schema.is_mutable and bool(node.args) and node.args[0] is tensor


def _local(write, chain, base, order) -> bool:
    """Whether, after `write`, nothing reads the base through a view taken before it (other than the written view,
    whose plain reads are rewritten) or through a view of such a view; views of the base taken after the write are
    taken from its new value. No other in-place op may touch the base or its views, except the base after the
    write (it then updates the new value): before the write it would change what the views read, and on the
    written view after it, it would not reach the base."""
    if any(_mutates(user, write) or _packet(user) in VIEW_OPS or user.target is operator.getitem
           for user in write.users):  # the write's result is the written view: the same rules as for it
        return False
    at, todo, seen = order[write], [base], {base}
    while todo:
        alias = todo.pop()
        for user in alias.users:
            if user is write or user in seen:
                continue
            after = order[user] > at
            if _mutates(user, alias) and not (after and alias is base):
                return False
            if _packet(user) in VIEW_OPS or (user.target is operator.getitem and alias is not base):
                if after and alias is base:
                    continue
                if after:
                    return False
                seen.add(user)
                todo.append(user)
            elif after and alias is not base and alias is not chain[0]:
                return False
    return True


def _rewrite(graph, write, chain, base) -> None:
    with graph.inserting_after(write):
        new = graph.call_function(_functional(write.target), tuple(write.args), dict(write.kwargs))
    made, value = [new], new
    for view in chain:  # the written view first, out to the base
        with graph.inserting_after(value):
            value = SCATTERS[view.target](graph, view, value)
        made.append(value)
    for node in made:
        _fake_value(node)
    position = {n: i for i, n in enumerate(graph.nodes)}
    after = position[made[-1]]
    for old, replacement in ((chain[0], new), (base, made[-1])):
        for user in list(old.users):
            if position[user] > after:
                user.replace_input_with(old, replacement)
    write.replace_all_uses_with(new)
    graph.erase_node(write)


def _fake_value(node) -> None:
    """The node's `meta["val"]` (the importer reads shapes and dtypes there), computed on its inputs' fake values."""
    def value(a):
        return a.meta["val"] if isinstance(a, torch.fx.Node) else a

    from torch._guards import detect_fake_mode

    args = torch.fx.node.map_aggregate(node.args, value)
    kwargs = torch.fx.node.map_aggregate(node.kwargs, value)
    mode = detect_fake_mode([a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)])
    with mode:
        node.meta["val"] = node.target(*args, **kwargs)
