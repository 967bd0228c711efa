"""Pass machinery: a pass is a frozen dataclass with a kebab-case `name`, options as fields, `run(graph)`.

Passes record what they matched with `record(pattern)`; `apply_pass` collects those counts as the pass
statistics that tests assert and the report shows. Rewrite rules are data: a `Rule` has a name, a
`before -> after` line, a `match` that returns bindings (or None) and a `build` that makes the replacement.
"""

from __future__ import annotations

import contextvars
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..ir import Graph, Node, rewrite

_STATS: contextvars.ContextVar[Counter | None] = contextvars.ContextVar("actsparse_pass_stats", default=None)
_NOTES: contextvars.ContextVar[list | None] = contextvars.ContextVar("actsparse_pass_notes", default=None)


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

    def run(self, graph: Graph) -> Graph:
        raise NotImplementedError

    def __str__(self) -> str:
        opts = ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))
        return f"{self.name}{{{opts}}}" if opts else self.name


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


def apply_rules(graph: Graph, rules: list[Rule], weights=None) -> Graph:
    """One bottom-up sweep; the first matching rule rewrites a node. Counts go to the pass statistics."""

    def visit(node: Node) -> Node | None:
        for rule in rules:
            bound = rule.match(node)
            if bound is not None:
                record(rule.name)
                return rule.build(node, bound)
        return None

    return rewrite(graph, visit, weights)
