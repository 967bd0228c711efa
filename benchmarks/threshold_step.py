"""One SwiGLU MLP per decode step at a small model's dims: compile()'s dense vs threshold mode, per call.

    python -m actsparse.benchmarks.threshold_step [--dims 576,1536] [--quantize int4] [--sparsity 0.5]
                                                  [--methods rotated-wina-greedy,wina-greedy] [--repeats 2000]
    python -m actsparse.benchmarks.threshold_step --kernels [--dims 576,1536] [--sparsities 0.3,0.5,0.7]
                                                  [--threads 2] [--layers 30] [--rounds 40] [--dtype q4_0|q8_0]

`--kernels`: the kernels alone, before / after in one run: the fused dense kernel (q4_0 as compile(quantize="int4")
stores it, q4_1 as SmolLM2's GGUF), the dense path as built under quantize= (three linears on rows as stored), the
input-sparse kernel on q4_0 with the float axpys (before session 13), its work split by columns at batch 1 (before
session 42, `input_channels.py`), with the target's table (x86 AVX512-VNNI and AVX2: every axpy integer) and as top-k
(the same share kept as a count per token), each on `--layers` weight copies called in turn (30 SmolLM2 layers: 45 MB,
beyond the last-level cache, as in a decode step), x's and h's thresholds the quantiles of this x's own scores (exactly
s of each skipped). Runners interleaved per round, µs per call (min and median over rounds, the first runner of a round
rotating).

Why: on SmolLM2-135M (d 576, n_ff 1536) decode part (b) measures threshold mode per step against dense; this
isolates one MLP, batch 1, so the per-call cost of the threshold kernel (x's channel list, the gathered-row axpys,
the masks, a rotation's d×d linear in front) can be read against the bytes it skips. Each module is
`actsparse.compile(mlp, (x,), mode=...)` (the same passes and kernels as a decoder's blocks; the call overhead of
a compiled module is in every row alike), calibrated on Gaussian rows (the thresholds are quantiles: the asked
share is skipped on rows of the same distribution). Runners interleaved, median µs per call; the whole MLP
(int4: 1.5 MB) fits in the last-level cache here, as in a decode step it does not (30 layers: 45 MB), so these
are the kernel's compute and call costs, not its DRAM reads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def swiglu(d: int, n_ff: int):
    import torch

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj = torch.nn.Linear(d, n_ff, bias=False), torch.nn.Linear(d, n_ff, bias=False)
            self.down_proj = torch.nn.Linear(n_ff, d, bias=False)

        def forward(self, x):
            return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))

    torch.manual_seed(0)
    return MLP().eval()


def kernel_runners(d: int, n_ff: int, sparsity: float, threads: int, layers: int, dtype: str = "q4_0") -> dict:
    """name -> fn() calling that kernel once on each of `layers` weight copies (see `--kernels`)."""
    from dataclasses import replace

    import tvm

    from actsparse import targets
    from actsparse.codegen.kernels.common import build_kernels
    from actsparse.codegen.kernels.input_sparse_mlp import input_sparse_gated_mlp
    from actsparse.codegen.kernels.linear import linear
    from actsparse.codegen.kernels.sparse_mlp import dense_gated_mlp
    from actsparse.codegen.schedules import schedule_for
    from actsparse.ir.quant import quantize
    from actsparse.runtime.memory import host_tensor

    host = targets.get("x86")
    host = replace(host, threads=threads, tvm={**host.tvm, "num-cores": threads})
    sched = schedule_for(host)
    before = replace(sched, int8_axpy=tuple(k for k in sched.int8_axpy if k != "input"))
    prims = {f"dense {dtype}": dense_gated_mlp(d, n_ff, gate_act="silu", dtype=dtype, sched=sched),
             "dense q4_1": dense_gated_mlp(d, n_ff, gate_act="silu", dtype="q4_1", sched=sched),
             f"input {dtype}, float axpys (before)": input_sparse_gated_mlp(d, n_ff, gate_act="silu", dtype=dtype,
                                                                           sched=before),
             f"input {dtype}, split by columns (before session 42)": input_sparse_gated_mlp(
                 d, n_ff, gate_act="silu", dtype=dtype, sched=sched, by_rows=0),
             f"input {dtype}, the target's axpys": input_sparse_gated_mlp(d, n_ff, gate_act="silu", dtype=dtype,
                                                                         sched=sched),
             # the same share kept as a fixed count per token (method 'topk': each token's k-th score selected)
             f"input {dtype}, top-k": input_sparse_gated_mlp(d, n_ff, gate_act="silu", dtype=dtype, sched=sched,
                                                            x_keep=round((1 - sparsity) * d),
                                                            h_keep=round((1 - sparsity) * n_ff))}
    # the dense path as compile(quantize=) builds it since session 31: three linears on rows as stored (the
    # activation's elementwise op between them, n_ff floats, left out)
    linears = (linear(d, n_ff, dtype=dtype, sched=sched), linear(n_ff, d, dtype=dtype, sched=sched))
    module = build_kernels([*prims.values(), *linears], tvm.target.Target(host.tvm))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, d)).astype(np.float32)
    x_thr = np.full(d, np.quantile(np.abs(x), sparsity), np.float32)
    xs = np.where(np.abs(x) > x_thr, x, 0)
    copies = []
    for _ in range(layers):
        wg, wu, wd = (rng.standard_normal(shape).astype(np.float32) / np.sqrt(d)
                      for shape in ((n_ff, d), (n_ff, d), (d, n_ff)))
        g = xs @ wg.T
        h = g / (1 + np.exp(-g)) * (xs @ wu.T)
        h_thr = np.full(n_ff, np.quantile(np.abs(h), sparsity), np.float32)
        rows = {lay: [host_tensor(quantize(np.ascontiguousarray(w), lay).blob) for w in (wg, wu, wd.T)]
                for lay in (dtype, "q4_1")}
        rows["linears"] = [*rows[dtype][:2], host_tensor(quantize(np.ascontiguousarray(wd), dtype).blob)]
        cols = [host_tensor(quantize(np.ascontiguousarray(w), dtype).blob) for w in (wg.T, wu.T, wd.T)]
        copies.append((rows, [*cols, host_tensor(x_thr), host_tensor(h_thr)]))
    tx, out = host_tensor(x), host_tensor(np.zeros((1, d), np.float32))
    g, u = (host_tensor(np.zeros((1, n_ff), np.float32)) for _ in range(2))
    up_fn, down_fn = (module[str(f.attrs["global_symbol"])] for f in linears)

    def three_linears():
        for rows, _ in copies:
            wg_, wu_, wd_ = rows["linears"]
            up_fn(tx, wg_, g)
            up_fn(tx, wu_, u)
            down_fn(u, wd_, out)

    def runner(name: str):
        fn = module[str(prims[name].attrs["global_symbol"])]
        if name.startswith("dense"):
            args = [rows[name.split()[1]] for rows, _ in copies]
        else:
            args = [cols for _, cols in copies]
        return lambda: [fn(tx, *a, out) for a in args]

    return {**{name: runner(name) for name in prims}, f"dense {dtype}, three linears": three_linears}


def time_kernels(args) -> int:
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    d, n_ff = (int(v) for v in args.dims.split(","))
    load = os.getloadavg()[0]
    print(f"\n**kernels alone, d={d}, n_ff={n_ff}, batch 1, {args.threads} thread(s), {args.layers} weight copies "
          f"called in turn; µs per call, min / median of {args.rounds} interleaved rounds; load avg {load:.1f}**\n")
    print(f"| effective sparsity | kernel | min µs | median µs | vs dense {args.dtype} (min) | vs dense {args.dtype} "
          "(median) | vs three linears (median) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for s in (float(v) for v in args.sparsities.split(",")):
        runners = kernel_runners(d, n_ff, s, args.threads, args.layers, args.dtype)
        times: dict[str, list] = {k: [] for k in runners}
        names = list(runners)
        for r in range(args.rounds):   # the first runner rotates: a round's slow start hits each alike
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                runners[name]()
                times[name].append((time.perf_counter() - start) / args.layers * 1e6)
        base, linears = times[f"dense {args.dtype}"], times[f"dense {args.dtype}, three linears"]
        for name, t in times.items():
            print(f"| {s:.0%} | {name} | {min(t):.1f} | {np.median(t):.1f} | {min(base) / min(t):.2f}x | "
                  f"{np.median(base) / np.median(t):.2f}x | {np.median(linears) / np.median(t):.2f}x |", flush=True)
    print(f"\nload avg after: {os.getloadavg()[0]:.1f}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", default="576,1536", help="d,n_ff (default SmolLM2-135M's)")
    ap.add_argument("--quantize", default="int4", help="compile(quantize=): int4, int8, fp16 or none")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--methods", default="rotated-wina-greedy,wina-greedy")
    ap.add_argument("--repeats", type=int, default=2000, help="calls per runner and round (5 rounds)")
    ap.add_argument("--kernels", action="store_true", help="the kernels alone, before / after (see above)")
    ap.add_argument("--sparsities", default="0.3,0.5,0.7", help="--kernels: effective sparsities")
    ap.add_argument("--threads", type=int, default=2, help="--kernels: threads")
    ap.add_argument("--layers", type=int, default=30, help="--kernels: weight copies called in turn")
    ap.add_argument("--rounds", type=int, default=40, help="--kernels: interleaved rounds")
    ap.add_argument("--dtype", choices=("q4_0", "q8_0"), default="q4_0",
                    help="--kernels: the layout of the dense and input-sparse kernels (q4_1: the dense row beside)")
    args = ap.parse_args(argv)
    if args.kernels:
        return time_kernels(args)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import actsparse

    d, n_ff = (int(v) for v in args.dims.split(","))
    quantize = None if args.quantize == "none" else args.quantize
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, d)).astype(np.float32)
    calibration = [(rng.standard_normal((1, d)).astype(np.float32),) for _ in range(2048)]   # one token each
    model = swiglu(d, n_ff)
    modules = {"dense": actsparse.compile(model, (x,), mode="dense", quantize=quantize)}
    for name in args.methods.split(","):
        cm = actsparse.compile(model, (x,), mode="threshold", sparsity=args.sparsity, method=name,
                               calibration=calibration, quantize=quantize)
        eff = np.mean([b.effective_calibrated or 0.0 for b in cm.report.blocks])
        modules[f"{name} ({eff:.0%} effective)"] = cm
    times: dict[str, list] = {k: [] for k in modules}
    load = os.getloadavg()[0]
    for _ in range(5):   # rounds, every runner once per round
        for name, cm in modules.items():
            cm(x)
            start = time.perf_counter()
            for _ in range(args.repeats):
                cm(x)
            times[name].append((time.perf_counter() - start) / args.repeats * 1e6)
    dense = float(np.median(times["dense"]))
    print(f"\n**one SwiGLU MLP d={d}, n_ff={n_ff}, batch 1, weights {quantize or 'fp32'}; median µs per call of 5 "
          f"rounds x {args.repeats}; load avg {load:.1f} → {os.getloadavg()[0]:.1f}**\n")
    print("| module | µs per call | vs dense |\n|---|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {np.median(t):.1f} | {dense / np.median(t):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
