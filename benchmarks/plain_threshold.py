"""Threshold mode on a non-gated GELU MLP (Falcon-7B style: fc2(gelu(fc1(x))), no biases) at Falcon-7B dims, batch 1,
through `actsparse.compile()`: threshold vs dense vs torch eager, in one run.

    python -m actsparse.benchmarks.plain_threshold [--sparsity 0.5] [--repeats 15] [--calibration 512] [--small]

Threshold mode takes a non-gated MLP as a block whose up factor is the constant 1 (`up_act="unit"`): the default
method calibrates the x / h thresholds to skip `sparsity` of its two matrices' bytes, and the input-sparse kernel
reads only the kept input channels' fc1 rows (stored transposed) and the kept neurons' fc2 rows. Calibration and the
timed input are Gaussian rows (the thresholds are quantiles, so the timed call skips about what was asked; the
report's measured effective sparsity on the timed input is printed). Every call follows a last-level-cache
eviction, interleaved (benchmarks/ffn.py's `FfnBench.time`). Printed: the CPU, load average, median ms of each path,
the bytes each reads and the speed-ups, then a markdown table.
"""

from __future__ import annotations

import os
import sys

from .plain_mlp import mlp_bench_setup, print_paths

FALCON_7B = (4544, 18176)
SMALL = (256, 1024)


def gelu_mlp(w1, w2):
    """fc2(gelu(fc1(x))) with these weights, no biases, in torch's own memory (as a user's model holds them)."""
    import torch
    from torch import nn

    class GeluMlp(nn.Module):
        def __init__(self):
            super().__init__()
            n_ff, d = w1.shape
            self.fc1, self.fc2 = nn.Linear(d, n_ff, bias=False), nn.Linear(n_ff, d, bias=False)

        def forward(self, x):
            return self.fc2(torch.nn.functional.gelu(self.fc1(x)))

    model = GeluMlp()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.from_numpy(w1))
        model.fc2.weight.copy_(torch.from_numpy(w2))
    return model.eval()


def main(argv=None) -> int:
    args, bench, threads = mlp_bench_setup(
        __doc__, argv, FALCON_7B, SMALL, 0.5, "threshold mode's target",
        lambda ap: ap.add_argument("--calibration", type=int, default=512, help="calibration rows (one token each)"))
    d, n_ff = bench.d, bench.n_ff

    import numpy as np
    import torch

    import actsparse
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((n_ff, d)) / np.sqrt(d)).astype(np.float32)
    w2 = (rng.standard_normal((d, n_ff)) / np.sqrt(n_ff)).astype(np.float32)
    model = gelu_mlp(w1, w2)
    x = rng.standard_normal((1, 1, d)).astype(np.float32)
    calibration = [(rng.standard_normal((1, 1, d)).astype(np.float32),) for _ in range(args.calibration)]
    load_before = os.getloadavg()
    compiled = {"dense": actsparse.compile(model, (x,), mode="dense"),
                "threshold": actsparse.compile(model, (x,), mode="threshold", sparsity=args.sparsity,
                                               calibration=calibration)}
    block = compiled["threshold"].report.blocks[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    err = np.abs(compiled["dense"](x) - want).max() / np.abs(want).max()
    if err > 1e-4:
        print(f"MISMATCH: compile() dense vs torch, max rel err {err:.2e}")
        return 1
    lossy = np.linalg.norm(compiled["threshold"](x) - want) / np.linalg.norm(want)
    xt, nbytes = torch.from_numpy(x), 2 * n_ff * d * 4

    def torch_call():
        with torch.no_grad():
            return model(xt)

    runners = {"torch eager (fp32)": (torch_call, nbytes),
               "compile() dense": (lambda: compiled["dense"](x), nbytes),
               "compile() threshold": (lambda: compiled["threshold"](x),
                                       int(nbytes * (1 - (block.effective_sparsity or 0.0))))}
    times = bench.time(runners, args.repeats)
    med = {name: float(np.median(t)) for name, t in times.items()}
    print(f"CPU: {bench.cpu} | {threads} threads | load avg {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    print(f"MLP d={d} n_ff={n_ff}, fc2(gelu(fc1(x))), fp32; threshold block: pattern {block.pattern}, mode "
          f"{block.mode}, method {block.method}, effective sparsity {block.effective_calibrated:.1%} calibrated, "
          f"{block.effective_sparsity:.1%} on the timed input; output vs torch: relative error {lossy:.3f}\n")
    print_paths(runners, med)
    return 0


if __name__ == "__main__":
    sys.exit(main())
