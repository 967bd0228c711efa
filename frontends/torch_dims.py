"""torch's symbolic sizes (sympy expressions over its shape symbols) as IR dims (ir/dims.py): a name, or an affine
sum of names with integer coefficients (`kv + 1`: scores with a sink column; `kv - seq`: a causal mask's first row).
A min or max is first decided where the dims' bounds decide it: a decoder's `kv` never exceeds `max_seq`, so
DeepSeek-V3.2's `min(index_topk, kv)` is `kv` whenever index_topk >= max_seq."""

from __future__ import annotations

from ..ir.dims import Dim, affine


def affine_dim(expr, symbols: dict, bounds: dict[str, tuple[int, int]]) -> Dim | None:
    """`expr` as an IR dim, or None when it is no affine sum of the named `symbols` (sympy symbol -> dim name);
    `bounds`: dim name -> (least, most) the caller guarantees."""
    from torch.utils._sympy.functions import Max, Min
    from torch.utils._sympy.value_ranges import ValueRanges, bound_sympy

    ranges = {s: ValueRanges(*bounds[n]) for s, n in symbols.items() if n in bounds}

    def decide(e):
        spans = [bound_sympy(a, ranges) for a in e.args]
        for i, (arg, span) in enumerate(zip(e.args, spans)):
            others = [o for j, o in enumerate(spans) if j != i]
            if all(span.upper <= o.lower if isinstance(e, Min) else span.lower >= o.upper for o in others):
                return arg
        return e

    expr = expr.replace(lambda e: isinstance(e, (Min, Max)), decide) if ranges else expr
    parts = expr.as_coefficients_dict()
    if not all(k == 1 or k in symbols for k in parts) or not all(v.is_Integer for v in parts.values()):
        return None
    return affine({symbols[k]: int(v) for k, v in parts.items() if k != 1}, int(parts.get(1, 0)))
