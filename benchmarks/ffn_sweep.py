"""Sparsity sweep of the ReGLU FFN at Mistral-7B dims, batch 1: exact and indexed modes, fp32 and fp16 weights,
against torch dense fp32 measured in the same runs (quantized layouts, e.g. --dtypes q4_0,q8_0: also against our dense
kernel on the same layout, and dense mode's build of a quantized MLP: the gate / up kernel and the down linear on
W_down's rows as stored). Markdown tables on stdout.

    python -m actsparse.benchmarks.ffn_sweep [--sparsities 0.5,0.7,0.9,0.95] [--dtypes float32,float16]
                                             [--repeats 15] [--threads 2] [--small] [--axpy auto|integer|float]

Reuses `ffn.FfnBench`: LLC evicted before every timed call, kernels interleaved with torch within each
configuration, thread pools woken before each call. Columns: median ms; achieved GB/s (the bytes the kernel
must read / time); that as % of the machine's read limit; speed-up over torch dense fp32 of the same
configuration. The read limit is a 1 GB read-sum probe (`FfnBench.read_probe`, same threads) timed interleaved
with the kernels in every configuration: on these shared machines the bandwidth a VM gets moves by 2x within
minutes, so a limit measured at another moment says little. For quantized layouts a second probe reads the kernels'
own weight tensors (`weights_probe.py`) in the same loop, and the limit is the faster of the two.
Issue targets: exact >= 2.5x at 90%, indexed at 10% active >= 8x, >= 80% of the read limit in fp32 and fp16.
"""

from __future__ import annotations

import os
import sys

from actsparse.ir.quant import LAYOUTS

from .ffn import DENSE, DENSE_MODE, EXACT, INDEXED, TORCH, start_sweep, sweep_parser
from .weights_probe import weights_probe

PROBE = "read-sum probe"
WEIGHTS_PROBE = "read-sum of the kernels' weights"
AXPY_PATHS = {"auto": None, "integer": True, "float": False}  # --axpy -> CpuSchedule.int8_axpy (None: the target's)


def main(argv=None) -> int:
    ap = sweep_parser(__doc__.split("\n\n")[0], "0.5,0.7,0.9,0.95")
    ap.add_argument("--isa", default="host", choices=["host", "avx2"],
                    help="host: the detected ISA; avx2: the AVX2 (x86-64-v3) schedule and code, run on this host")
    ap.add_argument("--axpy", choices=tuple(AXPY_PATHS), default="auto",
                    help="quantized layouts on an int8-dot target, the down projection's row axpy: auto: per kernel "
                         "as the target's table says (Target.int8_axpy_kernels); integer / float: every kernel (the "
                         "A/B of codegen/kernels/quant_axpy8.py; the row dots stay integer)")
    ap.add_argument("--float-axpy", action="store_const", const="float", dest="axpy", help="= --axpy float")
    sweep = start_sweep(ap, argv)
    args, bench, probe, load_before = sweep.args, sweep.bench, sweep.probe, sweep.load_before
    if AXPY_PATHS[args.axpy] is not None:
        from dataclasses import replace

        bench.sched = replace(bench.sched, int8_axpy=AXPY_PATHS[args.axpy])
    print(f"down projection: --axpy {args.axpy} (integer for: {', '.join(bench.sched.int8_axpy) or 'none'})",
          flush=True)
    np, d, n_ff = bench.np, bench.d, bench.n_ff
    rows = []
    for dtype in sweep.dtypes:
        for sparsity in sweep.sparsities:
            try:
                # quantized layouts: our dense kernel on the same layout too (the ratio a sparse kernel must beat)
                which = (TORCH, EXACT, INDEXED, DENSE, DENSE_MODE) if dtype in LAYOUTS else (TORCH, EXACT, INDEXED)
                runners, n_active = bench.runners(sparsity, dtype, which=which)
            except AssertionError as err:
                print(f"MISMATCH: {err}")
                return 1
            runners[PROBE] = probe
            if dtype in LAYOUTS:  # the same read-sum over the kernels' own weight tensors (weights_probe.py)
                runners[WEIGHTS_PROBE] = weights_probe(bench, bench.weights)
            times = bench.time(runners, args.repeats)
            med = {name: float(np.median(t)) for name, t in times.items()}
            probes = {name: runners[name][1] / med[name] / 1e9 for name in (PROBE, WEIGHTS_PROBE) if name in runners}
            row = {"dtype": dtype, "sparsity": sparsity, "torch_ms": med[TORCH] * 1e3,
                   "limit": max(probes.values())}  # the faster probe: never weaker than the 1 GB one alone
            print("read limit: the faster of " + ", ".join(f"{n} {v:.1f} GB/s" for n, v in probes.items()),
                  flush=True)
            for key, name in (("exact", EXACT), ("indexed", INDEXED), ("dense", DENSE), ("dense_mode", DENSE_MODE)):
                if name in runners:
                    nbytes = runners[name][1]
                    row[key] = (med[name] * 1e3, nbytes / med[name] / 1e9, med[TORCH] / med[name])
            rows.append(row)
            e, i = row["exact"], row["indexed"]
            print(f"{dtype} {sparsity:.0%}: torch {row['torch_ms']:.2f} ms | exact {e[0]:.2f} ms {e[1]:.1f} GB/s "
                  f"{e[2]:.2f}x | indexed {i[0]:.2f} ms {i[1]:.1f} GB/s {i[2]:.2f}x | limit {row['limit']:.1f} GB/s"
                  + (f" | dense {row['dense'][0]:.2f} ms {row['dense'][1]:.1f} GB/s" if "dense" in row else ""),
                  flush=True)
            del runners

    print(f"\n**ReGLU FFN d={d}, n_ff={n_ff}, batch 1** — {bench.cpu}, {args.threads} threads; LLC evicted before "
          f"each call; median of {args.repeats}; read limit: a 1 GB TVM read-sum timed alongside (quantized "
          f"layouts: or one over the kernels' weights, the faster); load "
          f"average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; compile {bench.compile_s:.0f} s\n")
    print("| weights | sparsity | read limit GB/s | torch dense fp32 ms | exact ms | exact GB/s | exact % limit "
          "| exact vs torch | indexed ms | indexed GB/s | indexed % limit | indexed vs torch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        e, i = r["exact"], r["indexed"]
        lim = r["limit"]
        print(f"| {r['dtype']} | {r['sparsity']:.0%} | {lim:.1f} | {r['torch_ms']:.2f} | {e[0]:.2f} | {e[1]:.1f} | "
              f"{100 * e[1] / lim:.0f}% | {e[2]:.2f}x | {i[0]:.2f} | {i[1]:.1f} | {100 * i[1] / lim:.0f}% | "
              f"{i[2]:.2f}x |")
    quant = [r for r in rows if "dense" in r]
    if quant:  # quantized layouts: our dense kernel on the same layout, and how much the sparse one beats it
        print("\n| weights | sparsity | dense ms | dense GB/s | dense % limit | exact vs our dense | dense mode ms "
              "| dense mode GB/s | dense mode % limit | exact vs dense mode |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in quant:
            dn, dm = r["dense"], r["dense_mode"]
            print(f"| {r['dtype']} | {r['sparsity']:.0%} | {dn[0]:.2f} | {dn[1]:.1f} | {100 * dn[1] / r['limit']:.0f}% "
                  f"| {dn[0] / r['exact'][0]:.2f}x | {dm[0]:.2f} | {dm[1]:.1f} | {100 * dm[1] / r['limit']:.0f}% "
                  f"| {dm[0] / r['exact'][0]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
