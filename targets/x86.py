"""x86-64 CPU, detected from the host: machines differ (AMD Zen3 with AVX2 only, Intel/Zen4 with AVX-512),
so the LLVM CPU name, the vector width and the thread count are read here, never hard-coded."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from .base import Target


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown x86-64 CPU"


def _cache_bytes(index: int) -> int:
    """Size of cpu0's cache `index` in /sys (2: L2, 3: L3), 0 when the kernel does not say."""
    path = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size")
    try:
        text = path.read_text().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
        return int(text.rstrip("KM")) * scale
    except (OSError, ValueError, IndexError):
        return 0


def _llc_bytes() -> int:
    return _cache_bytes(3) or _cache_bytes(2) or 32 << 20


def _threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def host() -> Target:
    from tvm.target import codegen

    flags = _cpu_flags()
    mcpu = codegen.llvm_get_system_cpu()
    vector_bits = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
    isa = [f for f in ("avx512f", "avx512_fp16", "avx512_bf16", "avx2", "fma", "f16c") if f in flags]
    threads = _threads()
    return Target(
        name="x86",
        tvm={"kind": "llvm", "mcpu": mcpu, "num-cores": threads},
        vector_bits=vector_bits,
        threads=threads,
        cache_bytes=_llc_bytes(),
        l2_bytes=_cache_bytes(2),
        description=f"{_cpu_model()} ({mcpu}, {'/'.join(isa) or 'sse'}, {threads} threads)",
        features=tuple(isa),
        vector_registers=32 if vector_bits == 512 else 16,
    )
