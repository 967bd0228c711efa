"""Compute throughput of the linear kernel per weight layout, weights hot in L2, one thread: how fast a core
dequantizes and accumulates, without DRAM in the way (compare it with the per-core share of the read limit).

    python -m actsparse.benchmarks.quant_hot [--layouts float32,float16,q8_0,q4_0,q4_1] [--k 4096] [--n 256]
                                             [--kinds linear,dense]

Best of 300 calls (the least disturbed by other load), so it is a ceiling, not a decoding figure. Where the host
has an int8 dot (VNNI: the schedule's `int8_dot`), each quantized layout is timed twice in the same run: on the
float path (weights dequantized in registers; `int8_dot` off) and on the integer path (x quantized to 8-bit
blocks once per call, `vpdpbusd`), so the two are compared under the same load.

`--kinds dense` also times the dense gated MLP (ReGLU, d = k, n_ff = n / 2, so its three matrices hold 1.5x the
linear's weights): gate / up are row dots like the linear's, the down projection is the row axpy over its
transposed rows, so the difference shows what the axpy costs per weight. With an int8 dot the dense kernel is
timed three ways: float, int8 row dots with the float axpy ("float axpy": `int8_axpy=False`), and both integer
(the axpy's coefficients rounded per step to int8, `codegen/kernels/quant_axpy8.py`).
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
    ap.add_argument("--kinds", default="linear", help="comma-separated: linear, dense")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = "1"
    from dataclasses import replace

    import numpy as np

    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for
    from actsparse.ir.quant import LAYOUTS

    target = targets.get("x86")
    sched = replace(schedule_for(target), threads=1)
    rng = np.random.default_rng(0)
    print(f"{target.description}; load average {os.getloadavg()[0]:.1f}; int8 dot: {sched.int8_dot or 'none'}")
    for layout in args.layouts.split(","):
        paths = [("", replace(sched, int8_dot=""))]
        if layout in LAYOUTS and sched.int8_dot:
            paths.append((f" int8 dot ({sched.int8_dot}), float axpy", replace(sched, int8_axpy=False)))
            paths.append((f" int8 dot ({sched.int8_dot})", sched))
        for label, path_sched in paths:
            for kind in args.kinds.split(","):
                if kind == "linear" and not path_sched.int8_axpy:
                    continue  # no axpy in the linear kernel: the same code as the int8-dot path
                fn, tensors, nbytes, weights = build(kind, layout, path_sched, args.k, args.n, target, rng)
                best = float("inf")
                for _ in range(300):
                    t0 = time.perf_counter()
                    fn(*tensors)
                    best = min(best, time.perf_counter() - t0)
                print(f"{layout}{label} {kind}: {best * 1e6:.1f} us, {nbytes / best / 1e9:.1f} GB/s, "
                      f"{weights / best / 1e9:.2f} G weights/s (1 thread, hot)", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


def build(kind: str, layout: str, sched, k: int, n: int, target, rng):
    """(function, its tensors, weight bytes, weights) of one kernel: linear [n, k], or the dense ReGLU MLP with
    d = k and n_ff = n // 2 (gate, up, down: 1.5 n k weights)."""
    import numpy as np
    import tvm

    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.kernels.common import build_standalone
    from actsparse.ir.quant import LAYOUTS, quantize

    def weight(rows):
        w = rng.standard_normal((rows, k)).astype(np.float32)
        return quantize(w, layout).blob if layout in LAYOUTS else w.astype(layout)

    x = rng.standard_normal((1, k)).astype(np.float32)
    if kind == "linear":
        prim, ws, out = kernel("linear", k, n, dtype=layout, sched=sched), [weight(n)], np.zeros((1, n), np.float32)
    elif kind == "dense":
        n_ff = max(1, n // 2)
        prim = kernel("dense", k, n_ff, gate_act="relu", up_act="identity", dtype=layout, sched=sched)
        ws, out = [weight(n_ff) for _ in range(3)], np.zeros((1, k), np.float32)
    else:
        raise SystemExit(f"unknown kind {kind!r}; valid: linear, dense")
    fn = build_standalone(prim, target.tvm_target())
    tensors = [tvm.runtime.tensor(v) for v in (x, *ws, out)]
    return fn, tensors, sum(w.nbytes for w in ws), sum(w.shape[0] for w in ws) * k


if __name__ == "__main__":
    sys.exit(main())
