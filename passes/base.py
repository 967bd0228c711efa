"""Pass machinery: a pass is a frozen dataclass with a kebab-case `name`, options as fields, `run(graph)`.

Passes record what they matched with `record(pattern)`; `apply_pass` collects those counts as the pass
statistics that tests assert and the report shows. Rewrite rules are data: a `Rule` has a name, a
`before -> after` line, a `match` that returns bindings (or None) and a `build` that makes the replacement.
A build that needs a new weight (a transposed or per-expert copy of one) asks `derived_weight` for it; during
`apply_rules` the new arrays are collected and handed to the rewritten graph, the old ones are never edited.
"""

from __future__ import annotations

import contextvars
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from ..ir import Graph, Node, rewrite, weight_node
from ..ir.arrays import aligned_contiguous

_STATS: contextvars.ContextVar[Counter | None] = contextvars.ContextVar("actsparse_pass_stats", default=None)
_NOTES: contextvars.ContextVar[list | None] = contextvars.ContextVar("actsparse_pass_notes", default=None)
# (the graph's weights, the weights derived so far) while rules run
_POOL: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("actsparse_weight_pool", default=None)


def record(pattern: str, count: int = 1) -> None:
    stats = _STATS.get()
    if stats is not None:
        stats[pattern] += count


def note(entry: dict[str, Any]) -> None:
    """Attach a structured finding (e.g. a block left dense and why) for the report."""
    notes = _NOTES.get()
    if notes is not None:
        notes.append(entry)


@dataclass(frozen=True)
class Pass:
    name: ClassVar[str] = ""
    data_options: ClassVar[tuple[str, ...]] = ()  # fields that carry data (calibration samples), not printed

    def run(self, graph: Graph) -> Graph:
        raise NotImplementedError

    def __str__(self) -> str:
        opts = ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self) if f.name not in self.data_options)
        return f"{self.name}{{{opts}}}" if opts else self.name


def coerce_options(p: Pass) -> None:
    """Options of the text form (`parse_pipeline`) arrive as strings: give the int and float fields their type and
    read a bool field's string ("0", "false", "no": False). Call it from a pass's `__post_init__`."""
    for f in fields(p):
        kind, value = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""), getattr(p, f.name)
        if kind in ("int", "float"):
            object.__setattr__(p, f.name, {"int": int, "float": float}[kind](value))
        elif kind == "bool" and isinstance(value, str):
            object.__setattr__(p, f.name, value.lower() not in ("0", "false", "no"))


@dataclass
class PassResult:
    graph: Graph
    stats: dict[str, int]
    notes: list[dict[str, Any]]


def apply_pass(p: Pass, graph: Graph) -> PassResult:
    stats, notes = Counter(), []
    tokens = _STATS.set(stats), _NOTES.set(notes)
    try:
        out = p.run(graph)
    finally:
        _STATS.reset(tokens[0])
        _NOTES.reset(tokens[1])
    return PassResult(out, dict(stats), notes)


@dataclass(frozen=True)
class Rule:
    name: str
    before_after: str
    match: Callable[[Node], dict | None]
    build: Callable[[Node, dict], Node]


def weight_array(node: Node) -> np.ndarray:
    """The array of a weight node: one of the graph's, or one derived earlier in this sweep."""
    held, derived = _pool()
    name = node.attrs["name"]
    return derived[name] if name in derived else held[name]


def derived_weight(name: str, make: Callable[[], np.ndarray]) -> Node:
    """A weight node for a new named array computed (once) from existing weights, e.g. `W.t` or `W.e3`."""
    held, derived = _pool()
    if name not in derived:
        array, base, n = aligned_contiguous(make()), name, 0
        while name in held and not np.array_equal(held[name], array):  # a different weight has the name
            n += 1
            name = f"{base}_{n}"
        derived[name] = array
    return weight_node(name, derived[name])


def _pool() -> tuple:
    pool = _POOL.get()
    if pool is None:
        raise RuntimeError("weights can only be derived while apply_rules runs")
    return pool


def apply_rules(graph: Graph, rules: list[Rule], weights=None) -> Graph:
    """One bottom-up sweep; the first matching rule rewrites a node. Counts go to the pass statistics."""

    def visit(node: Node) -> Node | None:
        for rule in rules:
            bound = rule.match(node)
            if bound is not None:
                record(rule.name)
                return rule.build(node, bound)
        return None

    derived: dict[str, np.ndarray] = dict(weights or {})
    token = _POOL.set((graph.weights, derived))
    try:
        return rewrite(graph, visit, derived)
    finally:
        _POOL.reset(token)
