"""Which integer row dots serve a quantized layout on a schedule, as one table (`INT8_ROW_DOTS`, first match wins).

Where the schedule's int8 dot serves a layout (`quant_int8.uses_int8_dot`), a kernel quantizes x once per call to
8-bit groups and its row dots multiply in integers. How x is laid out for that and how the dots read the rows
depends on the layout, the dot and sometimes the kernel: one entry per family of row dots, with everything
`common.x_operand` and `common.dots_macro` need of it:

    serves(layout, sched, kernel) -> bool          whether the family takes these rows (tests in table order)
    x_layout(d, dtype, sched)                      the prepared x's byte layout (its `nbytes` per token)
    prep(d, dtype, sched)                          `prep(x, xb, M)`: xb <- x quantized in that layout
    dots(d, dtype, sched, *, gathered, store, prefetch)    (`dots_all`, `dots`) of `common.dots_macro` on xb

A new family of integer row dots is its module and one entry here, placed before the entries it must win over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...ir.quant import LAYOUTS, QuantLayout
from .quant_int8 import int8_dots_macro, uses_int8_dot, x8_prep_macro, x_blocks
from .quant_paired8 import paired_dots, paired_prep_macro, paired_q8
from .quant_split import is_split, split_dots_macro, split_prep_macro, split_x
from .quant_split8 import is_split8, split8_dots_macro, split8_prep_macro, split8_x
from .schedule import CpuSchedule


@dataclass(frozen=True)
class RowDots:
    """One family of integer row dots (module docstring)."""

    name: str
    serves: Callable[[QuantLayout, CpuSchedule, str], bool]
    x_layout: Callable[[int, str, CpuSchedule], object]
    prep: Callable
    dots: Callable


def _every_layout(lay: QuantLayout, sched: CpuSchedule, kernel: str) -> bool:
    return True


INT8_ROW_DOTS = (
    # split q4 rows (q4_0, q4_1): K groups' codes per vector, x laid out per group to match (`quant_split.py`)
    RowDots("split4", is_split, lambda d, dtype, sched: split_x(d, dtype), split_prep_macro, split_dots_macro),
    # split q8_0 rows on a pair-sum dot (AVX2): a row per vector, 4 groups per iteration (`quant_split8.py`)
    RowDots("split8", is_split8, lambda d, dtype, sched: split8_x(d), lambda d, dtype, sched: split8_prep_macro(d),
            split8_dots_macro),
    # q8_0 on AVX512-VNNI in the kernels the schedule names: a row's two groups per vector (`quant_paired8.py`)
    RowDots("paired8", paired_q8, lambda d, dtype, sched: x_blocks(d, sched), paired_prep_macro, paired_dots),
    # every other layout the dot serves: lanes / 4 rows' 16 code bytes side by side per vector (`quant_int8.py`)
    RowDots("blocks", _every_layout, lambda d, dtype, sched: x_blocks(d, sched), x8_prep_macro, int8_dots_macro),
)


def int8_row_dots(dtype: str, sched: CpuSchedule, kernel: str = "") -> RowDots | None:
    """The entry of `INT8_ROW_DOTS` whose row dots `kernel`'s `dtype` rows take on `sched`; None where they stay float
    (no int8 dot, or one that does not serve the layout)."""
    if not uses_int8_dot(dtype, sched):
        return None
    lay = LAYOUTS[dtype]
    return next(entry for entry in INT8_ROW_DOTS if entry.serves(lay, sched, kernel))
