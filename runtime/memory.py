"""Host memory for weights: shared with TVM through DLPack, zero copy where the array allows it.

A 64-byte aligned, C-contiguous, writeable array (numpy's and torch's own allocations are) is handed to TVM as
it is: a compiled model holds no second copy of its weights, so compile and load stay within about one copy
of the model (`benchmarks/compile_scale.py`). Anything else (a strided view, an unaligned slice of a file
buffer, a read-only array) is copied once into fresh numpy memory, which gets transparent huge pages where
the kernel allows them.
"""

from __future__ import annotations

import numpy as np

from ..ir.arrays import ALIGNMENT, aligned_contiguous, is_aligned


def shareable(array: np.ndarray, alignment: int = ALIGNMENT) -> bool:
    """Whether TVM can view `array` in place: C-contiguous, aligned, writeable (DLPack has no read-only flag)."""
    return bool(array.flags.writeable) and is_aligned(array, alignment)


def host_tensor(array: np.ndarray):
    """A TVM CPU tensor viewing `array` when it is shareable, else an aligned copy of it (kept alive by the
    tensor). Views share the caller's memory: writing the array later changes what the tensor holds."""
    import tvm

    array = np.asarray(array)
    if not shareable(array):
        array = aligned_contiguous(np.array(array, copy=True) if is_aligned(array) else array)
    return tvm.runtime.from_dlpack(array)
