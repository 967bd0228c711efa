"""A target is data: which TVM target to build for, and the facts kernels are scheduled from.

Codegen never branches on a target's name; it reads these fields (vector width, threads, caches) and the
kernel factories turn them into schedules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Target:
    name: str                      # registry name: "x86", "cuda", "arm"
    tvm: dict[str, Any]            # TVM target dict, e.g. {"kind": "llvm", "mcpu": "znver3"}
    vector_bits: int               # SIMD register width (CPU) — fp32 lanes = vector_bits // 32
    threads: int                   # worker threads (CPU) or threads per block (GPU)
    cache_bytes: int = 0           # last-level cache (CPU) or shared memory per block (GPU)
    description: str = ""
    host: dict[str, Any] | None = None     # host target for device code (CUDA)
    runs_here: bool = True         # can modules built for it run in this process?
    features: tuple[str, ...] = field(default=())
    vector_registers: int = 32     # architectural vector registers (AVX-512, NEON: 32; AVX2/SSE: 16)

    @property
    def lanes(self) -> int:
        return max(1, self.vector_bits // 32)

    @property
    def kind(self) -> str:
        return self.tvm["kind"]

    def tvm_target(self):
        import tvm

        if self.host is not None:
            return tvm.target.Target(self.tvm, host=self.host)
        return tvm.target.Target(self.tvm)

    def cpu_schedule(self):
        from ..codegen.kernels.schedule import CpuSchedule

        return CpuSchedule(lanes=self.lanes, threads=self.threads, vector_registers=self.vector_registers)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tvm": self.tvm, "vector_bits": self.vector_bits, "threads": self.threads,
                "cache_bytes": self.cache_bytes, "description": self.description, "features": list(self.features)}
