"""The public path vs the bare kernels: one ReGLU MLP at Mistral-7B dims through `actsparse.compile()` (what a
user runs: torch module in, numpy in and out, the Relax VM around the kernel) against the same kernels called
directly as in benchmarks/ffn.py, in one run.

    python -m actsparse.benchmarks.public_path [--sparsity 0.9] [--dtype float32|float16] [--repeats 15] [--small]

The torch module is built as a user builds one (nn.Linear parameters in torch's memory); its gate rows are
arranged so exactly `sparsity` of the neurons are inactive for the input. Every call follows a last-level-cache
eviction and a thread-pool wake-up, interleaved (benchmarks/ffn.py's `FfnBench.time`). Run it in a plain shell:
the compiled modules are built and called first, with TVM_NUM_THREADS as the user has it (unset: the runtime
sizes TVM's pool itself), and the pool size TVM then reports is printed. Printed: median ms of each path and
public / kernel as a ratio (goal: within 1.10x).
"""

from __future__ import annotations

import argparse
import os
import sys

COMPILED_EXACT = "compile() exact"
COMPILED_DENSE = "compile() dense"


def reglu_module(wg, wu, wd, dtype: str):
    """down(relu(gate(x)) * up(x)) with these weights, in torch's own memory (as a user's model holds them)."""
    import torch
    from torch import nn

    from actsparse.benchmarks.torch_weights import with_weights

    class ReGLU(nn.Module):
        def __init__(self):
            super().__init__()
            n_ff, d = wg.shape
            self.gate = nn.Linear(d, n_ff, bias=False)
            self.up = nn.Linear(d, n_ff, bias=False)
            self.down = nn.Linear(n_ff, d, bias=False)

        def forward(self, x):
            return self.down(torch.relu(self.gate(x)) * self.up(x))

    model = ReGLU()
    return with_weights(model, ((model.gate, wg), (model.up, wu), (model.down, wd)), dtype)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sparsity", type=float, default=0.9, help="fraction of inactive neurons (default 0.9)")
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="weight dtype")
    ap.add_argument("--repeats", type=int, default=15, help="timed calls per path (median reported)")
    ap.add_argument("--small", action="store_true", help="tiny dims for a smoke test")
    args = ap.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # spinning OpenBLAS threads halve TVM's speed
    user_threads = os.environ.get("TVM_NUM_THREADS")

    import numpy as np
    import tvm

    import actsparse
    from actsparse.benchmarks.ffn import DENSE, EXACT, MISTRAL, SMALL, FfnBench
    from actsparse.targets import x86

    d, n_ff = SMALL if args.small else MISTRAL
    host = x86.host()
    bench = FfnBench(d, n_ff, host.threads)  # sets TVM_NUM_THREADS for its kernels: undone for the public path
    if user_threads is None:
        os.environ.pop("TVM_NUM_THREADS", None)
    load_before = os.getloadavg()
    wg, active = bench.gate_for(args.sparsity)
    model = reglu_module(wg, bench.wu, bench.wd, args.dtype)
    x = bench.x.reshape(1, 1, d).astype(args.dtype)
    exact = actsparse.compile(model, (x,), mode="exact")
    dense = actsparse.compile(model, (x,), mode="dense")
    del model  # the compiled modules hold (views of) its weights
    y_exact, y_dense = exact(x), dense(x)
    pool = tvm.runtime.num_threads()
    print(f"CPU: {bench.cpu} | kernels scheduled for {host.threads} threads, TVM pool after the public path's "
          f"first call: {pool} | load avg: {load_before[0]:.2f}", flush=True)
    print(f"FFN d={d} n_ff={n_ff}, ReGLU, weights {args.dtype}, {int(active.sum())} of {n_ff} active "
          f"(report: {exact.report.blocks[0].sparsity:.1%} inactive)", flush=True)

    runners, _ = bench.runners(args.sparsity, args.dtype, which=(EXACT, DENSE), gate=(wg, active))
    runners[COMPILED_EXACT] = (lambda: exact(x), 0)
    runners[COMPILED_DENSE] = (lambda: dense(x), 0)
    ref = y_dense.astype("float64")
    err = np.abs(y_exact.astype("float64") - ref).max() / max(np.abs(ref).max(), 1e-30)
    tol = 1e-4 if args.dtype == "float32" else 1e-2
    if err > tol:
        print(f"MISMATCH: compile() exact vs dense, max rel err {err:.2e}")
        return 1
    times = bench.time(runners, args.repeats)
    med = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    load_after = os.getloadavg()[0]

    pairs = ((COMPILED_EXACT, EXACT), (COMPILED_DENSE, DENSE))
    print(f"\n{'path':52s} {'median ms':>10s}")
    for name, ms in med.items():
        print(f"{name:52s} {ms:10.2f}")
    print(f"load avg after: {load_after:.2f}\n")
    print(f"**Public path vs bare kernels — FFN d={d}, n_ff={n_ff}, ReGLU, batch 1, weights {args.dtype}, "
          f"{args.sparsity:.0%} inactive**, {bench.cpu}; LLC evicted before each call, median of {args.repeats}; "
          f"TVM pool {pool} threads; load average {load_before[0]:.1f} before, {load_after:.1f} after\n")
    print("| mode | compile() ms | kernel (ffn.py) ms | compile() / kernel |")
    print("|---|---:|---:|---:|")
    for public, kernel in pairs:
        print(f"| {public.split()[-1]} | {med[public]:.2f} | {med[kernel]:.2f} | {med[public] / med[kernel]:.2f}x |")
    print("\n(both dense rows run the fused dense_gated_mlp kernel: compile()'s dense mode lowers to it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
