"""aarch64 with NEON (128-bit vectors, 32 vector registers), cross-compiled from x86.

On an x86 host, modules built for it do not run in this process: their kernels are linked with
aarch64-linux-gnu-gcc and run under qemu-aarch64 (tests, `tests/cross.py`); a compiled model saves an
aarch64 library (`scripts/install-cross.sh` installs both tools).
"""

from __future__ import annotations

import platform

from .base import Target
from .memory import MemoryLevel

CROSS_CC = "aarch64-linux-gnu-gcc"


def on_aarch64() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def target(threads: int = 4, fp16fml: bool = False) -> Target:
    """fp16fml: the core has FEAT_FHM (fp16 multiply into fp32 sums: fmlal/fmlal2; Neoverse N2/V1 and later,
    not N1): registered as "arm-fhm"."""
    native = on_aarch64()
    return Target(
        name="arm-fhm" if fp16fml else "arm",
        tvm={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"] + (["+fp16fml"] if fp16fml else []),
             "num-cores": threads},
        vector_bits=128,
        threads=threads,
        # Neoverse N1/N2 (Graviton 2/3): 64 KB L1d and 1 MB L2 per core, 32 MB shared L3; nominal one-core read
        # bandwidths of the reference part (`actsparse.targets.profile()` measures a host)
        memory=(MemoryLevel("L1", 64 << 10, 100e9, "core"), MemoryLevel("L2", 1 << 20, 50e9, "core"),
                MemoryLevel("L3", 32 << 20, 30e9), MemoryLevel("DRAM", 64 << 30, 20e9)),
        description="aarch64 NEON" + (" + fp16fml" if fp16fml else "") + ("" if native else " (cross-compiled)"),
        runs_here=native,
        features=("neon", "fp16fml") if fp16fml else ("neon",),
        vector_registers=32,
        # two accumulators: an fp16 weight load fills a whole q register (ldr q, fcvtl + fcvtl2) and the down
        # projection's FMAs run in two independent chains (the little in-order cores stall on one)
        accumulators=2,
        cross_compiler=None if native else CROSS_CC,
        run_hint="run it on an aarch64 machine or under qemu-aarch64",
    )
