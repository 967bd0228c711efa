"""One SwiGLU MLP per decode step at a small model's dims: compile()'s dense vs threshold mode, per call.

    python -m actsparse.benchmarks.threshold_step [--dims 576,1536] [--quantize int4] [--sparsity 0.5]
                                                  [--methods rotated-wina-greedy,wina-greedy] [--repeats 2000]

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", default="576,1536", help="d,n_ff (default SmolLM2-135M's)")
    ap.add_argument("--quantize", default="int4", help="compile(quantize=): int4, int8, fp16 or none")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--methods", default="rotated-wina-greedy,wina-greedy")
    ap.add_argument("--repeats", type=int, default=2000, help="calls per runner and round (5 rounds)")
    args = ap.parse_args(argv)
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
