"""Before / after one change to the routed MoE kernels, in ONE process: the routed dense kernel and the routed
input-sparse kernel (threshold mode's `routed_experts="input"`) built from two source trees, timed interleaved call by
call on the same weights and routes (kernel_ab.py does the same for the single-block MLP kernels).

    python -m actsparse.benchmarks.routed_ab --trees /tmp/before,/work/main [--dims 2048,768] [--experts 32]
                                             [--top-k 8] [--dtype q4_0] [--keeps 1.0,0.5,0.3] [--h-keep 0.5]
                                             [--rounds 15] [--threads 2] [--hot]

The default dims are Qwen3-30B-A3B's experts (d 2048, n_ff 768, 32 experts of which 8 per token here: 85 MB at
q4_0 per layer); one token per call (a decoding step). Each call routes the token to `--top-k` experts drawn at
random, so the weights come from DRAM as in decoding (the experts outgrow the last-level cache; `--hot`: 8 experts,
all chosen, 21 MB, in the cache). The input kernel keeps the share `--keeps` of x's channels (a threshold at that
quantile of |x|, one per channel, the same for every expert) and about `--h-keep` of h's neurons (a threshold at
that quantile of |h| on a dense pass of the same token through expert 0). Outputs are checked against each other's
tree first (the same kernels must agree to fp32 rounding). Printed: per runner and tree the median ms of `--rounds`
rounds of 40 calls, after / before, and the weight bytes the call reads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILD = """
import json, sys
from dataclasses import replace
import tvm
from actsparse.codegen.kernels import kernel
from actsparse.codegen.kernels.common import build_kernels
from actsparse.codegen.schedules import schedule_for
from actsparse.targets import x86
d, n_ff, experts, threads, dtype, out = json.loads(sys.argv[1])
host = x86.host()
sched = replace(schedule_for(host), threads=threads)
prims = {"dense": kernel("routed", d, n_ff, experts, gate_act="silu", exact=False, down_rows="outputs", dtype=dtype,
                         sched=sched),
         "input": kernel("routed-input", d, n_ff, experts, gate_act="silu", dtype=dtype, sched=sched)}
