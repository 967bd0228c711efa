"""The device a compiled module runs on: which one, whether it is the host, and the CPU's thread pool."""

from __future__ import annotations

import os

DLPACK_CPU = 1  # DLPack's device type of host memory (kDLCPU)


def on_host(device) -> bool:
    """Whether a TVM device (a tensor's `.device`) is the CPU: numpy views its tensors in place."""
    return device.dlpack_device_type() == DLPACK_CPU


def use_threads(threads: int) -> None:
    """Give TVM's CPU thread pool the target's thread count. Unset, TVM takes half the logical CPUs on x86
    (it assumes hyper-threading), so on a 2-vCPU machine every kernel scheduled for 2 threads ran on one: the
    public path was 1.4x slower than the same kernel with TVM_NUM_THREADS set. The pool is sized when this
    thread first launches parallel work, so this runs before the first call; a user's TVM_NUM_THREADS or
    OMP_NUM_THREADS wins."""
    if threads > 0 and "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(threads)


def device_for(target_info: dict):
    """The TVM device a module built for `target_info` runs on."""
    import tvm

    return tvm.cuda(0) if target_info.get("tvm", {}).get("kind") == "cuda" else tvm.cpu(0)
