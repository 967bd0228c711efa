"""Target data -> kernel schedule: which schedule family a target gets is a table keyed by the TVM target kind
(`SCHEDULES`), its numbers come from the target's fields (targets/ are data and never import codegen).

    llvm / c  -> CpuSchedule(lanes, threads, vector_registers, l2_bytes, accumulators, fp16fml, int8_dot,
                 int8_axpy, certified_scores, certified_in_kernel)  (x86, arm)
    cuda      -> GpuSchedule(warp, threads, vector_bytes, multiprocessors, shared_bytes)
"""

from __future__ import annotations

from ..targets import Target
from .kernels.schedule import CpuSchedule, GpuSchedule

# int8 dot instructions (kernels/quant_int8.py): (target feature flag, vector bits, LLVM feature that must hold
# for the TVM target too, the instruction's name in int8_dots.INT8_DOTS), first match wins
INT8_DOT_FEATURES = (
    ("avx512_vnni", 512, "avx512vnni", "vpdpbusd512"),
    ("avx512_vnni", 256, "avx512vnni", "vpdpbusd256"),   # with AVX512-VL, which every VNNI part has
    ("avx_vnni", 256, "avxvnni", "vpdpbusd256"),
    ("dotprod", 128, "dotprod", "sdot128"),              # aarch64 FEAT_DotProd (targets/arm.py)
    ("avx2", 256, "avx2", "pmaddubsw256"),               # x86 without VNNI: the two-step AVX2 dot
)


def int8_dot(target: Target) -> str:
    """The int8 dot instruction the kernels may use on `target`: declared by its feature flags (detected from the
    host, `targets/x86.py`) and confirmed by LLVM for its TVM target (a target dict naming another CPU: that CPU's
    features; aarch64: `targets/arm.py`'s declared or detected ones), "" if none."""
    for flag, bits, llvm_feature, name in INT8_DOT_FEATURES:
        if flag in target.features and target.vector_bits == bits and _llvm_has(target, llvm_feature):
            return name
    return ""


def _llvm_has(target: Target, feature: str) -> bool:
    from tvm.target import codegen

    return bool(codegen.llvm_cpu_has_features(feature, target.tvm_target()))


def cpu_schedule(target: Target) -> CpuSchedule:
    return CpuSchedule(lanes=target.lanes, threads=target.threads, vector_registers=target.vector_registers,
                       l2_bytes=target.l2_bytes, accumulators=target.accumulators,
                       fp16fml="fp16fml" in target.features,  # features the target's data declares
                       int8_dot=int8_dot(target), int8_axpy=target.int8_axpy_kernels,
                       certified_scores=target.certified_scores, certified_in_kernel=target.certified_in_kernel)


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
