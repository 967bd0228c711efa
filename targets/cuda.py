"""NVIDIA GPUs via CUDA. Code is generated and compiled by nvcc even where no GPU is present (a stub
libcuda lets TVM's CUDA runtime load, see `codegen/cuda_support.py`); modules then run only on a machine
with a GPU.

With a GPU present, the architecture and the number of multiprocessors come from the device; without one,
from the table below for the requested architecture.
"""

from __future__ import annotations

from .base import Target
from .memory import MemoryLevel, ram_bytes

# streaming multiprocessors of the reference part of each architecture (V100, T4, A100, A10/3090-class, L4/4090,
# H100/H200)
MULTIPROCESSORS = {"sm_70": 80, "sm_75": 40, "sm_80": 108, "sm_86": 84, "sm_89": 128, "sm_90": 132}
# (L2 bytes, VRAM bytes, VRAM read bytes/s) of the same reference parts (nominal data-sheet figures)
MEMORY = {"sm_70": (6 << 20, 16 << 30, 0.9e12), "sm_75": (4 << 20, 16 << 30, 0.32e12),
          "sm_80": (40 << 20, 80 << 30, 2.0e12), "sm_86": (6 << 20, 24 << 30, 0.94e12),
          "sm_89": (72 << 20, 24 << 30, 1.0e12), "sm_90": (50 << 20, 80 << 30, 3.35e12)}
SHARED_PER_BLOCK = 48 << 10   # the shared memory a block gets without opting in to more
PCIE_READ = 25e9              # host memory read by the GPU over PCIe 4.0 x16: where cold neurons would live


def target(arch: str | None = None) -> Target:
    from .x86 import host

    device = gpu_device()
    if arch is None:
        arch = f"sm_{device['compute'].replace('.', '')}" if device else "sm_80"
    sms = device["sms"] if device else MULTIPROCESSORS.get(arch, 80)
    l2, vram, vram_read = MEMORY.get(arch, MEMORY["sm_80"])
    return Target(
        name="cuda",
        tvm={"kind": "cuda", "arch": arch},
        vector_bits=128,           # 16-byte vector loads per thread
        threads=256,               # threads per block
        shared_memory_bytes=SHARED_PER_BLOCK,
        memory=(MemoryLevel("shared", SHARED_PER_BLOCK, 0.0, "block"), MemoryLevel("L2", l2, 0.0),
                MemoryLevel("VRAM", vram, vram_read), MemoryLevel("host", ram_bytes(), PCIE_READ)),
        description=f"CUDA {arch}" + (f" ({device['name']})" if device else " (no GPU here: compile only)"),
        host=host().tvm,
        runs_here=device is not None,
        features=(arch,),
        vector_registers=0,
        warp_size=32,
        multiprocessors=sms,
        run_hint="run it on a machine with an NVIDIA GPU",
        graph_capture=True,        # a decode step as one CUDA graph (build with relax.backend.use_cuda_graph)
    )


def gpu_device() -> dict | None:
    """The first CUDA device's facts, or None without a GPU (or without TVM's CUDA runtime)."""
    try:
        import tvm

        dev = tvm.cuda(0)
        if not dev.exist:
            return None
        return {"compute": dev.compute_version, "sms": dev.multi_processor_count, "name": dev.device_name}
    except Exception:  # no CUDA runtime in this TVM build, or no driver
        return None
