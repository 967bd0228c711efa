"""A target is data: which TVM target to build for, and the facts kernels are scheduled from.

Codegen never branches on a target's name; it reads these fields (vector width, threads, caches, warp size)
and the kernel factories turn them into schedules. Which schedule family a target gets is a table keyed by
the TVM target kind (`SCHEDULES`), so adding a GPU or CPU target is adding data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Target:
    name: str                      # registry name: "x86", "cuda", "arm"
    tvm: dict[str, Any]            # TVM target dict, e.g. {"kind": "llvm", "mcpu": "znver3"}
    vector_bits: int               # SIMD register width (CPU) / widest load per thread (GPU); fp32 lanes = /32
    threads: int                   # worker threads (CPU) or threads per block (GPU)
    cache_bytes: int = 0           # last-level cache (CPU) or shared memory per block (GPU)
    l2_bytes: int = 0              # a core's mid-level cache (CPU): bounds the rows streamed at once
    description: str = ""
    host: dict[str, Any] | None = None     # host target for device code (CUDA)
    runs_here: bool = True         # can modules built for it run in this process?
    features: tuple[str, ...] = field(default=())
    vector_registers: int = 32     # architectural vector registers (AVX-512, NEON: 32; AVX2/SSE: 16)
    warp_size: int = 1             # threads that execute in lockstep (GPU warp: 32); 1 on CPUs
    multiprocessors: int = 1       # streaming multiprocessors (GPU): how many blocks run at once
    cross_compiler: str | None = None  # C compiler that links libraries built for it (when not the host's)
    run_hint: str = ""             # where a module built for it can run, when not here

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

        return CpuSchedule(lanes=self.lanes, threads=self.threads, vector_registers=self.vector_registers,
                           l2_bytes=self.l2_bytes)

    def gpu_schedule(self):
        from ..codegen.kernels.schedule import GpuSchedule

        return GpuSchedule(warp=self.warp_size, threads=self.threads, vector_bytes=self.vector_bits // 8,
                           multiprocessors=self.multiprocessors, shared_bytes=self.cache_bytes)

    def schedule(self):
        """The kernel schedule for this target: the family comes from `SCHEDULES[kind]`, its numbers from here."""
        return getattr(self, SCHEDULES[self.kind])()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tvm": self.tvm, "vector_bits": self.vector_bits, "threads": self.threads,
                "cache_bytes": self.cache_bytes, "l2_bytes": self.l2_bytes, "description": self.description,
                "features": list(self.features),
                "runs_here": self.runs_here, "run_hint": self.run_hint, "cross_compiler": self.cross_compiler}


SCHEDULES = {"llvm": "cpu_schedule", "c": "cpu_schedule", "cuda": "gpu_schedule"}
