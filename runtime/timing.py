"""Timing that reflects decoding: weights come from DRAM, not cache.

Before every timed call we stream through a buffer several times the last-level cache, so the weights the
previous call touched are evicted (hot-cache numbers were 1.3–2x better and mean nothing for real decoding).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class CacheEvictor:
    def __init__(self, llc_bytes: int, factor: int = 3):
        self.buffer = np.ones(max(llc_bytes * factor, 8 << 20) // 8, dtype=np.float64)

    def __call__(self) -> float:
        self.buffer += 1.0  # read + write every line: evicts what was cached before
        return float(self.buffer[0])


@dataclass
class Timing:
    median_s: float
    min_s: float
    samples: list[float]

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3


def time_calls(fn: Callable[[], object], repeats: int = 20, warmup: int = 3,
               evict: Callable[[], object] | None = None) -> Timing:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if evict is not None:
            evict()
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return Timing(statistics.median(samples), min(samples), samples)
