"""Schedule parameters of the CPU kernels: data the target supplies, never detected here.

A kernel factory takes one `CpuSchedule` and bakes it into the PrimFunc; the same parameters go into the
PrimFunc's `global_symbol` (see `CpuSchedule.tag`), so two kernels that differ only in schedule never
collide in one Relax module.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    """

    lanes: int
    threads: int
    rows: int = 8
    accumulators: int = 1
    token_block: int = 4
    prefetch: bool = True
    vector_registers: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefetch", bool(self.prefetch))
        if self.lanes not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"CpuSchedule.lanes must be a power of two <= 32, got {self.lanes}")
        for field in ("threads", "rows", "accumulators", "token_block", "vector_registers"):
            if getattr(self, field) < 1:
                raise ValueError(f"CpuSchedule.{field} must be >= 1, got {getattr(self, field)}")

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
                f"v{self.vector_registers}p{int(self.prefetch)}")
