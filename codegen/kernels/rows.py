"""Small TVMScript helpers shared by the CPU row macros (`common.py`, `quant_blocks.py`): horizontal vector sums and
the position -> weight-row map of a row list."""

from __future__ import annotations

from collections.abc import Callable

from tvm.script import tirx as T


def hsum_macro(lanes: int):
    """`hsum(acc, base)`: acc[base] = sum(acc[base : base + lanes]) by vector halving (log2 steps)."""

    @T.macro
    def hsum(acc, base):
        if lanes >= 32:
            for v in T.vectorized(16):
                acc[base + v] = acc[base + v] + acc[base + v + 16]
        if lanes >= 16:
            for v in T.vectorized(8):
                acc[base + v] = acc[base + v] + acc[base + v + 8]
        if lanes >= 8:
            for v in T.vectorized(4):
                acc[base + v] = acc[base + v] + acc[base + v + 4]
        if lanes >= 4:
            for v in T.vectorized(2):
                acc[base + v] = acc[base + v] + acc[base + v + 2]
        if lanes >= 2:
            acc[base] = acc[base] + acc[base + 1]

    return hsum


def row_index(gathered: bool) -> Callable:
    """Position p of a row list -> weight row: rows[base + p] when gathered, base + p when contiguous."""
    if gathered:
        return lambda rows, base, p: rows[base + p]
    return lambda rows, base, p: base + p
