"""Symbolic dims: an int, a name bound by a graph input (`seq`, `kv`), or an expression of names: sums with integer
coefficients (`kv+1`: attention scores with a sink column; `kv-seq`: where a causal mask's rows start), and floor
division and modulo by a positive constant (a chunked scan's padding to a multiple of its chunk,
`seq + (-seq) % 64`, is `64*((seq+63)//64)`; DeepSeek-V4's compressed length `128*(seq//128)`).

An expression is kept as one canonical string, so equal sizes compare equal as the shape rules and the verifier
compare them, and the text form of a graph stays readable. The canonical form is an affine sum of atoms, an atom
being a name or a floor division `(A)//c` (A itself canonical, c >= 2); `A % c` is written `A - c*(A//c)`, so a
modulo and the division it implies share one atom. Terms are sorted by their text. The text is also valid Python
arithmetic with the same value (`evaluate`); `parse` reads `+ - * // %` and parentheses back. The rewrite rules
(`floordiv`), all sound for every integer value of the names:

    (c*k*x + A) // c = k*x + A // c          multiples of c leave the division (constants too, A's in [0, c))
    (g*B + k) // (g*c) = (B + k//g) // c     a common factor of the coefficients and the divisor
    (-x + A) // c = -((x - A + c-1) // c)    the first coefficient is made positive (floor(-y) = -ceil(y))
    (A // a) // b = A // (a*b)               nested divisions by positive constants

Only names are bound by inputs; an expression's value follows from theirs (`evaluate`; the TVM lowering builds
the same expression through `build`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar, Union

Dim = Union[int, str]
T = TypeVar("T")

_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_]\w*)|(//|[-+*%(),]))")
BOUNDS = ("min", "max")  # the two-argument functions an atom may be (`min(seq,2048)`)


def is_dim_text(text: str) -> bool:
    """Whether `text` spells a symbolic dim (a name, or an expression of names the algebra above can hold)."""
    try:
        return bool(names(text))
    except ValueError:
        return False


# --- the canonical form: ((atom text, coefficient), ...), constant -------------------------------------------
Terms = tuple[tuple[tuple[str, int], ...], int]


def terms(dim: Dim) -> tuple[dict[str, int], int]:
    """(atom -> coefficient, constant) of a dim; an atom is a name or a floor division's text (`(seq+63)//64`)."""
    if isinstance(dim, int):
        return {}, dim
    parts, const = _parse(dim)
    return dict(parts), const


def affine(coefs: dict[str, int], const: int = 0) -> Dim:
    """The canonical dim of `sum(coef * atom) + const`: an int when no atom is left, else its text."""
    parts = []
    for atom in sorted(k for k, v in coefs.items() if v):
        coef = coefs[atom]
        sign = "-" if coef < 0 else "+"
        if _is_name(atom):
            parts.append(sign + (f"{abs(coef)}*" if abs(coef) != 1 else "") + atom)
        else:  # a division binds tighter than + but not than a coefficient or a minus: parenthesise those
            parts.append(sign + (atom if coef == 1 else (f"{abs(coef)}*" if abs(coef) != 1 else "") + f"({atom})"))
    if not parts:
        return const
    if const:
        parts.append(f"{const:+d}")
    text = "".join(parts)
    return text[1:] if text[0] == "+" else text


def add(a: Dim, b: Dim) -> Dim:
    (ca, ka), (cb, kb) = terms(a), terms(b)
    return affine({n: ca.get(n, 0) + cb.get(n, 0) for n in {*ca, *cb}}, ka + kb)


def mul(a: Dim, k: int) -> Dim:
    """`k * a` for an integer k (a product of two symbolic dims is no dim)."""
    coefs, const = terms(a)
    return affine({n: c * k for n, c in coefs.items()}, const * k)


def sub(a: Dim, b: Dim) -> Dim:
    return add(a, mul(b, -1))


