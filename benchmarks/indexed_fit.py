"""Where the indexed (predictor) kernel's time goes: it timed at several active fractions, all interleaved in one loop,
and fitted as time = fixed + bytes / rate, once from DRAM (LLC evicted before every call) and once hot (each call after
an untimed one of its own, so the list's rows come from L3), with the exact kernel at 10% active and the weights probe
beside it. A fixed cost that weighs, or a rate near the read limit from DRAM but well above it hot, says memory; a hot
rate no faster than DRAM's says the kernel's own work per byte (BENCHMARKS.md, session 12).

    python -m actsparse.benchmarks.indexed_fit [--dtype q4_0] [--active 0,0.02,0.05,0.1,0.2] [--repeats 15]
                                               [--threads 1]

1 thread on the process's CPU clock by default (what a loaded machine's waits for a core leave out); --threads 2 times
the same on the CPU clock summed over the threads. Mistral-7B dims, kernels built once (`ffn.FfnBench`).
"""

from __future__ import annotations

import argparse
import os
import sys

from .ffn import EXACT, INDEXED, MISTRAL, FfnBench
from .kernel_ab import cpu_times
from .weights_probe import weights_probe


def fractions(text: str) -> list[float]:
    values = [float(v) for v in text.split(",")]
    if len(values) < 2 or any(not 0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"two or more fractions in [0, 1), comma-separated, expected; got {text!r}")
    return values


def fit(xs, ys) -> tuple[float, float]:
    """(fixed s, rate bytes/s) of the least-squares line ys = fixed + xs / rate."""
    import numpy as np

    (c0, c1), *_ = np.linalg.lstsq(np.vstack([np.ones(len(xs)), xs]).T, np.asarray(ys), rcond=None)
    return float(c0), float(1 / c1) if c1 > 0 else float("inf")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="q4_0", choices=("q4_0", "q8_0"), help="a symmetric quantized layout")
    ap.add_argument("--active", type=fractions, default="0,0.02,0.05,0.1,0.2",
                    help="active fractions (comma-separated)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)  # a bad --active: one line from argparse, exit 2
    active = args.active
    import numpy as np

    load = os.getloadavg()[0]
    bench = FfnBench(*MISTRAL, threads=args.threads)
    runners, indexed = {}, []
    for a in active:
        which = (INDEXED, EXACT) if abs(a - 0.1) < 1e-9 else (INDEXED,)
        found, _ = bench.runners(1.0 - a, args.dtype, which=which)
        for name, r in found.items():
            key = f"{'indexed' if name == INDEXED else 'exact'} {a:.0%}"
            runners[key] = r
            if name == INDEXED:
                indexed.append(key)
    runners["probe"] = weights_probe(bench, bench.weights)
    cold = cpu_times(bench, runners, args.repeats)
    evict, bench.evict = bench.evict, (lambda: None)
    hot = cpu_times(bench, {k: v for k, v in runners.items() if k != "probe"}, args.repeats, warm=True)
    bench.evict = evict
    med = {k: float(np.median(v)) for k, v in cold.items()}
    hmed = {k: float(np.median(v)) for k, v in hot.items()}
    limit = runners["probe"][1] / med["probe"]
    print(f"\n{bench.cpu}; {args.dtype}, d={bench.d}, n_ff={bench.n_ff}, {args.threads} threads, CPU clock, median of "
          f"{args.repeats}; read limit (weights probe) {limit / 1e9:.1f} GB/s; load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after\n")
    print("| kernel | MB | DRAM ms (% limit) | hot ms |")
    print("|---|---:|---:|---:|")
    for k, (_, nbytes) in runners.items():
        if k != "probe":
            share = f" ({100 * nbytes / med[k] / limit:.0f}%)" if nbytes else ""
            print(f"| {k} | {nbytes / 1e6:.1f} | {med[k] * 1e3:.3f}{share} | {hmed[k] * 1e3:.3f} |")
    xs = [runners[k][1] for k in indexed]
    for label, m in (("DRAM", med), ("hot", hmed)):
        fixed, rate = fit(xs, [m[k] for k in indexed])
        print(f"\nindexed, {label}: fixed {fixed * 1e6:.1f} us + bytes at {rate / 1e9:.1f} GB/s", end="")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
