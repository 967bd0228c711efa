"""The ReGLU FFN at Mistral-7B dims on aarch64: what the generated ARM code does (computed from its disassembly here,
no ARM board needed) and, only on an aarch64 machine, how fast it runs against the machine's copy bandwidth.

    python -m actsparse.benchmarks.ffn_arm [--dtype float16|float32] [--sparsity 0.9] [--target arm|arm-fhm]
                                           [--small] [--repeats 5]

Static part (codegen/asm_stats.py on `aarch64-linux-gnu-objdump -d` of the built kernels): per kernel the decode
streams' and the token-blocked prefill dots' loads by register width (q = 128 bit), the fewest bytes loaded per
prefetch in any prefetching loop (>= 64: at most one prefetch per cache line), the down projection's FMA chains
(fmla per fmul), fmlal use, and the bytes a call reads at the given sparsity. Measured part (aarch64 only): median
ms per call with the weights evicted from the caches (several weight copies rotated), the bandwidth that makes and
its share of a numpy copy's bandwidth.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

MISTRAL = (4096, 14336)
SMALL = (512, 2048)
KINDS = ("exact", "indexed", "dense")


def static_report(d: int, n_ff: int, dtype: str, sparsity: float, target_name: str) -> None:
    from actsparse import targets
    from actsparse.codegen.asm_stats import disassemble, innermost_loops, opcode_counts
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.kernels.common import build_kernels
    from actsparse.codegen.schedules import schedule_for

    target = targets.get(target_name)
    sched = schedule_for(target)
    wb = 2 if dtype == "float16" else 4
    active = round((1 - sparsity) * n_ff)
    reads = {"exact": n_ff * d * wb + 2 * active * d * wb, "indexed": 3 * active * d * wb, "dense": 3 * n_ff * d * wb}
    print(f"\n**Generated aarch64 code** — {target.description}, d={d}, n_ff={n_ff}, weights {dtype}, "
          f"{sparsity:.0%} inactive, schedule {sched.tag}; read from the disassembly, not timed\n")
    print("| kernel | decode-stream loads (ldr/ldp q : d) | prefill-dot loads (q : d) | min bytes per prefetch | "
          "down fmla per fmul (chain) | fmlal | prefetch ahead per task | MB read per call |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for kind in KINDS:
        prim = kernel(kind, d, n_ff, dtype=dtype, sched=sched, gate_act="relu")
        asm = disassemble(build_kernels([prim], target.tvm_target()))
        streams = [loop for loop in innermost_loops(asm) if loop.prefetches]
        fitted = sched.fitted(d, dtype)
        decode = [loop for loop in streams if loop.prefetches == fitted.rows]
        prefill = [loop for loop in streams if loop.prefetches == fitted.block_rows < fitted.rows]  # M >= token_block
        q, dd = (sum(loop.loads["ldr", w] + loop.loads["ldp", w] for loop in decode) for w in "qd")
        pq, pd = (sum(loop.loads["ldr", w] + loop.loads["ldp", w] for loop in prefill) for w in "qd")
        axpy = [loop for loop in decode if loop.vector_ops["fmul"]]
        chain = max((loop.vector_ops["fmla"] / loop.vector_ops["fmul"] for loop in axpy), default=float("nan"))
        counts = opcode_counts(asm)
        ahead = sched.fitted(d, dtype).rows * d * wb  # the next step's rows, one prefetch per line
        print(f"| {kind} | {q} : {dd} | {pq} : {pd} | {min(loop.bytes_per_prefetch for loop in streams):.0f} | "
              f"{chain:.1f} | "
              f"{counts['fmlal'] + counts['fmlal2']} | {ahead / 1024:.0f} KB | {reads[kind] / 1e6:.1f} |")


def measured(d: int, n_ff: int, dtype: str, sparsity: float, target_name: str, repeats: int) -> None:
    """Only on aarch64: median time per call (weights rotated through copies that exceed the caches)."""
    import numpy as np
    import tvm

    from actsparse import targets
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.kernels.common import build_standalone
    from actsparse.codegen.schedules import schedule_for

    target = targets.get(target_name)
    sched = schedule_for(target)
    rng = np.random.default_rng(0)
    big = np.ones(1 << 27, np.float32)  # 512 MiB: copy bandwidth (read + write)
    t0 = time.perf_counter()
    for _ in range(3):
        big.copy()
    copy_gbs = 3 * 2 * big.nbytes / (time.perf_counter() - t0) / 1e9
    n_active = round((1 - sparsity) * n_ff)
    x = np.abs(rng.standard_normal((1, d))).astype(np.float32)
    copies = max(2, (2 * target.llc_bytes) // (3 * n_ff * d * (2 if dtype == "float16" else 4)) + 2)
    weights = []
    for _ in range(copies):
        wg = rng.standard_normal((n_ff, d)).astype(dtype)
        wg[n_active:] = -np.abs(wg[n_active:])
        weights.append([tvm.runtime.tensor(w) for w in (wg, rng.standard_normal((n_ff, d)).astype(dtype),
                                                        rng.standard_normal((n_ff, d)).astype(dtype))])
    idx = tvm.runtime.tensor(np.arange(max(n_active, 1), dtype=np.int32).reshape(1, -1))
    count = tvm.runtime.tensor(np.array([n_active], np.int32))
    out = tvm.runtime.tensor(np.zeros((1, d), np.float32))
    wb = 2 if dtype == "float16" else 4
    reads = {"exact": (n_ff + 2 * n_active) * d * wb, "indexed": 3 * n_active * d * wb, "dense": 3 * n_ff * d * wb}
    print(f"\n**Measured on {platform.machine()} ({os.cpu_count()} CPUs)**: copy bandwidth {copy_gbs:.1f} GB/s; "
          f"median of {repeats}, {copies} weight copies rotated; load {os.getloadavg()}\n")
    print("| kernel | median ms | GB/s | % of copy BW |\n|---|---:|---:|---:|")
    for kind in KINDS:
        fn = build_standalone(kernel(kind, d, n_ff, dtype=dtype, sched=sched, gate_act="relu"), target.tvm_target())
        xs = tvm.runtime.tensor(x)
        times = []
        for r in range(repeats * copies):
            ws = weights[r % copies]
            t0 = time.perf_counter()
            fn(xs, *ws, idx, count, out) if kind == "indexed" else fn(xs, *ws, out)
            times.append(time.perf_counter() - t0)
        ms = float(np.median(times)) * 1e3
        gbs = reads[kind] / ms / 1e6
        print(f"| {kind} | {ms:.2f} | {gbs:.1f} | {gbs / copy_gbs:.0%} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--target", choices=["arm", "arm-fhm"], default="arm")
    ap.add_argument("--small", action="store_true", help=f"dims {SMALL}")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    d, n_ff = SMALL if args.small else MISTRAL
    static_report(d, n_ff, args.dtype, args.sparsity, args.target)
    if platform.machine().lower() not in ("aarch64", "arm64"):
        print(f"\nMeasured part (achieved vs copy bandwidth): SKIPPED — this is {platform.machine()}, not an ARM "
              "machine. Nothing above was timed.")
        return 0
    measured(d, n_ff, args.dtype, args.sparsity, args.target, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
