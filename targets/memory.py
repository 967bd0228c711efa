"""Memory hierarchies as data: a target's levels, fastest first, each with its size and read bandwidth.

Cost decisions (sparse vs dense, predictor rank, which neurons stay hot in fast memory) need to know how much fits
where and how fast it reads. Targets declare their levels (nominal figures of the reference part); `profile()`
measures the host: sizes from /sys (the kernel's view of cpu0's caches), read bandwidths from a short streaming
read per level (a few hundred milliseconds each, under ~5 s in all): `measure_host_levels()`.

    MemoryLevel("L2", 2 << 20, 60e9, per="core")     a core's private 2 MiB L2 read at 60 GB/s
    MemoryLevel("DRAM", 24 << 30, 30e9, per="device")
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class MemoryLevel:
    name: str                  # "L1", "L2", "L3", "DRAM" (CPU); "shared", "L2", "VRAM", "host" (GPU); "disk"
    size_bytes: int            # capacity (0: unknown)
    read_bandwidth: float      # bytes per second one reader (a core / the device) gets streaming from it (0: unknown)
    per: str = "device"        # "core": private to each core (L1, L2); "block": per GPU thread block; "device": shared
    measured: bool = False     # True when `profile()` measured the bandwidth on this machine

    def to_dict(self) -> dict:
        return {"name": self.name, "size_bytes": self.size_bytes, "read_bandwidth": self.read_bandwidth,
                "per": self.per, "measured": self.measured}


def cpu_cache_sizes(cpu: int = 0) -> dict[int, int]:
    """{cache level: bytes} of `cpu`'s data/unified caches, from /sys ({} if it says nothing)."""
    sizes: dict[int, int] = {}
    for index in sorted(Path(f"/sys/devices/system/cpu/cpu{cpu}/cache").glob("index*")):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip().upper()
            sizes[level] = int(text.rstrip("KMG")) * {"K": KIB, "M": MIB, "G": GIB}.get(text[-1], 1)
        except (OSError, ValueError, IndexError):
            continue
    return sizes


def ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def available_ram_bytes() -> int:
    """Bytes the kernel says a new allocation can take without swapping (MemAvailable; 0 if unknown)."""
    try:
        meminfo = Path("/proc/meminfo").read_text().split("\n")
        return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0


def disk_bytes(directory: str | None = None) -> int:
    """Free bytes of the file system holding `directory` (default: the temp directory), where cold weights go."""
    import shutil
    import tempfile

    try:
        return int(shutil.disk_usage(directory or tempfile.gettempdir()).free)
    except OSError:
        return 0


def host_levels(bandwidths: dict[str, float] | None = None) -> tuple[MemoryLevel, ...]:
    """The host CPU's levels: caches from /sys, then DRAM, then the disk (where a hot/cold split keeps its cold
    neurons); `bandwidths` (name -> bytes/s) where known."""
    bandwidths = bandwidths or {}
    # L1/L2 private to a core (SMT siblings aside), L3 and beyond shared: the layout of every x86/ARM server part
    levels = [MemoryLevel(f"L{n}", size, bandwidths.get(f"L{n}", 0.0), "core" if n <= 2 else "device")
              for n, size in sorted(cpu_cache_sizes().items())]
    levels.append(MemoryLevel("DRAM", ram_bytes(), bandwidths.get("DRAM", 0.0)))
    levels.append(MemoryLevel("disk", disk_bytes(), bandwidths.get("disk", 0.0)))
    return tuple(levels)


def _read_bandwidth(nbytes: int, seconds: float) -> float:
    """Bytes/s of one core streaming through a buffer of `nbytes` (a BLAS dot product: vector loads, no stores),
    best of repeated passes for about `seconds`."""
    import numpy as np

    a = np.ones(max(nbytes // 4, 1024), np.float32)
    np.dot(a, a)  # fault the pages in, warm the level
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        np.dot(a, a)
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best


def measure_host_levels(seconds_per_level: float = 0.4) -> tuple[MemoryLevel, ...]:
    """Measure the host's memory levels: sizes from /sys, each level's single-core read bandwidth from a short
    streaming read of a buffer that fits it (half its size; DRAM: 4x the last cache). Takes well under 5 s.

    Figures are of the moment (other processes compete for bandwidth); `actsparse.targets.get("x86")` keeps the
    declared levels, `actsparse.targets.profile()` gives the host target with these measured ones."""
    declared = host_levels()
    caches = [lv for lv in declared if lv.name not in ("DRAM", "disk")]
    measured = []
    for level in caches:
        measured.append(replace(level, read_bandwidth=_read_bandwidth(max(level.size_bytes // 2, 16 * KIB),
                                                                      seconds_per_level), measured=True))
    llc = max((lv.size_bytes for lv in caches), default=32 * MIB)
    dram = next(lv for lv in declared if lv.name == "DRAM")
    measured.append(replace(dram, read_bandwidth=_read_bandwidth(min(4 * llc, 512 * MIB), seconds_per_level * 2),
                            measured=True))
    disk = next(lv for lv in declared if lv.name == "disk")
    measured.append(replace(disk, read_bandwidth=disk_read_bandwidth(), measured=True))
    return tuple(measured)


def disk_read_bandwidth(nbytes: int = 32 * MIB, directory: str | None = None) -> float:
    """Bytes/s of reading a freshly written file of `nbytes` after dropping it from the page cache
    (posix_fadvise DONTNEED): what reading cold neurons from disk gets. On a RAM-backed file system the drop does
    nothing and this measures memory."""
    import tempfile

    chunk = 1 * MIB
    data = os.urandom(chunk)
    with tempfile.NamedTemporaryFile(dir=directory, prefix="actsparse-disk-") as f:
        for _ in range(max(nbytes // chunk, 1)):
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        start, done = time.perf_counter(), 0
        while True:
            got = os.pread(f.fileno(), chunk, done)
            if not got:
                break
            done += len(got)
        return done / max(time.perf_counter() - start, 1e-9)
