"""torch's symbolic sizes (sympy expressions over its shape symbols) as IR dims (ir/dims.py): a name, an affine sum
of names with integer coefficients (`kv + 1`: scores with a sink column; `kv - seq`: a causal mask's first row),
and floor divisions and moduli of those by positive constants (a chunked scan's padding to a multiple of its chunk,
`seq + Mod(64 - Mod(seq, 64), 64)`, Mamba-2 and gated-DeltaNet layers; DeepSeek-V4's `128*(seq//128)`).
A min or max is first decided where the dims' bounds decide it: a decoder's `kv` never exceeds `max_seq`, so
DeepSeek-V3.2's `min(index_topk, kv)` is `kv` whenever index_topk >= max_seq."""

from __future__ import annotations

from ..ir import dims
from ..ir.dims import Dim


def sympy_dim(expr, symbols: dict, bounds: dict[str, tuple[int, int]], facts: dict[str, int] | None = None
              ) -> Dim | None:
    """`expr` as an IR dim, or None when the dim algebra cannot hold it (a product of symbols, a min the bounds do
    not decide, a division by a symbol); `symbols`: sympy symbol -> dim name, `bounds`: dim name -> (least, most)
    the caller guarantees, `facts`: atoms torch's export fixed to a value (`guard_facts`)."""
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
    expr = expr.replace(_is_polynomial_quotient, _polynomial_quotient)  # XLNet's ((2*seq-1)*(seq**2//seq))//seq
    try:
        dim = _convert(expr, symbols)
    except _NotADim:
        return None
    if not facts or isinstance(dim, int):
        return dim
    coefs, const = dims.terms(dim)
    const += sum(c * facts[a] for a, c in coefs.items() if a in facts)
    return dims.affine({a: c for a, c in coefs.items() if a not in facts}, const)


def guard_facts(guards, symbols: dict) -> dict[str, int]:
    """Atoms of the dim algebra that torch's export fixed to a value (IR atom text -> value). A Python loop over a
    chunked scan's chunks (`for i in range(num_chunks)`, gated-DeltaNet layers) specialises the chunk count to the
    example's, `Eq((seq + 63)//64, 1)`, without narrowing the length's range: the program then holds for lengths
    up to that many chunks, and its shapes say so (the padded length is static; a slice back to `seq` of it bounds
    the length the compiled module accepts, ir/limits.py)."""
    facts: dict[str, int] = {}
    for guard in guards:
        expr = getattr(guard, "expr", guard)
        if not getattr(expr, "is_Relational", False) or expr.rel_op != "==":
            continue
        lhs, rhs = (expr.lhs, expr.rhs) if expr.rhs.is_Integer else (expr.rhs, expr.lhs)
        if not rhs.is_Integer or not lhs.free_symbols or not lhs.free_symbols <= set(symbols):
            continue
        dim = sympy_dim(lhs, symbols, {})
        coefs, const = dims.terms(dim) if isinstance(dim, str) else ({}, 0)
        if len(coefs) == 1:
            (atom, coef), = coefs.items()
            value, rest = divmod(int(rhs) - const, coef)
            if not rest and not atom.isidentifier():  # a division fixed, not the length itself
                facts[atom] = value
    return facts


def guard_equalities(guards, symbols: dict) -> list[tuple[Dim, Dim]]:
    """Equalities of two symbolic sizes of one length that torch's export assumed (`Eq(seq, 64 - Max(0, 64 - seq))`:
    MPT adds `seq` score columns to a bias of `min(seq, 64)` columns) without narrowing the length's range: the
    program holds only for the lengths where they do (`equalities_hold_up_to`)."""
    found = []
    for guard in guards:
        expr = getattr(guard, "expr", guard)
        if not getattr(expr, "is_Relational", False) or expr.rel_op != "==" or expr.lhs.is_Integer \
                or expr.rhs.is_Integer or not expr.free_symbols <= set(symbols) or len(expr.free_symbols) != 1:
            continue
        sides = sympy_dim(expr.lhs, symbols, {}), sympy_dim(expr.rhs, symbols, {})
        if None not in sides and sides[0] != sides[1]:
            found.append(sides)
    return found


def equalities_hold_up_to(equalities: list[tuple[Dim, Dim]], name: str, least: int, most: int = 1 << 16
                          ) -> int | None:
    """The largest length n <= most such that each equality holds for all lengths least..n (None when one fails at
    `least`)."""
    n = least
    while n <= most and all(dims.evaluate(a, {name: n}) == dims.evaluate(b, {name: n}) for a, b in equalities):
        n += 1
    return n - 1 if n > least else None


def facts_hold_up_to(facts: dict[str, int], name: str, least: int, most: int = 1 << 16) -> int | None:
    """The largest length n such that every fact holds for all lengths least..n, or None when one fails at
    `least` (`least`: the least length the graph holds for, which its input carries: ir/limits.py)."""
    n = least
    while n <= most and all(dims.evaluate(atom, {name: n}) == value for atom, value in facts.items()):
        n += 1
    return n - 1 if n > least else None


class _NotADim(Exception):
    pass


def _constant(expr) -> int:
    if not expr.is_Integer:
        raise _NotADim
    return int(expr)


