"""The markdown tables the benchmarks print for BENCHMARKS.md: a header, its alignment row, a line per result."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[str]], right_from: int | None = None) -> str:
    """`rows` of formatted cells under `columns`; columns from index `right_from` on are right-aligned (numbers),
    none when it is None."""
    align = ["---:" if right_from is not None and i >= right_from else "---" for i in range(len(columns))]
    lines = [f"| {' | '.join(columns)} |", f"|{'|'.join(align)}|"]
    lines += [f"| {' | '.join(str(c) for c in row)} |" for row in rows]
    return "\n".join(lines)