build_kernels(list(prims.values()), tvm.target.Target({**host.tvm, "num-cores": threads})).export_library(out)
print(json.dumps({k: str(p.attrs["global_symbol"]) for k, p in prims.items()}))
"""
CALLS_PER_ROUND = 40


def build_tree(tree: str, args, out: Path) -> dict:
    """Build both routed kernels from `tree` into the library `out`; returns {kernel: symbol}."""
    env = {**os.environ, "PYTHONPATH": tree}
    # started in out's folder: `python -c` puts its working directory ahead of PYTHONPATH (kernel_ab.py)
    res = subprocess.run([sys.executable, "-c", BUILD, json.dumps([args.d, args.n_ff, args.experts, args.threads,
                                                                   args.dtype, str(out)])],
                         env=env, capture_output=True, text=True, cwd=out.parent)
    if res.returncode != 0:
        raise SystemExit(f"building the routed kernels of {tree} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def weights(args, rng):
    """The dense kernel's stacks (gate, up [E * n_ff, d], down [E * d, n_ff]) and the input kernel's (gate, up
    [E * d, n_ff], down [E * n_ff, d]) of the same float experts, quantized to `args.dtype`, plus the float ones."""
    import numpy as np

    from actsparse.ir.quant import quantize

    E, d, n = args.experts, args.d, args.n_ff
    wg, wu = (rng.standard_normal((E, n, d)).astype(np.float32) / d ** 0.5 for _ in range(2))
    wd = rng.standard_normal((E, d, n)).astype(np.float32) / n ** 0.5
    q = lambda w: quantize(np.ascontiguousarray(w), args.dtype).blob  # noqa: E731
    dense = [q(wg.reshape(E * n, d)), q(wu.reshape(E * n, d)), q(wd.reshape(E * d, n))]
    inputs = [q(wg.transpose(0, 2, 1).reshape(E * d, n)), q(wu.transpose(0, 2, 1).reshape(E * d, n)),
              q(wd.transpose(0, 2, 1).reshape(E * n, d))]
    return dense, inputs, (wg[0], wu[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", required=True, help="before,after: directories that hold the actsparse package")
    ap.add_argument("--dims", default="2048,768", help="d,n_ff of an expert (default Qwen3-30B-A3B's)")
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--dtype", default="q4_0", choices=("q4_0", "q4_1", "q8_0"))
    ap.add_argument("--keeps", default="1.0,0.5,0.3", help="shares of x's channels the input kernel keeps")
    ap.add_argument("--h-keep", type=float, default=0.5, help="about this share of h's neurons kept")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hot", action="store_true", help="8 experts, all chosen: the weights in the caches")
    args = ap.parse_args(argv)
    trees = args.trees.split(",")
    if len(trees) != 2:
        print("routed_ab: --trees takes two directories, before,after", file=sys.stderr)
        return 2
    args.d, args.n_ff = (int(v) for v in args.dims.split(","))
    if args.hot:
        args.experts = args.top_k = 8
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # else TVM sizes its pool to half the logical CPUs
    import numpy as np
    import tvm

    from actsparse.codegen.kernels.routed_moe import absent_biases
    from actsparse.ir.activations import ACTIVATIONS

    rng = np.random.default_rng(0)
    tv = lambda a: tvm.runtime.tensor(np.ascontiguousarray(a))  # noqa: E731
    dense_w, input_w, (wg0, wu0) = weights(args, rng)
    dense_w, input_w = [tv(w) for w in dense_w], [tv(w) for w in input_w]
    x_np = rng.standard_normal((1, args.d)).astype(np.float32)
    x = tv(x_np)
    routes = [tv(rng.choice(args.experts, args.top_k, replace=False)[None].astype(np.int64)) for _ in range(64)]
    route_w = tv(np.full((1, args.top_k), 1 / args.top_k, np.float32))
    biases = [tv(b) for b in absent_biases(args.d)]
    keeps = [float(k) for k in args.keeps.split(",")]
    h0 = np.abs(ACTIVATIONS["silu"].reference(x_np @ wg0.T, 0.0) * (x_np @ wu0.T))
    h_thr = tv(np.full(args.experts * args.n_ff, np.quantile(h0, 1 - args.h_keep), np.float32))
    x_thr = {k: tv(np.full(args.experts * args.d, np.quantile(np.abs(x_np), 1 - k) if k < 1 else 0, np.float32))
             for k in keeps}
    load_before = os.getloadavg()[0]
    runners, outs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for tag, tree in zip(("before", "after"), trees):
            lib_path = Path(tmp) / f"{tag}.so"
            symbols = build_tree(tree, args, lib_path)
            lib = tvm.runtime.load_module(str(lib_path))
            dense, inp = lib[symbols["dense"]], lib[symbols["input"]]
            out = tv(np.zeros((1, args.d), np.float32))
            outs[tag] = out
            runners[f"{tag} dense"] = (dense, lambda ri, f=dense, o=out: f(x, *dense_w, route_w, ri, *biases, o))
            for k in keeps:
                runners[f"{tag} input {k:.0%}"] = (inp, lambda ri, f=inp, o=out, k=k: f(
                    x, *input_w, route_w, ri, x_thr[k], h_thr, o))
        for name in [n for n in runners if n.startswith("before")]:   # both trees compute the same
            runners[name][1](routes[0])
            ref = outs["before"].numpy().copy()
            runners[name.replace("before", "after")][1](routes[0])
            err = np.max(np.abs(outs["after"].numpy() - ref)) / (np.max(np.abs(ref)) + 1e-30)
            if err > 1e-2:
                raise SystemExit(f"{name}: the trees' outputs differ by {err:.2e} (relative to the largest)")
        times = {name: [] for name in runners}
        for rnd in range(args.rounds):
            for name, (_, call) in (reversed if rnd % 2 else iter)(list(runners.items())):
                for c in range(CALLS_PER_ROUND):
                    ri = routes[(rnd * CALLS_PER_ROUND + c) % len(routes)]
                    t0 = time.perf_counter()
                    call(ri)
                    if c >= 5:   # the first calls after another runner's pay for its evictions
                        times[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    print(f"\nrouted kernels, {args.dtype}, d={args.d}, n_ff={args.n_ff}, {args.top_k} of {args.experts} experts per "
          f"call{' (hot)' if args.hot else ' (random: from DRAM)'}, M=1, {args.threads} threads, h about "
          f"{args.h_keep:.0%} kept; median of {args.rounds} x {CALLS_PER_ROUND - 5} calls, interleaved; load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"before: {trees[0]}\nafter:  {trees[1]}\n")
    print("| runner | before ms | after ms | after / before | after / dense (after) |")
    print("|---|---:|---:|---:|---:|")
    for name in [n[len("before "):] for n in runners if n.startswith("before")]:
        b, a = med[f"before {name}"], med[f"after {name}"]
        print(f"| {name} | {b:.3f} | {a:.3f} | {a / b:.2f} | {a / med['after dense']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
