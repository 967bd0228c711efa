"""Compute throughput of the linear kernel per weight layout, weights hot in L2, one thread: how fast a core
dequantizes and accumulates, without DRAM in the way (compare it with the per-core share of the read limit).

    python -m actsparse.benchmarks.quant_hot [--layouts float32,float16,q8_0,q4_0,q4_1] [--k 4096] [--n 256]

Best of 300 calls (the least disturbed by other load), so it is a ceiling, not a decoding figure. Where the host
has an int8 dot (VNNI: the schedule's `int8_dot`), each quantized layout is timed twice in the same run: on the
float path (weights dequantized in registers; `int8_dot` off) and on the integer path (x quantized to 8-bit
blocks once per call, `vpdpbusd`), so the two are compared under the same load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layouts", default="float32,float16,q8_0,q4_0,q4_1")
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = "1"
    from dataclasses import replace

    import numpy as np
    import tvm

    from actsparse import targets
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.kernels.common import build_standalone
    from actsparse.codegen.schedules import schedule_for
    from actsparse.ir.quant import LAYOUTS, quantize

    target = targets.get("x86")
    sched = replace(schedule_for(target), threads=1)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((args.n, args.k)).astype(np.float32)
    x = rng.standard_normal((1, args.k)).astype(np.float32)
    print(f"{target.description}; load average {os.getloadavg()[0]:.1f}; int8 dot: {sched.int8_dot or 'none'}")
    for layout in args.layouts.split(","):
        arr = quantize(w, layout).blob if layout in LAYOUTS else w.astype(layout)
        paths = [("", replace(sched, int8_dot=""))]
        if layout in LAYOUTS and sched.int8_dot:
            paths.append((f" int8 dot ({sched.int8_dot})", sched))
        for label, path_sched in paths:
            fn = build_standalone(kernel("linear", args.k, args.n, dtype=layout, sched=path_sched),
                                  target.tvm_target())
            tensors = [tvm.runtime.tensor(v) for v in (x, arr, np.zeros((1, args.n), np.float32))]
            best = float("inf")
            for _ in range(300):
                t0 = time.perf_counter()
                fn(*tensors)
                best = min(best, time.perf_counter() - t0)
            print(f"{layout}{label}: {best * 1e6:.1f} us, {arr.nbytes / best / 1e9:.1f} GB/s, "
                  f"{args.n * args.k / best / 1e9:.2f} G weights/s (1 thread, hot)", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
