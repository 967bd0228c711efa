"""Target data -> kernel schedule: which schedule family a target gets is a table keyed by the TVM target kind
(`SCHEDULES`), its numbers come from the target's fields (targets/ are data and never import codegen).

    llvm / c  -> CpuSchedule(lanes, threads, vector_registers, l2_bytes, accumulators)   (x86, arm)
    cuda      -> GpuSchedule(warp, threads, vector_bytes, multiprocessors, shared_bytes)
"""

from __future__ import annotations

from ..targets import Target
from .kernels.schedule import CpuSchedule, GpuSchedule


def cpu_schedule(target: Target) -> CpuSchedule:
    return CpuSchedule(lanes=target.lanes, threads=target.threads, vector_registers=target.vector_registers,
                       l2_bytes=target.l2_bytes, accumulators=target.accumulators,
                       fp16fml="fp16fml" in target.features)  # a feature the target's data declares


def gpu_schedule(target: Target) -> GpuSchedule:
    return GpuSchedule(warp=target.warp_size, threads=target.threads, vector_bytes=target.vector_bits // 8,
                       multiprocessors=target.multiprocessors, shared_bytes=target.shared_memory_bytes)


SCHEDULES = {"llvm": cpu_schedule, "c": cpu_schedule, "cuda": gpu_schedule}


def schedule_for(target: Target):
    """The kernel schedule of `target` (its family from `SCHEDULES[target.kind]`)."""
    try:
        make = SCHEDULES[target.kind]
    except KeyError:
        raise ValueError(f"no kernel schedule for TVM target kind {target.kind!r}; known: {', '.join(SCHEDULES)}") \
            from None
    return make(target)
