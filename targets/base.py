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

EXACT_GATES = ("dense", "certified")
CERTIFIED_SCORES = ("int16", "float")


KERNEL_FAMILIES = {"llvm": "cpu", "c": "cpu", "cuda": "cuda"}  # TVM target kind -> kernel family (codegen/schedules)


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
    # CPU flags (/proc/cpuinfo names) whose instructions the built code may hold beyond `features` (x86: what LLVM
    # may emit for the CPU it builds for): a CPU without one of them cannot run the module
    requires: tuple[str, ...] = field(default=())
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
    # how exact mode finds a ReLU-family block's active neurons: "dense" reads every gate row; "certified" reads an
    # int8 copy of the gate first and only the gate rows of the neurons its error bound cannot certify inactive
    # (passes/certify_exact_gate.py: the same outputs, ~1.06 extra bytes per gate weight held). Worth it where the
    # CPU scores int8 rows on an integer dot (VNNI: codegen/kernels/score_int16.py); x86.host() sets it from that
    exact_gate: str = "dense"
    # the certified kernel's score pass (codegen/kernels/scored_mlp.py): "int16" scores against x rounded to int16
    # where the schedule has the dot (else the float path), "float" always the float path; `certified_in_kernel`
    # False scores in a q8_0 linear before the scored kernel instead (the A/Bs of benchmarks/scored_ab.py)
    certified_scores: str = "int16"
    certified_in_kernel: bool = True
    # threshold mode's input-sparse kernel against the dense one: its time per weight byte it reads over dense's, by
    # storage (a `quantize=` kind, "fp32" unquantized; missing: 1.0). passes/sparsify_threshold.py keeps a block
    # dense where (1 - effective sparsity) x this + input_fixed_bytes / its bytes >= 1: skipping would not pay for
    # the slower gathered reads
    input_byte_cost: dict[str, float] = field(default_factory=dict)
    # and its per-call cost beyond dense's, as the bytes dense reads in that time (a small block's fixed share: the
    # rule adds fixed / the block's bytes to the ratio), by storage (missing: 0)
    input_fixed_bytes: dict[str, float] = field(default_factory=dict)
    # whether a decoder's step is built to be captured whole in a graph (CUDA graphs: codegen/static_step.py adds
    # `step_graph`, every shape static and its inputs in fixed buffers that runtime/decoder.py owns)
    graph_capture: bool = False

    def __post_init__(self) -> None:
        if self.exact_gate not in EXACT_GATES:
            raise ValueError(f"Target.exact_gate must be one of {', '.join(EXACT_GATES)}, got {self.exact_gate!r}")
        if self.certified_scores not in CERTIFIED_SCORES:
            raise ValueError(f"Target.certified_scores must be one of {', '.join(CERTIFIED_SCORES)}, got "
                             f"{self.certified_scores!r}")

    @property
    def lanes(self) -> int:
        return max(1, self.vector_bits // 32)

    @property
    def kind(self) -> str:
        return self.tvm["kind"]

    @property
    def kernel_family(self) -> str:
        """"cpu" or "cuda": the kernel family its TVM kind selects (the names sparse variants declare kernels under,
        ir/sparse_variants.py), so a pass can ask a variant's entry whether this target has its kernel."""
        return KERNEL_FAMILIES.get(self.kind, self.kind)

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
                "features": list(self.features), "requires": list(self.requires),
                "runs_here": self.runs_here, "run_hint": self.run_hint, "cross_compiler": self.cross_compiler}