def floordiv(a: Dim, c: int) -> Dim:
    """`a // c` for a positive constant c, in canonical form (the rules in the module docstring)."""
    if not isinstance(c, int) or isinstance(c, bool) or c < 1:
        raise ValueError(f"a dim is divided only by a positive constant, got {c!r}")
    if c == 1:
        return a
    coefs, const = terms(a)
    outside = {n: v // c for n, v in coefs.items() if v % c == 0}
    inside = {n: v for n, v in coefs.items() if v % c}
    outside_const, const = divmod(const, c)
    if not inside:
        return affine(outside, outside_const)
    g = math.gcd(c, *inside.values())
    if g > 1:  # (g*B + k) // (g*c') = (B + k//g) // c'
        return add(affine(outside, outside_const), floordiv(affine({n: v // g for n, v in inside.items()},
                                                                   const // g), c // g))
    first = min(inside)
    if inside[first] < 0:  # floor(A / c) = -floor((-A + c - 1) / c)
        flipped = floordiv(affine({n: -v for n, v in inside.items()}, -const + c - 1), c)
        return sub(affine(outside, outside_const), flipped)
    if len(inside) == 1 and inside[first] == 1 and const == 0 and not _is_name(first) \
            and _atom_parts(first)[0] == "//":
        inner, divisor = _split_division(first)  # (A // a) // c = A // (a*c)
        return add(affine(outside, outside_const), floordiv(inner, divisor * c))
    inner_text = str(affine(inside, const))
    atom = f"{inner_text}//{c}" if _is_name(inner_text) else f"({inner_text})//{c}"
    # built, not added (adding would parse the atom being read); x // c may already be outside: x - c*(x//c)
    return affine({**outside, atom: outside.get(atom, 0) + 1}, outside_const)


def mod(a: Dim, c: int) -> Dim:
    """`a % c` (Python's: in [0, c) for a positive c), held as `a - c*(a//c)`."""
    return sub(a, mul(floordiv(a, c), c))


def minimum(a: Dim, b: Dim) -> Dim:
    """`min(a, b)` in canonical form (the rules in the module docstring)."""
    return _bound("min", a, b)


def maximum(a: Dim, b: Dim) -> Dim:
    """`max(a, b)`, held as `-min(-a, -b)`'s canonical form."""
    return _bound("max", a, b)


def _bound(kind: str, a: Dim, b: Dim) -> Dim:
    pick = min if kind == "min" else max
    gap = sub(a, b)
    if isinstance(gap, int):  # a = b + gap: min(a, b) = b + min(gap, 0)
        return add(b, pick(gap, 0))
    (ca, ka), (cb, kb) = terms(a), terms(b)
    x, kx, y = (b, kb, a) if not ca or (cb and str(affine(cb)) < str(affine(ca))) else (a, ka, b)  # x symbolic
    x, y = sub(x, kx), sub(y, kx)  # min(X + k, Y) = k + min(X, Y - k)
    if terms(x)[0][min(terms(x)[0])] < 0:  # min(X, Y) = -max(-X, -Y): the first argument's lead made positive
        return sub(kx, _bound("max" if kind == "min" else "min", mul(x, -1), mul(y, -1)))
    return affine({f"{kind}({x},{y})": 1}, kx)  # built, not added (adding would parse the atom being read)


def names(dim: Dim) -> list[str]:
    """The input-bound names a dim reads, inside its divisions and bounds too."""
    found: set[str] = set()
    for atom in terms(dim)[0]:
        found.update([atom] if _is_name(atom) else [n for part in _atom_parts(atom)[1] for n in names(part)])
    return sorted(found)


def build(dim: Dim, name: Callable[[str], T], divide: Callable[[T, int], T], minimum: Callable = min,
          maximum: Callable = max):
    """A dim as another algebra's expression: `name(n)` for each name, `divide(x, c)` for floor division,
    `minimum(x, y)` / `maximum(x, y)` for the bounds, and + and * by ints (numbers, TVM PrimExprs). Terms keep their
    canonical order."""
    if isinstance(dim, int):
        return dim
    coefs, const = terms(dim)
    parts = []
    for atom, coef in coefs.items():
        if _is_name(atom):
            value = name(atom)
        else:
            kind, args = _atom_parts(atom)
            built = [build(a, name, divide, minimum, maximum) for a in args]
            value = divide(built[0], args[1]) if kind == "//" else (minimum if kind == "min" else maximum)(*built)
        parts.append(value if coef == 1 else coef * value)
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total + const if const else total


def evaluate(dim: Dim, env: dict[str, int]) -> int:
    """A dim's size once its names are bound (`env`: name -> size)."""
    return int(build(dim, env.__getitem__, lambda x, c: x // c))


def interval(dim: Dim, bounds: dict[str, tuple[int, int]], default: tuple[float, float] = (1, math.inf)
             ) -> tuple[float, float]:
    """The least and most a dim can be when each name lies within its `bounds` (name -> (least, most); `default`
    for names without: a length is at least 1). Interval arithmetic, so the span may be wider than the dim's
    true range (it ignores that `seq - seq` is 0) but never narrower: a sign it decides holds for every length."""
    def name(n):
        return _Interval(*bounds.get(n, default))

    built = build(dim, name, lambda x, c: _Interval.of(x).floordiv(c), lambda a, b: _Interval.of(a).min(b),
                  lambda a, b: _Interval.of(a).max(b))
    span = _Interval.of(built)
    return span.lo, span.hi


class _Interval:
    """[lo, hi] with the operations `build` applies: + (of intervals and ints), * by an int, // by a positive
    int, min and max."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi

    @staticmethod
    def of(x) -> _Interval:
        return x if isinstance(x, _Interval) else _Interval(x, x)

    def __add__(self, other):
        other = _Interval.of(other)
        return _Interval(self.lo + other.lo, self.hi + other.hi)

    __radd__ = __add__

    def __mul__(self, k: int):
        return _Interval(self.lo * k, self.hi * k) if k >= 0 else _Interval(self.hi * k, self.lo * k)

    __rmul__ = __mul__

    def floordiv(self, c: int) -> _Interval:
        def divide(x):  # inf // c is nan in Python
            return x if math.isinf(x) else x // c

        return _Interval(divide(self.lo), divide(self.hi))

    def min(self, other) -> _Interval:
        other = _Interval.of(other)
        return _Interval(min(self.lo, other.lo), min(self.hi, other.hi))

    def max(self, other) -> _Interval:
        other = _Interval.of(other)
        return _Interval(max(self.lo, other.lo), max(self.hi, other.hi))


# --- text -----------------------------------------------------------------------------------------------------
def _is_name(atom: str) -> bool:
    return atom.isidentifier()


def _atom_parts(atom: str) -> tuple[str, tuple[Dim, Dim]]:
    """A composite atom -> ("//", (A, c)) for `(A)//c`, ("min" | "max", (A, B)) for `min(A,B)`."""
    head = atom.partition("(")[0]
    if head in BOUNDS and atom.endswith(")"):
        depth = 0
        for i, ch in enumerate(atom[len(head) + 1:-1], start=len(head) + 1):
            depth += (ch == "(") - (ch == ")")
            if ch == "," and depth == 0:
                return head, (_as_dim(atom[len(head) + 1:i]), _as_dim(atom[i + 1:-1]))
    return "//", _split_division(atom)


def _split_division(atom: str) -> tuple[Dim, int]:
    """`(A)//c` or `name//c` -> (A, c)."""
    inner, _, divisor = atom.rpartition("//")
    inner = inner[1:-1] if inner.startswith("(") else inner
    return _as_dim(inner), int(divisor)


def split_dims(text: str) -> list[str]:
    """A shape's dims, split at the commas outside parentheses (`1,min(seq,64)` is two dims)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _as_dim(text: str) -> Dim:
    return int(text) if text.lstrip("-").isdigit() else text


def canonical(text: str) -> Dim:
    """A dim's text (`seq + 1`, `(seq+63)//64*64`) in canonical form: an int, or the canonical text."""
    parts, const = _parse(text)
    return affine(dict(parts), const)


@lru_cache(maxsize=4096)
def _parse(text: str) -> Terms:
    """Canonical (terms, constant) of a dim's text; ValueError names what is not a dim."""
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise ValueError(f"a dim is a size, a name or an expression of names with + - * // % by constants "
                             f"(kv+1, (seq+63)//64), got {text!r}")
        tokens.append(match.group(1) or match.group(2) or match.group(3))
        pos = match.end()
    reader = _Reader(tokens, text)
    value = reader.sum()
    if reader.pos != len(tokens):
        raise reader.error()
    if isinstance(value, int):
        return (), value
    if value != text:  # a text not in canonical form: hold its canonical spelling
        return _parse(value)
    return _split_affine(text)


def _split_affine(text: str) -> Terms:
    """Terms of a canonical text: split at the + and - outside parentheses."""
    coefs, const, depth, start = {}, 0, 0, 0
    pieces = []
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch in "+-" and depth == 0 and i > start:
            pieces.append(text[start:i])
            start = i
    pieces.append(text[start:])
    for piece in pieces:
        sign = -1 if piece[0] == "-" else 1
        body = piece.lstrip("+-")
        coef, star, rest = body.partition("*")
        if body.isdigit():
            const += sign * int(body)
        elif star and coef.isdigit() and not rest.startswith("("):  # 2*kv
            coefs[rest] = sign * int(coef)
        elif star and coef.isdigit():  # 64*((seq+63)//64)
            coefs[rest[1:-1]] = sign * int(coef)
        elif body.startswith("(") and body.endswith(")") and "//" not in body[body.rfind(")"):]:  # -((x)//c)
            coefs[body[1:-1]] = sign
        else:
            coefs[body] = sign
    return tuple(sorted(coefs.items())), const


class _Reader:
    """Recursive descent over tokens with Python's precedence: sum of products of unary factors."""

    def __init__(self, tokens: list[str], text: str):
        self.tokens, self.text, self.pos = tokens, text, 0

    def error(self, why: str = "") -> ValueError:
        return ValueError(f"a dim is a size, a name or an expression of names with + - * // % by constants "
                          f"(kv+1, (seq+63)//64), got {self.text!r}{': ' + why if why else ''}")

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise self.error("it ends early")
        self.pos += 1
        return token

    def sum(self) -> Dim:
        value = self.product()
        while self.peek() in ("+", "-"):
            value = add(value, self.product()) if self.take() == "+" else sub(value, self.product())
        return value

    def product(self) -> Dim:
        value = self.factor()
        while self.peek() in ("*", "//", "%"):
            op, right = self.take(), self.factor()
            if op == "*" and isinstance(value, int):
                value = mul(right, value)
            elif not isinstance(right, int) or (op != "*" and right < 1):
                raise self.error(f"`{op}` needs a {'positive ' if op != '*' else ''}constant operand")
            else:
                value = mul(value, right) if op == "*" else floordiv(value, right) if op == "//" else mod(value, right)
        return value

    def factor(self) -> Dim:
        token = self.take()
        if token in ("-", "+"):
            value = self.factor()
            return mul(value, -1) if token == "-" else value
        if token == "(":
            value = self.sum()
            if self.take() != ")":
                raise self.error("unbalanced parentheses")
            return value
        if token.isdigit():
            return int(token)
        if token in BOUNDS and self.peek() == "(":  # min(A, B), max(A, B)
            self.take()
            first = self.sum()
            if self.take() != ",":
                raise self.error(f"{token} takes two arguments")
            second = self.sum()
            if self.take() != ")":
                raise self.error("unbalanced parentheses")
            return minimum(first, second) if token == "min" else maximum(first, second)
        if _is_name(token):
            return token
        raise self.error(f"unexpected {token!r}")
