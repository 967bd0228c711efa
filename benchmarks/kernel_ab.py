"""Before / after one kernel change, in ONE process: the exact, indexed and dense MLP kernels built from two source
trees (e.g. a `git archive` of the last commit and the working tree), timed interleaved call by call on the same
weights, so a shared machine's drifting load hits both alike (separate runs on a loaded machine differ by 2x).

    python -m actsparse.benchmarks.kernel_ab --trees /tmp/before,/work/wt/x [--dtype q4_0|q4_1|q8_0] [--sparsity 0.9]
                                             [--repeats 15] [--threads 2] [--axpy auto|integer|float]
                                             [--clock wall|cpu] [--hot] [--n-ff N]

Each tree is a directory holding the `actsparse` package; a subprocess per tree imports it from there, builds the
three kernels at Mistral-7B dims with the schedule `ffn.FfnBench` uses (the tree's own target table for the down
projection, unless --axpy says otherwise) and exports them to a shared library; this process loads both and times
them with `FfnBench` (LLC evicted before every call, outputs checked against float64 first). Printed: per kernel and
tree the median ms and % of the read limit (the faster of two read-sum probes timed in the same loop: 1 GB of its
own, and, for quantized layouts, the kernels' own weight tensors, `weights_probe.py`), and after / before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from actsparse.ir.quant import LAYOUTS

from .ffn import DENSE, EXACT, INDEXED, MISTRAL, SMALL, FfnBench
from .weights_probe import weights_probe

KINDS = {EXACT: "exact", INDEXED: "indexed", DENSE: "dense"}
PROBE = "read-sum probe"
WEIGHTS_PROBE = "read-sum of the kernels' weights"

BUILD = """
import json, sys
from dataclasses import replace
from actsparse.codegen.kernels.common import build_kernels
from actsparse.codegen.kernels.schedule import CpuSchedule
from actsparse.codegen.kernels import sparse_mlp
from actsparse.codegen.kernels.sparse_mlp import dense_gated_mlp, sparse_gated_mlp
try:  # session 13 moved the kernels over given neurons to gathered_mlp.py; older trees have them in sparse_mlp.py
    from actsparse.codegen.kernels.gathered_mlp import sparse_gated_mlp_indexed
except ImportError:
    sparse_gated_mlp_indexed = sparse_mlp.sparse_gated_mlp_indexed
from actsparse.codegen.schedules import int8_dot
from actsparse.targets import x86
import tvm
d, n_ff, threads, dtype, axpy, out = json.loads(sys.argv[1])
host = x86.host()
sched = CpuSchedule(lanes=host.lanes, threads=threads, vector_registers=host.vector_registers,
                    l2_bytes=host.l2_bytes, int8_dot=int8_dot(host), int8_axpy=host.int8_axpy_kernels)
if axpy is not None:
    sched = replace(sched, int8_axpy=axpy)
kw = dict(gate_act="relu", up_act="identity", dtype=dtype, sched=sched)
prims = {"exact": sparse_gated_mlp(d, n_ff, **kw), "indexed": sparse_gated_mlp_indexed(d, n_ff, **kw),
         "dense": dense_gated_mlp(d, n_ff, **kw)}
