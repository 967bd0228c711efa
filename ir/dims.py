"""Symbolic dims: an int, a name bound by a graph input (`seq`, `kv`), or an affine expression of names with integer
coefficients (`kv+1`: attention scores with a sink column; `kv-seq`: where a causal mask's rows start).

An expression is kept as one canonical string (names sorted, `2*kv-seq+1`), so equal sizes compare equal as the
shape rules and the verifier compare them, and the text form of a graph stays readable. Only names are bound by
inputs; an expression's value follows from theirs (`evaluate`, and the TVM lowering builds the same PrimExpr).
"""

from __future__ import annotations

import re
from typing import Union

Dim = Union[int, str]

_TERM = re.compile(r"([+-])(?:(\d+)\*)?([A-Za-z_]\w*)|([+-])(\d+)")
_TEXT = re.compile(r"[+-]?(?:(?:\d+\*)?[A-Za-z_]\w*|\d+)(?:[+-](?:(?:\d+\*)?[A-Za-z_]\w*|\d+))*")


def is_dim_text(text: str) -> bool:
    """Whether `text` spells a symbolic dim (a name or an affine expression of names)."""
    return bool(_TEXT.fullmatch(text)) and any(c.isalpha() or c == "_" for c in text)


def terms(dim: Dim) -> tuple[dict[str, int], int]:
    """(name -> coefficient, constant) of a dim."""
    if isinstance(dim, int):
        return {}, dim
    if not _TEXT.fullmatch(dim):
        raise ValueError(f"a dim is a size, a name or an affine expression of names (kv+1), got {dim!r}")
    coefs: dict[str, int] = {}
    const = 0
    text = dim if dim[0] in "+-" else "+" + dim
    for sign, coef, name, csign, number in _TERM.findall(text):
        if name:
            coefs[name] = coefs.get(name, 0) + (int(coef) if coef else 1) * (-1 if sign == "-" else 1)
        else:
            const += int(number) * (-1 if csign == "-" else 1)
    return {k: v for k, v in coefs.items() if v}, const


def affine(coefs: dict[str, int], const: int = 0) -> Dim:
    """The canonical dim of `sum(coef * name) + const`: an int when no name is left, else its text."""
    parts = []
    for name in sorted(k for k, v in coefs.items() if v):
        coef = coefs[name]
        parts.append(("-" if coef < 0 else "+") + (f"{abs(coef)}*" if abs(coef) != 1 else "") + name)
    if not parts:
        return const
    if const:
        parts.append(f"{const:+d}")
    text = "".join(parts)
    return text[1:] if text[0] == "+" else text


def add(a: Dim, b: Dim) -> Dim:
    (ca, ka), (cb, kb) = terms(a), terms(b)
    return affine({n: ca.get(n, 0) + cb.get(n, 0) for n in {*ca, *cb}}, ka + kb)


def sub(a: Dim, b: Dim) -> Dim:
    coefs, const = terms(b)
    return add(a, affine({n: -c for n, c in coefs.items()}, -const))


def names(dim: Dim) -> list[str]:
    return sorted(terms(dim)[0])


def evaluate(dim: Dim, env: dict[str, int]) -> int:
    """A dim's size once its names are bound (`env`: name -> size)."""
    if isinstance(dim, int):
        return dim
    coefs, const = terms(dim)
    return sum(c * env[n] for n, c in coefs.items()) + const
