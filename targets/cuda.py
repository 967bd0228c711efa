"""NVIDIA GPUs via CUDA; code is generated and compiled to PTX with nvcc even where no GPU is present."""

from __future__ import annotations

from .base import Target


def target(arch: str = "sm_80") -> Target:
    from .x86 import host

    return Target(
        name="cuda",
        tvm={"kind": "cuda", "arch": arch},
        vector_bits=128,           # 16-byte vector loads per thread
        threads=256,               # threads per block
        cache_bytes=48 << 10,      # shared memory per block
        description=f"CUDA {arch}",
        host=host().tvm,
        runs_here=_has_gpu(),
        features=(arch,),
    )


def _has_gpu() -> bool:
    try:
        import tvm

        return tvm.cuda(0).exist
    except Exception:  # no CUDA runtime in this TVM build or no device
        return False
