"""A target is data: which TVM target to build for, and the facts kernels are scheduled from and passes decide by.

Codegen never branches on a target's name; it reads these fields (vector width, threads, warp size, memory
levels) and turns them into kernel schedules (`codegen/schedules.py`, keyed by the TVM target kind). Passes that
decide by cost read the memory hierarchy (`memory`: levels fastest first, each with size and read bandwidth,
see `memory.py`). Nothing here imports codegen: adding a GPU or CPU target is adding data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .memory import MemoryLevel


@dataclass(frozen=True)
class Target:
    name: str                      # registry name: "x86", "cuda", "arm"
    tvm: dict[str, Any]            # TVM target dict, e.g. {"kind": "llvm", "mcpu": "znver3"}
    vector_bits: int               # SIMD register width (CPU) / widest load per thread (GPU); fp32 lanes = /32
    threads: int                   # worker threads (CPU) or threads per block (GPU)
    memory: tuple[MemoryLevel, ...] = ()   # fastest first: caches, main memory (GPU: shared, L2, VRAM, host)
    description: str = ""
    host: dict[str, Any] | None = None     # host target for device code (CUDA)
    runs_here: bool = True         # can modules built for it run in this process?
    features: tuple[str, ...] = field(default=())
    vector_registers: int = 32     # architectural vector registers (AVX-512, NEON: 32; AVX2/SSE: 16)
    warp_size: int = 1             # threads that execute in lockstep (GPU warp: 32); 1 on CPUs
    multiprocessors: int = 1       # streaming multiprocessors (GPU): how many blocks run at once
    cross_compiler: str | None = None  # C compiler that links libraries built for it (when not the host's)
    run_hint: str = ""             # where a module built for it can run, when not here
    shared_memory_bytes: int = 0   # GPU: shared memory one thread block may use (0 on CPUs)
    accumulators: int = 1          # CPU: independent vector accumulators per dot product / FMA chains per axpy
                                   # (in-order cores need more than one to hide FMA latency; 2 also lets fp16
                                   # weights load a full register of halves at once)
    # CPU kernels whose quantized down projection (the row axpy) runs on the int8 dot, where the target has one
    # (codegen/kernels/quant_axpy8.py: each step's coefficients rounded to int8); the others dequantize in
    # registers. Measured on a VNNI Xeon, q4_0 at Mistral-7B dims (BENCHMARKS.md, sessions 7-8): the integer axpy
    # makes dense 14-19% faster (every row, streamed contiguously) and the gathered sparse kernels (exact, indexed,
    # listed, threshold, input, routed: ~10% of the rows) 0-18% slower (the per-step rounding costs more than it saves)
    int8_axpy_kernels: tuple[str, ...] = ("dense",)

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

    def level(self, name: str) -> MemoryLevel | None:
        """The memory level called `name` ("L2", "DRAM", "VRAM", ...), or None."""
        return next((lv for lv in self.memory if lv.name == name), None)

    @property
    def l2_bytes(self) -> int:
        """A core's L2 (CPU; 0: unknown): bounds the weight rows a kernel streams at once."""
        level = self.level("L2")
        return level.size_bytes if level is not None and level.per == "core" else 0  # a GPU's L2 is device-wide

    @property
    def llc_bytes(self) -> int:
        """The last cache level before main memory (CPU: L3 or L2; GPU: L2), 0 if none is declared: what a benchmark
        must evict to time reads from main memory."""
        caches = [lv.size_bytes for lv in self.memory if lv.name.startswith("L")]
        return max(caches, default=0)

    @property
    def main_memory(self) -> MemoryLevel | None:
        """Where the weights live: DRAM on a CPU, VRAM on a GPU."""
        return self.level("VRAM") or self.level("DRAM")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tvm": self.tvm, "vector_bits": self.vector_bits, "threads": self.threads,
                "memory": [lv.to_dict() for lv in self.memory], "shared_memory_bytes": self.shared_memory_bytes,
                "description": self.description,
                "features": list(self.features),
                "runs_here": self.runs_here, "run_hint": self.run_hint, "cross_compiler": self.cross_compiler}

