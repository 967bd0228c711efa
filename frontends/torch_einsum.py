"""`aten.einsum` of one or two operands as IR ops, for the aten -> IR table (`torch_ops_tail.py`).

Mamba-2's chunked scan (Falcon-H1, Zamba2, Bamba, Nemotron-H, ...) is written as einsums. Left to torch's
decompositions, one einsum in a program makes the importer re-trace the whole program (`run_decompositions`,
torch_export.decompose_missing: ~24 s for a tiny Falcon-H1's prefill). Mapped here instead, as torch's own
decomposition maps it: labels only one operand has and the output lacks are summed out first; then, with one
contracted label, one batched `matmul` whose batch dims are the shared output labels and, broadcast as size 1 in
the other operand, all but the last free label of each side (no reshape merges labels, so symbolic sizes stay
as they are); with none or several contracted labels, a broadcast `mul` and a `sum`. A final `permute` gives the
output's order. A label of size 1 in one operand is broadcast to the other's size, as
torch does. Forms this does not cover (an ellipsis, a label repeated in one operand, three or more operands)
report `handles(node) == False` and are left to torch's decompositions.
"""

from __future__ import annotations

import torch


def covers(equation: str, operands) -> bool:
    if "." in equation or len(operands) not in (1, 2):
        return False
    inputs = equation.split("->")[0].split(",")
    return all(len(set(term)) == len(term) for term in inputs)


def handles(node: torch.fx.Node) -> bool:  # torch_export.decompose_missing asks before import
    return covers(node.args[0], node.args[1])


def einsum(cx, node, equation, operands, path=None):
    if not covers(equation, operands):  # torch_export.decompose_missing decomposes these before import
        raise cx.error(f"einsum {equation!r} of {len(operands)} operands is not mapped; import through "
                       "torch_export, which decomposes it")
    dtype = cx.out(node).dtype
    terms, out = _parse(equation.replace(" ", ""))
    values = [cx.tensor(x, dtype) for x in operands]
    counts = {label: sum(label in t for t in terms) for label in "".join(terms)}
    sizes = {label: x.shape[t.index(label)] for t, x in zip(terms, values, strict=True) for label in t
             if x.shape[t.index(label)] != 1}
    values = [_broadcast(cx, x, t, sizes) for t, x in zip(terms, values, strict=True)]  # torch broadcasts 1s
    summed = []
    for term, x in zip(terms, values, strict=True):  # labels only this operand has and the output lacks
        gone = [label for label in term if counts[label] == 1 and label not in out]
        if gone:
            x = cx.emit("sum", [x], axes=tuple(term.index(label) for label in gone), keepdim=False)
            term = "".join(label for label in term if label not in gone)
        summed.append((term, x))
    if len(summed) == 1:
        (term, x), = summed
        return _arranged(cx, x, term, out)
    (ta, a), (tb, b) = summed
    contracted = [label for label in ta if label in tb and label not in out]
    if len(contracted) != 1:
        return _by_mul_and_sum(cx, (ta, a), (tb, b), contracted, out)
    c, = contracted
    batch = [label for label in out if label in ta and label in tb]
    left = [label for label in out if label in ta and label not in tb]
    right = [label for label in out if label in tb and label not in ta]
    row, col = (left[-1:] or [None]), (right[-1:] or [None])  # the matmul's rows and columns (None: a 1)
    a = _arranged(cx, a, ta, [*batch, *left[:-1], *[None] * len(right[:-1]), *row, c])
    b = _arranged(cx, b, tb, [*batch, *[None] * len(left[:-1]), *right[:-1], c, *col])
    product = cx.emit("matmul", [a, b])
    labels = [*batch, *left[:-1], *right[:-1], *row, *col]
    if None in labels:
        kept = [i for i, label in enumerate(labels) if label is not None]
        product = cx.emit("reshape", [product], shape=tuple(product.shape[i] for i in kept))
        labels = [labels[i] for i in kept]
    return _arranged(cx, product, "".join(labels), out)


def _broadcast(cx, x, term: str, sizes: dict):
    return cx.expanded(x, tuple(sizes.get(label, 1) for label in term))


def _parse(equation: str) -> tuple[list[str], str]:
    inputs, arrow, out = equation.partition("->")
    terms = inputs.split(",")
    if not arrow:  # implicit output: the labels seen once, in alphabetical order
        joined = "".join(terms)
        out = "".join(sorted(label for label in set(joined) if joined.count(label) == 1))
    return terms, out


def _by_mul_and_sum(cx, a, b, contracted, out):
    """Both operands laid out on every label (size 1 where absent), multiplied, summed over `contracted`."""
    labels = [*out, *contracted]
    product = cx.emit("mul", [_arranged(cx, x, term, [lb if lb in term else None for lb in labels])
                              for term, x in (a, b)])
    if contracted:
        product = cx.emit("sum", [product], axes=tuple(range(len(out), len(labels))), keepdim=False)
    return product


def _arranged(cx, x, term: str, layout) -> object:
    """`x` (axes labelled by `term`) permuted to `layout`'s labels, with a size-1 axis for each None in it."""
    layout = list(layout)
    order = [term.index(label) for label in layout if label is not None]
    if order != list(range(len(order))):
        x = cx.emit("permute", [x], axes=tuple(order))
    if None in layout:
        dims = iter(x.shape)
        x = cx.emit("reshape", [x], shape=tuple(1 if label is None else next(dims) for label in layout))
    return x
