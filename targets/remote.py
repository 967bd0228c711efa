"""Measuring a device registered with a TVM RPC tracker: how the cost model gets a real board's figures.

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190                  # anywhere
    python -m tvm.exec.rpc_server --tracker TRACKER:9190 --key myboard         # on the board
    actsparse.targets.profile(rpc="TRACKER:9190", key="myboard", target="arm") # here

A streaming-read kernel (16 fp32 lanes summed over a buffer of any length; LLVM vectorizes the lanes) is built here
for the target, uploaded once, and timed on the board with TVM's `time_evaluator` over a buffer that fits each
memory level (half the level's declared size; main memory: four times the last cache, at most 256 MiB). The
levels' sizes are the target's declared ones (the RPC server gives no view of the board's /sys); the disk level,
if any, keeps its declared bandwidth (RPC cannot drop the board's page cache). Needs TVM's RPC extras on both
sides (`pip install tornado cloudpickle psutil`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace

from ..errors import TargetError
from .base import Target
from .memory import KIB, MIB, MemoryLevel

LANES = 16


def stream_read_module():
    """IRModule of `stream_read(A[rows, 16], B[16])`: B[j] = Σ_k A[k, j], rows symbolic."""
    import tvm
    from tvm import te

    rows = te.var("rows", "int64")
    a = te.placeholder((rows, LANES), "float32", name="A")
    k = te.reduce_axis((0, rows), name="k")
    b = te.compute((LANES,), lambda j: te.sum(a[k, j], axis=k), name="B")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]).with_attr("global_symbol", "stream_read"))
    block = sch.get_sblock("B") if hasattr(sch, "get_sblock") else sch.get_block("B")
    sch.decompose_reduction(block, sch.get_loops(block)[0])
    j, k_loop = sch.get_loops(block)
    sch.reorder(k_loop, j)   # the lanes innermost: contiguous loads, vectorized by LLVM
    return sch.mod


def connect(rpc: str, key: str, timeout: float = 60.0):
    """A session on a device with `key` from the tracker at "host:port"."""
    from tvm import rpc as tvm_rpc

    host, _, port = str(rpc).rpartition(":")
    if not host or not port.isdigit():
        raise TargetError(f"rpc={rpc!r}: give the tracker as host:port, e.g. 127.0.0.1:9190")
    try:
        tracker = tvm_rpc.connect_tracker(host, int(port))
        return tracker.request(key, priority=1, session_timeout=timeout)
    except ImportError as err:
        raise TargetError(f"TVM RPC needs {err.name or 'its extras'}: pip install tornado cloudpickle psutil") from None
    except (RuntimeError, OSError, TimeoutError) as err:
        raise TargetError(f"cannot reach a device with key {key!r} through the tracker at {rpc} ({str(err)[:160]}); "
                          "start one: python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY") from None


def buffer_bytes(level: MemoryLevel, caches: list[MemoryLevel]) -> int:
    if level.name == "DRAM":
        return min(4 * max((c.size_bytes for c in caches), default=32 * MIB), 256 * MIB)
    return max(level.size_bytes // 2, 16 * KIB)


def measure_remote_levels(session, target: Target, seconds_per_level: float = 0.2) -> tuple[MemoryLevel, ...]:
    """The target's levels with the read bandwidths measured on the session's CPU."""
    import numpy as np
    import tvm

    lib = tvm.compile(stream_read_module(), target=target.tvm_target())
    with tempfile.TemporaryDirectory(prefix="actsparse-rpc-") as folder:
        path = os.path.join(folder, "stream_read.so")
        if target.cross_compiler:
            from tvm.support.cc import cross_compiler

            lib.export_library(path, fcompile=cross_compiler(target.cross_compiler))
        else:
            lib.export_library(path)
        session.upload(path)
    remote = session.load_module("stream_read.so")
    device = session.cpu(0)
    caches = [lv for lv in target.memory if lv.name.startswith("L")]
    measured = []
    for level in target.memory:
        if level.name not in ("DRAM",) and not level.name.startswith("L"):
            measured.append(level)   # disk, host: declared (see the module docstring)
            continue
        rows = max(buffer_bytes(level, caches) // (4 * LANES), 64)
        a = tvm.runtime.tensor(np.ones((rows, LANES), np.float32), device)
        b = tvm.runtime.tensor(np.zeros(LANES, np.float32), device)
        timer = remote.time_evaluator("stream_read", device, number=1, repeat=5,
                                      min_repeat_ms=max(int(seconds_per_level * 200), 1))
        best = min(timer(a, b).results)
        measured.append(replace(level, read_bandwidth=rows * LANES * 4 / best, measured=True))
    return tuple(measured)


def profile_remote(rpc: str, key: str, target: Target, seconds_per_level: float = 0.2) -> Target:
    session = connect(rpc, key)
    return replace(target, memory=measure_remote_levels(session, target, seconds_per_level),
                   description=f"{target.description} (measured on {key!r} via {rpc})".strip())
