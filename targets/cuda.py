"""NVIDIA GPUs via CUDA. Code is generated and compiled by nvcc even where no GPU is present (a stub
libcuda lets TVM's CUDA runtime load, see `codegen/cuda_support.py`); modules then run only on a machine
with a GPU.

With a GPU present, the architecture and the number of multiprocessors come from the device; without one,
from the table below for the requested architecture.
"""

from __future__ import annotations

from .base import Target

# streaming multiprocessors of the reference part of each architecture (A100, A10/3090-class, L4/4090, H100/H200)
MULTIPROCESSORS = {"sm_70": 80, "sm_75": 40, "sm_80": 108, "sm_86": 84, "sm_89": 128, "sm_90": 132}


def target(arch: str | None = None) -> Target:
    from .x86 import host

    device = _device()
    if arch is None:
        arch = f"sm_{device['compute'].replace('.', '')}" if device else "sm_80"
    sms = device["sms"] if device else MULTIPROCESSORS.get(arch, 80)
    return Target(
        name="cuda",
        tvm={"kind": "cuda", "arch": arch},
        vector_bits=128,           # 16-byte vector loads per thread
        threads=256,               # threads per block
        cache_bytes=48 << 10,      # shared memory per block
        description=f"CUDA {arch}" + (f" ({device['name']})" if device else " (no GPU here: compile only)"),
        host=host().tvm,
        runs_here=device is not None,
        features=(arch,),
        vector_registers=0,
        warp_size=32,
        multiprocessors=sms,
        run_hint="run it on a machine with an NVIDIA GPU",
    )


def _device() -> dict | None:
    """The first CUDA device's facts, or None without a GPU (or without TVM's CUDA runtime)."""
    try:
        import tvm

        dev = tvm.cuda(0)
        if not dev.exist:
            return None
        return {"compute": dev.compute_version, "sms": dev.multi_processor_count, "name": dev.device_name}
    except Exception:  # no CUDA runtime in this TVM build, or no driver
        return None
