"""aarch64 with NEON (128-bit vectors), cross-compiled: objects link with aarch64-linux-gnu-gcc and run under
qemu-aarch64, so modules built for it do not run in this process."""

from __future__ import annotations

from .base import Target


def target(threads: int = 4) -> Target:
    return Target(
        name="arm",
        tvm={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": threads},
        vector_bits=128,
        threads=threads,
        cache_bytes=2 << 20,
        description="aarch64 NEON (cross-compiled)",
        runs_here=False,
        features=("neon",),
    )
