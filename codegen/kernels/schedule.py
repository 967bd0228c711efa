"""Schedule parameters of the CPU and GPU kernels: data the target supplies, never detected here.

A kernel factory takes one schedule — `CpuSchedule` (sparse_mlp.py, linear.py: x86, arm) or `GpuSchedule`
(cuda_mlp.py) — and bakes it into the PrimFunc; the same parameters go into the PrimFunc's `global_symbol`
(see the `tag` properties), so two kernels that differ only in schedule never collide in one Relax module.
`codegen.schedules.schedule_for(target)` makes the schedule from the target's data; `kernels.kernel()` picks the
family by its type.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...ir.quant import LAYOUTS

# the CPU kernels with a down projection (a row axpy), in the bit order of the schedule's tag
AXPY_KERNELS = ("dense", "exact", "indexed", "listed", "threshold", "input", "routed", "scored")


def _axpy_tag(kernels: tuple[str, ...]) -> str:
    """"" when every kernel's axpy may be integer, else "a" + the hex mask of those that may ("a0": none)."""
    if kernels == AXPY_KERNELS:
        return ""
    return f"a{sum(1 << AXPY_KERNELS.index(k) for k in kernels):x}"


def _paired_tag(kernels: tuple[str, ...]) -> str:
    """"" for the default paired_q8 (the indexed kernel), else "q" + the hex mask of its kernels ("q0": none)."""
    if kernels == ("indexed",):
        return ""
    return f"q{sum(1 << AXPY_KERNELS.index(k) for k in kernels):x}"


