"""Table cells shared by the parts of benchmarks/decode.py."""

from __future__ import annotations


def ratio_cell(a, b) -> str:
    return f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) else "n/a"


def rate_cell(r) -> str:
    return f"{r:.2f}" if isinstance(r, float) else ("not run" if r is None else str(r))