build_kernels(list(prims.values()), tvm.target.Target({**host.tvm, "num-cores": threads})).export_library(out)
from actsparse.ir.quant import LAYOUTS
split = getattr(LAYOUTS.get(dtype), "split", False)
print(json.dumps({"symbols": {k: str(p.attrs["global_symbol"]) for k, p in prims.items()}, "split": split}))
"""


def build_tree(tree: str, d: int, n_ff: int, threads: int, dtype: str, axpy, out: Path) -> dict:
    """Build the three kernels from `tree` into the library `out`; returns {"symbols": kernel -> symbol, "split":
    whether that tree's layout splits the rows (ir.quant; False: GGUF's blocks as they are)}."""
    env = {**os.environ, "PYTHONPATH": tree}
    # run in out's folder: `python -c` puts its working directory ahead of PYTHONPATH, so started from a folder that
    # holds an actsparse package, both trees would build that one
    res = subprocess.run([sys.executable, "-c", BUILD, json.dumps([d, n_ff, threads, dtype, axpy, str(out)])],
                         env=env, capture_output=True, text=True, cwd=out.parent)
    if res.returncode != 0:
        raise SystemExit(f"building the kernels of {tree} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def cpu_times(bench, runners: dict, repeats: int, warm: bool = False) -> dict[str, list[float]]:
    """`FfnBench.time` on the process's CPU clock (LLC evicted before every call, then, as there, a tiny call of the
    same runtime, so the timed call does not pay for the call path's code and data coming back from DRAM: ~0.1 ms
    of CPU time on znver4, a TVM no-op's cold call, session 12); `warm`: each timed call follows an untimed one of
    the same runner instead (the other runners' reads have evicted its weights)."""
    import time

    times = {name: [] for name in runners}
    for rep in range(repeats + 2):  # two warm-up rounds
        for name, (fn, _) in (reversed if rep % 2 else iter)(list(runners.items())):  # as FfnBench.time
            bench.evict()
            if warm:
                fn()
            else:
                bench._wake["tvm"]()
            t0 = time.process_time()
            fn()
            if rep >= 2:
                times[name].append(time.process_time() - t0)
    return times


def kernel_blob_for(split: bool):
    from actsparse.ir.quant import LAYOUTS, to_gguf_blocks

    def blob(b, dtype, cols):
        return b if split or not getattr(LAYOUTS.get(dtype), "split", False) else to_gguf_blocks(b, dtype, cols)

    return blob


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", required=True, help="before,after: directories that hold the actsparse package")
    ap.add_argument("--dtype", default="q4_0")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--axpy", choices=("auto", "integer", "float"), default="auto")
    ap.add_argument("--small", action="store_true", help="d=256, n_ff=1024 (a smoke test)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: the process's CPU time per call (with --threads 1: the kernel's time on a core, what "
                         "a loaded machine's waits for a core leave out; memory stalls count)")
    ap.add_argument("--n-ff", type=int, default=0, help="the hidden size (default: Mistral-7B's; --hot: 1024)")
    ap.add_argument("--hot", action="store_true",
                    help="weights in the caches (each timed call follows an untimed one, no LLC eviction; n_ff "
                         "1024 unless given: 7 MB of q4_0) on the CPU clock: the kernels' compute side, which other "
                         "processes' memory traffic disturbs less. The %% limit columns are then no read-limit figure")
    args = ap.parse_args(argv)
    trees = args.trees.split(",")
    if len(trees) != 2:
        print("kernel_ab: --trees takes two directories, before,after", file=sys.stderr)
        return 2
    import numpy as np
    import tvm

    d, n_ff = SMALL if args.small else MISTRAL
    n_ff = args.n_ff or (1024 if args.hot else n_ff)
    axpy = {"auto": None, "integer": True, "float": False}[args.axpy]
    load_before = os.getloadavg()[0]
    bench = FfnBench(d, n_ff, threads=args.threads)
    if args.hot:
        bench.evict, args.clock = (lambda: None), "cpu"
    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tag, tree in zip(("before", "after"), trees):
            lib_path = Path(tmp) / f"{tag}.so"
            built = build_tree(tree, d, n_ff, args.threads, args.dtype, axpy, lib_path)
            lib = tvm.runtime.load_module(str(lib_path))
            bench._kernels[args.dtype] = {k: lib[s] for k, s in built["symbols"].items()}
            # a tree from before the split q4_0 (session 8) / q4_1 (session 19) rows reads GGUF's blocks: hand it those
            bench.kernel_blob = kernel_blob_for(built["split"])
            found, _ = bench.runners(args.sparsity, args.dtype, which=tuple(KINDS))
            runners.update({f"{tag} {KINDS[name]}": r for name, r in found.items()})
        runners[PROBE] = bench.read_probe()
        if args.dtype in LAYOUTS:  # the same read-sum over the kernels' own weight tensors (weights_probe.py)
            runners[WEIGHTS_PROBE] = weights_probe(bench, bench.weights)
        times = (bench.time(runners, args.repeats) if args.clock == "wall"
                 else cpu_times(bench, runners, args.repeats, warm=args.hot))
    med = {name: float(np.median(t)) for name, t in times.items()}
    probes = {name: runners[name][1] / med[name] / 1e9 for name in (PROBE, WEIGHTS_PROBE) if name in runners}
    limit = max(probes.values())  # the faster probe: never a weaker denominator than the 1 GB one alone
    print(f"\n{bench.cpu}; {args.dtype}, {args.sparsity:.0%} inactive, d={d}, n_ff={n_ff}, {args.threads} threads, "
          f"{'weights hot (no eviction), ' if args.hot else ''}"
          f"--axpy {args.axpy}; --clock {args.clock}; median of {args.repeats}, interleaved; read limit {limit:.1f} "
          f"GB/s; load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("read limit: the faster of " + ", ".join(f"{n} {v:.1f} GB/s" for n, v in probes.items()))
    print(f"before: {trees[0]}\nafter:  {trees[1]}")
    best = {name: float(np.min(t)) for name, t in times.items()}
    # medians against the probe's median; the best calls (least disturbed by other load) as a second view
    print("\n| kernel | before ms (% limit) | after ms (% limit) | after / before | best of n: before / after ms "
          "| after / before (best) |")
    print("|---|---:|---:|---:|---:|---:|")
    for k in KINDS.values():
        b, a = med[f"before {k}"], med[f"after {k}"]
        nbytes = runners[f"after {k}"][1]
        bb, ba = best[f"before {k}"], best[f"after {k}"]
        print(f"| {k} | {b * 1e3:.2f} ({100 * nbytes / b / 1e9 / limit:.0f}%) | {a * 1e3:.2f} "
              f"({100 * nbytes / a / 1e9 / limit:.0f}%) | {a / b:.2f} | {bb * 1e3:.2f} / {ba * 1e3:.2f} "
              f"| {ba / bb:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
