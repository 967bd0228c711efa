"""Host memory for weights: numpy-owned, 64-byte aligned, shared with TVM through DLPack (zero copy).

numpy's large allocations get transparent huge pages (where the kernel allows them, as torch's do); TVM's own
allocator does not, and at DRAM-bound speeds the TLB misses of 4 KB pages cost measurable bandwidth.
"""

from __future__ import annotations

import numpy as np


def aligned_copy(array: np.ndarray, alignment: int = 64) -> np.ndarray:
    raw = np.empty(array.nbytes + alignment, np.uint8)
    offset = (-raw.ctypes.data) % alignment
    out = raw[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def host_tensor(array: np.ndarray):
    """A TVM CPU tensor viewing an aligned numpy copy of `array` (the copy is kept alive by the tensor)."""
    import tvm

    return tvm.runtime.from_dlpack(aligned_copy(np.ascontiguousarray(array)))
