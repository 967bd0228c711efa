"""Weight arrays in the layout the runtime shares without copying: C-contiguous and 64-byte aligned.

numpy aligns large allocations to 16 bytes only, and TVM views an array in place only when it is aligned for
vector loads, so a weight that a pass creates (a transposed W_down, a split gate/up) is allocated aligned once
here; otherwise the runtime would make a second copy of it.
"""

from __future__ import annotations

import numpy as np

ALIGNMENT = 64


def is_aligned(array: np.ndarray, alignment: int = ALIGNMENT) -> bool:
    return bool(array.flags.c_contiguous) and array.ctypes.data % alignment == 0


def aligned_contiguous(array: np.ndarray, alignment: int = ALIGNMENT) -> np.ndarray:
    """`array` itself when C-contiguous and aligned, else one aligned C-contiguous copy of it."""
    array = np.asarray(array)
    if is_aligned(array, alignment):
        return array
    raw = np.empty(array.nbytes + alignment, np.uint8)
    offset = (-raw.ctypes.data) % alignment
    out = raw[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out