@dataclass(frozen=True)
class CpuSchedule:
    """How a CPU kernel is vectorized, unrolled and split across threads.

    lanes         fp32 vector lanes: 4 for SSE/NEON, 8 for AVX2, 16 for AVX-512.
    threads       worker threads the kernel splits its work into (one `T.parallel` task each).
    rows          weight rows streamed together. One core reads a single gathered 16 KB row at
                  only ~60% of its streaming bandwidth (the hardware prefetchers retrain at every
                  jump); 4-8 concurrent rows plus software prefetch reach the streaming rate (Zen 4:
                  8 rows x 1 accumulator was best at batch 1). rows * accumulators vector registers
                  hold the batch-1 dot-product accumulators.
    accumulators  independent vector accumulators per row in a dot product (hides FMA latency), and
                  the width in vectors of one column block of the down projection's axpy.
    token_block   tokens (M > 1, prefill) sharing each loaded weight vector (see `block_rows`);
                  1 disables the blocked path.
    prefetch      software-prefetch (into L2) the next `rows` rows while streaming the current ones.
    vector_registers  architectural vector registers: 32 (AVX-512, NEON), 16 (AVX2, SSE).
    l2_bytes      a core's mid-level cache (0: unknown). The rows of a step and the prefetched rows of the
                  next must stay in it, so `fitted` lowers `rows` for long rows (see there).
    fp16fml       the target multiplies fp16 pairs into fp32 sums (aarch64 FEAT_FHM: fmlal / fmlal2): fp16 weight
                  dot products then take x rounded to fp16 and skip the widening of the weights.
    int8_dot      the target's 4-way u8 x s8 -> i32 dot instruction ("" if none; names in `int8_dots.INT8_DOTS`,
                  e.g. "vpdpbusd512" for AVX512-VNNI, "pmaddubsw256" for AVX2 without VNNI): quantized-weight row
                  dots of the layouts it serves then take x quantized to 8-bit blocks once per call and multiply in
                  integers (`quant_int8.py`).
    int8_axpy     the kernels (names of `kernels.KERNELS` with a down projection, `AXPY_KERNELS`) whose quantized row
                  axpy runs on that dot too where the dot serves axpys (`quant_axpy8.py`: coefficients rounded per
                  step to int8); the others keep it float. From the target's data (`Target.int8_axpy_kernels`);
                  True / False: every kernel / none (A/B timings). Ask `integer_axpy(kernel)`.
    paired_q8     the kernels (`AXPY_KERNELS` names) whose q8_0 row dots take a row's two blocks per vector where the
                  int8 dot is AVX512-VNNI (`quant_paired8.paired_dots`, x laid out to match by `paired_prep_macro`): on
                  gathered rows (indexed) 0.92x the time, on streamed ones (dense) 1.03-1.04x (BENCHMARKS.md, sessions
                  15 and 16), so a kernel's choice, not the layout's. Ask `pairs_q8(kernel)`.
    certified_scores  the certified kernel's score pass (scored_mlp.certified_gated_mlp): "int16" (x rounded to
                  int16 on the int16 dot of `score_int16.SCORE_DOTS` where `int8_dot` names one, else the float
                  path) or "float" (always the float path); the kernel's symbol says which it got.
    certified_in_kernel  the bound's scores computed inside the certified kernel (True) or by a q8_0 linear before
                  the scored kernel (False; codegen/lower_predictor.py). Both from the target's data
                  (`Target.certified_scores`, `.certified_in_kernel`); benchmarks/scored_ab.py flips them.
    """

    lanes: int
    threads: int
    rows: int = 8
    accumulators: int = 1
    token_block: int = 4
    prefetch: bool = True
    vector_registers: int = 32
    l2_bytes: int = 0
    fp16fml: bool = False
    int8_dot: str = ""
    int8_axpy: tuple[str, ...] | bool = AXPY_KERNELS
    paired_q8: tuple[str, ...] = ("indexed",)
    certified_scores: str = "int16"
    certified_in_kernel: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefetch", bool(self.prefetch))
        object.__setattr__(self, "fp16fml", bool(self.fp16fml))
        kernels = AXPY_KERNELS if self.int8_axpy is True else () if self.int8_axpy is False else self.int8_axpy
        unknown = set(kernels) - set(AXPY_KERNELS)
        if unknown:
            raise ValueError(f"CpuSchedule.int8_axpy names no kernel with a down projection: {sorted(unknown)}; "
                             f"known: {', '.join(AXPY_KERNELS)}")
        object.__setattr__(self, "int8_axpy", tuple(k for k in AXPY_KERNELS if k in kernels))
        unpaired = set(self.paired_q8) - set(AXPY_KERNELS)
        if unpaired:
            raise ValueError(f"CpuSchedule.paired_q8 names no kernel with a down projection: {sorted(unpaired)}; "
                             f"known: {', '.join(AXPY_KERNELS)}")
        object.__setattr__(self, "paired_q8", tuple(k for k in AXPY_KERNELS if k in self.paired_q8))
        if self.certified_scores not in ("int16", "float"):
            raise ValueError(f"CpuSchedule.certified_scores must be 'int16' or 'float', got {self.certified_scores!r}")
        object.__setattr__(self, "certified_in_kernel", bool(self.certified_in_kernel))
        if self.lanes not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"CpuSchedule.lanes must be a power of two <= 32, got {self.lanes}")
        for field in ("threads", "rows", "accumulators", "token_block", "vector_registers"):
            if getattr(self, field) < 1:
                raise ValueError(f"CpuSchedule.{field} must be >= 1, got {getattr(self, field)}")

    def fitted(self, d: int, *dtypes: str) -> CpuSchedule:
        """This schedule for rows of d elements of each of `dtypes` (a kernel whose down projection has a layout of
        its own passes both; the widest rows count): `rows` halved until a step's rows plus the prefetched next
        step's (2 * rows * d * bytes) take at most half the L2 (the rest holds x, h and the output). Prefetched rows
        evicted before use would be read twice."""
        row_bytes = max(LAYOUTS[t].row_bytes(d) if t in LAYOUTS else d * (2 if t == "float16" else 4) for t in dtypes)
        rows = self.rows
        while self.l2_bytes and rows > 1 and 2 * rows * row_bytes > self.l2_bytes // 2:
            rows //= 2
        return self if rows == self.rows else replace(self, rows=rows)

    def integer_axpy(self, kernel: str) -> bool:
        """Whether `kernel`'s down projection may take the integer path (`quant_axpy8.uses_int8_axpy` also asks the
        dot and the layout)."""
        return kernel in self.int8_axpy

    def pairs_q8(self, kernel: str) -> bool:
        """Whether `kernel`'s q8_0 row dots may take the paired form (`quant_paired8.paired_q8` also asks the dot)."""
        return kernel in self.paired_q8

    @property
    def block_rows(self) -> int:
        """Rows per register block on the token-blocked (M > 1) path: the largest divisor of `rows` whose
        block_rows * token_block accumulators, token_block x vectors and one weight vector fit the
        register file."""
        limit = max(1, (self.vector_registers - self.token_block - 1) // self.token_block)
        return max(r for r in range(1, self.rows + 1) if self.rows % r == 0 and r <= limit)

    @property
    def tag(self) -> str:
        """Short identifier-safe encoding, part of every kernel's global_symbol: `l16t2r8a1b4v32p1`."""
        return (f"l{self.lanes}t{self.threads}r{self.rows}a{self.accumulators}b{self.token_block}"
                f"v{self.vector_registers}p{int(self.prefetch)}" + ("h1" if self.fp16fml else "")
                + (f"i{self.int8_dot}" if self.int8_dot else "") + _axpy_tag(self.int8_axpy)
                + _paired_tag(self.paired_q8))


@dataclass(frozen=True)
class GpuSchedule:
    """How a GPU kernel maps onto warps and blocks (all from the target's data).

    warp            threads per warp (32 on NVIDIA): one warp computes one weight row's dot product, each
                    lane loading `vector_bytes` per step, so a warp reads warp * vector_bytes contiguous bytes
                    per load instruction (coalesced: 512 B for 16-byte loads).
    threads         threads per block; threads // warp warps per block.
    vector_bytes    bytes one thread loads at once (16: float4 / eight halves).
    multiprocessors streaming multiprocessors; the down projection splits its row list into enough parts to
                    give every multiprocessor `blocks_per_sm` blocks.
    shared_bytes    shared memory per block available to a kernel.
    blocks_per_sm   blocks of the down projection per multiprocessor (with the split-K `splits`).
    rows            down projection: weight rows a warp loads before it uses any (unrolled, all in flight):
                    rows * warp * vector_bytes bytes per warp (8 x 512 B = 4 KB; 32 KB per 8-warp block).
                    An H100/H200 needs ~25-40 KB in flight per multiprocessor to reach its bandwidth.
    accumulators    independent accumulator sets the unrolled rows alternate between (shorter FMA chains).
    scan            positions of the row list each lane checks per round of the down projection: a warp
                    compacts warp * scan positions (flag mask or index list) into a shared-memory list.
    """

    warp: int = 32
    threads: int = 256
    vector_bytes: int = 16
    multiprocessors: int = 108
    shared_bytes: int = 48 << 10
    blocks_per_sm: int = 4
    rows: int = 8
    accumulators: int = 2
    scan: int = 4

    def __post_init__(self) -> None:
        if self.warp < 1 or self.warp & (self.warp - 1):
            raise ValueError(f"GpuSchedule.warp must be a power of two, got {self.warp}")
        if self.threads < self.warp or self.threads % self.warp:
            raise ValueError(f"GpuSchedule.threads must be a multiple of the warp ({self.warp}), got {self.threads}")
        if self.vector_bytes not in (4, 8, 16):
            raise ValueError(f"GpuSchedule.vector_bytes must be 4, 8 or 16, got {self.vector_bytes}")
        for field in ("multiprocessors", "shared_bytes", "blocks_per_sm", "rows", "accumulators", "scan"):
            if getattr(self, field) < 1:
                raise ValueError(f"GpuSchedule.{field} must be >= 1, got {getattr(self, field)}")

    @property
    def warps(self) -> int:
        return self.threads // self.warp

    @property
    def tag(self) -> str:
        """Identifier-safe encoding, part of every GPU kernel's global_symbol: `w32t256v16s108b4r8a2c4`."""
        return (f"w{self.warp}t{self.threads}v{self.vector_bytes}s{self.multiprocessors}b{self.blocks_per_sm}"
                f"r{self.rows}a{self.accumulators}c{self.scan}")
