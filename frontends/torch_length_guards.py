"""What torch's export assumed about a program's symbolic lengths, read into the importer and checked at the end.

torch.export traces a program for a range of lengths and records guards on them; three kinds matter here
(torch_dims.py holds the sympy side of each):
- facts: a division atom fixed to a value (a chunk count, `seq//64 = 1`), held only up to some length;
- equalities: sizes assumed equal (MPT's `seq` score columns and `min(seq, 64)` bias columns), likewise;
- a least length above 2 forced by a branch on a count derived from the length (DeepSeek-V4's `n_windows > 1`).

`read_guards` turns them into the importer's `facts`, `bounds`, `assumed` and `least` when it reads a user
input; `check_guards_bounded` checks, once the graph is built, that the graph itself refuses the lengths the
facts and equalities stop holding at (or the compiled model would be silently wrong there). Both take the
`Importer` (torch_importer.py) as `cx`, as the op handlers do.
"""

from __future__ import annotations

from ..ir import Graph, dims
from ..ir.limits import input_limits
from .torch_dims import equalities_hold_up_to, facts_hold_up_to, guard_equalities, guard_facts


def read_guards(cx, val) -> None:
    """The guards on the symbols in `val`'s shape (a user input's example tensor) into `cx`'s facts and bounds."""
    import torch

    shape_env = next((d.node.shape_env for d in getattr(val, "shape", ()) if isinstance(d, torch.SymInt)), None)
    if shape_env is None or not cx.symbols:
        return
    cx.facts = guard_facts(shape_env.guards, cx.symbols)
    for symbol, name in cx.symbols.items():  # torch's own range, where the caller gave none: MPT's
        span = shape_env.var_to_range.get(symbol)  # `Max(0, 1 - seq)` is 0 for the seq >= 2 it exports
        if span is not None and name not in cx.bounds and span.lower.is_Integer:
            upper = int(span.upper) if span.upper.is_Integer else 2**62
            cx.bounds[name] = (int(span.lower), upper)
            _record_least(cx, shape_env.guards, symbol, name, int(span.lower))
    _narrow_to_equalities(cx, guard_equalities(shape_env.guards, cx.symbols))


def _record_least(cx, guards, symbol, name: str, least: int) -> None:
    """A program torch's export traced for lengths from `least` > 2 on because of a branch on a count derived
    from the length (a floor division: chunks, windows, compressed entries; DeepSeek-V4's `if n_windows > 1`)
    has another structure below it: the least length becomes a property of the graph's inputs (their `least`
    attribute, ir/limits.py), which the compiled module and the interpreter check before each call. A bound on
    the length itself is left as before (Inkling-2's `seq >= 4`, whose program matches torch at 1 to 3 tokens
    as well, and whose one-token decoding step would be refused)."""
    from torch.utils._sympy.functions import FloorDiv

    if least <= 2:  # torch's own least for a symbolic dim (0 and 1 are specialised)
        return
    failing = [g.expr for g in guards if getattr(g.expr, "is_Relational", False)
               and g.expr.rel_op in (">=", ">", "<=", "<") and symbol in g.expr.free_symbols
               and not g.expr.subs(symbol, 1)]  # the guards that fail at one token
    if any(e.has(FloorDiv) for e in failing):
        cx.least[name] = least


def _narrow_to_equalities(cx, equalities) -> None:
    """Sizes torch's export assumed equal (MPT: `seq` score columns and `min(seq, 64)` bias columns) bound the
    length where they stop being equal: the dims' bounds say so (`min(seq, 64)` is then `seq`), and the graph
    must refuse longer lengths (`check_guards_bounded`)."""
    for name in {n for pair in equalities for side in pair for n in dims.names(side)}:
        least, upper = cx.bounds.get(name, (1, 2**62))
        mine = [pair for pair in equalities if {n for side in pair for n in dims.names(side)} == {name}]
        most = equalities_hold_up_to(mine, name, least, min(upper, 1 << 16))
        if most is None:
            raise cx.symbolic_error(f"torch's export assumed {mine[0][0]} = {mine[0][1]}, which fails at "
                                    f"the least length {name} = {least}; import with dynamic_seq=False")
        if most < min(upper, 1 << 16):  # equal up to 65536 tokens: taken as equal at every length
            cx.bounds[name], cx.assumed[name] = (least, most), most


def check_guards_bounded(cx, graph: Graph) -> None:
    """Atoms torch's export fixed (`facts`) and sizes it assumed equal (`assumed`) hold for lengths up to some n
    only: the graph must itself refuse longer ones (a slice of a static length back to `seq`, or one starting
    at `64 - seq`: ir/limits.py), or it would be wrong past n."""
    names = {n for atom in cx.facts for n in dims.names(atom)}
    if not names and not cx.assumed:
        return
    limits = input_limits(graph).dim_bounds
    for name, most in cx.assumed.items():
        if limits.get(name, most + 1) > most:
            raise cx.symbolic_error(f"torch's export assumed sizes equal that are equal only for {name} up "
                                    f"to {most}, and the graph does not bound it there; import with "
                                    "dynamic_seq=False")
    for name in names:
        facts = {a: v for a, v in cx.facts.items() if dims.names(a) == [name]}
        most = facts_hold_up_to(facts, name, cx.bounds.get(name, (1, 0))[0])
        if most is None or limits.get(name, most + 1) > most:
            fixed = ", ".join(f"{a} = {v}" for a, v in facts.items())
            raise cx.symbolic_error(f"torch's export fixed {fixed}, which holds for {name} up to "
                                    f"{most if most is not None else '(none)'} only, and the graph does not "
                                    "bound it there; import with dynamic_seq=False")