def _convert(expr, symbols: dict) -> Dim:
    from torch.utils._sympy.functions import CeilDiv, CleanDiv, FloorDiv, Max, Min, Mod, ModularIndexing, PythonMod

    if expr.is_Integer:
        return int(expr)
    if expr.is_Symbol:
        if expr not in symbols:
            raise _NotADim
        return symbols[expr]
    if expr.is_Add:
        total: Dim = 0
        for arg in expr.args:
            total = dims.add(total, _convert(arg, symbols))
        return total
    if expr.is_Mul:
        factors = [_convert(a, symbols) for a in expr.args]
        symbolic = [f for f in factors if isinstance(f, str)]
        if len(symbolic) > 1:
            raise _NotADim  # seq * seq
        product = 1
        for f in factors:
            product *= f if isinstance(f, int) else 1
        return dims.mul(symbolic[0], product) if symbolic else product
    if expr.func in (Min, Max):  # what the bounds do not decide (sympy_dim): min(2048, seq) as a dim of its own
        bound = dims.minimum if expr.func is Min else dims.maximum
        args = [_convert(a, symbols) for a in expr.args]
        result = args[0]
        for arg in args[1:]:
            result = bound(result, arg)
        return result
    divide = {FloorDiv: dims.floordiv, CleanDiv: dims.floordiv, Mod: dims.mod, PythonMod: dims.mod}.get(expr.func)
    if divide is not None and not expr.args[1].is_Integer:  # by a symbolic size: exact quotients only
        return _exact_quotient(expr, symbols, divide is dims.floordiv)
    if divide is not None or expr.func in (CeilDiv, ModularIndexing):
        divisor = _constant(expr.args[-1 if expr.func is not ModularIndexing else 1])
        if divisor < 1:
            raise _NotADim
        x = _convert(expr.args[0], symbols)
        if expr.func is CeilDiv:  # ceil(x / c) = -((-x) // c)
            return dims.mul(dims.floordiv(dims.mul(x, -1), divisor), -1)
        if expr.func is ModularIndexing:  # (x // d) % m
            modulus = _constant(expr.args[2])
            if modulus < 1:
                raise _NotADim
            return dims.mod(dims.floordiv(x, divisor), modulus)
        return divide(x, divisor)
    raise _NotADim


def _polynomial_quotient(expr):
    import sympy

    return sympy.expand(sympy.cancel(expr.args[0] / expr.args[1]))


def _is_polynomial_quotient(expr) -> bool:
    """A floor division of polynomials by a symbolic one that divides them (XLNet's `seq**2 // seq`)."""
    import sympy
    from torch.utils._sympy.functions import FloorDiv

    if not isinstance(expr, FloorDiv) or expr.args[1].is_Integer or expr.args[0].has(FloorDiv):
        return False
    quotient = sympy.cancel(expr.args[0] / expr.args[1])
    return sympy.fraction(quotient)[1] == 1 and quotient.is_polynomial()


def _exact_quotient(expr, symbols: dict, floor: bool) -> Dim:
    """`a // b` or `a % b` for a symbolic `b` that divides `a` term for term: a reshape's `P // (P // 8)` next to
    a padded length P (a multiple of a dim)."""
    return _multiple(_convert(expr.args[0], symbols), _convert(expr.args[1], symbols)) if floor else 0


def _multiple(a: Dim, b: Dim) -> int:
    """k when `a` is k times the symbolic `b` term for term (a reshape's `-1` next to a padded length)."""
    (ca, ka), (cb, kb) = dims.terms(a), dims.terms(b)
    if not cb or set(ca) != set(cb):
        raise _NotADim
    atom = next(iter(cb))
    k, rest = divmod(ca[atom], cb[atom])
    if rest or k < 1 or any(ca[n] != k * cb[n] for n in cb) or ka != k * kb:
        raise _NotADim
    return k


# ops whose result holds the same values as their first operand (rearranged, repeated or cast)
VALUE_KEEPING = ("aten.unsqueeze", "aten.expand", "aten.view", "aten.reshape", "aten._unsafe_view", "aten.clone",
                 "aten._to_copy", "aten.to", "aten.alias", "aten.squeeze", "aten.contiguous", "aten.detach",
                 "aten.lift_fresh_copy")
EXTREMES = {"aten.max.default": True, "aten.amax.default": True, "aten.min.default": False,
            "aten.amin.default": False}


def arange_extreme(fx_node, dim) -> Dim | None:
    """`x.max()` / `x.min()` over all of x, x an arange (through value-keeping views and added integers) whose
    bounds are sizes, as an IR dim (Reformer's `position_ids.max().item() + 1` columns: `seq`); None otherwise.
    `dim` reads a torch size (int or SymInt) as an IR dim."""
    largest = EXTREMES.get(str(getattr(fx_node, "target", "")))
    if largest is None or any(a not in ([], ()) for a in fx_node.args[1:]) or fx_node.kwargs:  # over all of x
        return None
    shift, source = 0, fx_node.args[0]
    while True:
        name = str(getattr(source, "target", ""))
        packet = name.rsplit(".", 1)[0] if name.count(".") > 1 else name
        if packet in VALUE_KEEPING:
            source = source.args[0]
        elif name in ("aten.add.Scalar", "aten.add.Tensor", "aten.sub.Scalar", "aten.sub.Tensor") \
                and isinstance(source.args[1], int) and not source.kwargs:
            shift += source.args[1] if packet == "aten.add" else -source.args[1]
            source = source.args[0]
        else:
            break
    if packet != "aten.arange" or source.kwargs.get("step", 1) != 1:
        return None
    bounds = [a.meta.get("val") if hasattr(a, "meta") else a for a in source.args]
    start, end, *step = [0, *bounds] if len(bounds) == 1 else bounds
    if step and step[0] != 1 or not all(isinstance(b, int) or type(b).__name__ == "SymInt" for b in (start, end)):
        return None
    start, end = dim(start), dim(end)
    return dims.add(dims.sub(end, 1) if largest else start, shift)  # a non-empty arange: every length >= 1
