"""One BitNet-style MLP, down(w ⊙ rms_norm(relu²(gate(x)) ⊙ up(x))) (BitNet b1.58 2B4T's dims, float weights),
batch 1, through `actsparse.compile()`: exact vs dense vs torch eager, and the same block without the norm in exact
mode (what the norm costs the kernel), in one run.

    python -m actsparse.benchmarks.normed_mlp [--sparsity 0.9] [--repeats 15] [--small]

The norm keeps zeros zero, so exact mode reads the gate rows and only the active neurons' up and down rows; the
kernel sums the kept h² and scales its output by 1 / rms (README, "Which MLPs exact mode takes"). The gate rows are
arranged so exactly `sparsity` of the neurons are inactive for the input. Every call follows a last-level-cache
eviction, interleaved (benchmarks/ffn.py's `FfnBench.time`). Printed: the CPU, load average, then per path the
median ms, the bytes it must read, the rate and the ratios to torch and to compile()'s dense.
"""

from __future__ import annotations

import os
import sys

BITNET_2B = (2560, 6912)
SMALL = (256, 768)
EPS = 1e-5


def normed_block(wg, wu, wd, w_norm, normed: bool = True):
    """The block in torch's own memory (as a user's model holds it); `normed` False: the same without the norm."""
    import torch
    from torch import nn

    class NormedMLP(nn.Module):
        def __init__(self):
            super().__init__()
            n_ff, d = wg.shape
            self.gate_proj, self.up_proj = nn.Linear(d, n_ff, bias=False), nn.Linear(d, n_ff, bias=False)
            self.down_proj = nn.Linear(n_ff, d, bias=False)
            self.weight = nn.Parameter(torch.from_numpy(w_norm.copy()))

        def forward(self, x):
            h = torch.relu(self.gate_proj(x)) ** 2 * self.up_proj(x)
            if normed:
                h = self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS))
            return self.down_proj(h)

    model = NormedMLP()
    with torch.no_grad():
        for layer, w in ((model.gate_proj, wg), (model.up_proj, wu), (model.down_proj, wd)):
            layer.weight.copy_(torch.from_numpy(w))
    return model.eval()


def main(argv=None) -> int:
    from .plain_mlp import mlp_bench_setup, print_paths

    args, bench, threads = mlp_bench_setup(__doc__, argv, BITNET_2B, SMALL, 0.9, "fraction of inactive neurons")
    d, n_ff = bench.d, bench.n_ff

    import numpy as np
    import torch

    import actsparse

    load_before = os.getloadavg()
    wg, active = bench.gate_for(args.sparsity)
    w_norm = (bench.rng.random(n_ff) + 0.5).astype(np.float32)
    x = bench.x.reshape(1, 1, d).astype("float32")
    models = {True: normed_block(wg, bench.wu, bench.wd, w_norm), False: normed_block(wg, bench.wu, bench.wd, w_norm,
                                                                                     normed=False)}
    compiled = {"compile() exact": actsparse.compile(models[True], (x,), mode="exact"),
                "compile() dense": actsparse.compile(models[True], (x,), mode="dense"),
                "compile() exact, without the norm": actsparse.compile(models[False], (x,), mode="exact")}
    assert compiled["compile() exact"].report.pass_stats["detect-gated-mlp"].get("relu2-glu-normed") == 1
    for name, cm in compiled.items():
        with torch.no_grad():
            want = models["norm" not in name](torch.from_numpy(x)).numpy()
        err = np.abs(cm(x) - want).max() / np.abs(want).max()
        if err > 1e-4:
            print(f"MISMATCH: {name} vs torch, max rel err {err:.2e}")
            return 1
    xt = torch.from_numpy(x)
    row, n_active = d * 4, int(active.sum())

    def torch_call():
        with torch.no_grad():
            return models[True](xt)

    runners = {"torch eager (fp32)": (torch_call, 3 * n_ff * row),
               **{name: (lambda cm=cm: cm(x), (n_ff + (2 * n_active if "exact" in name else 2 * n_ff)) * row)
                  for name, cm in compiled.items()}}
    times = bench.time(runners, args.repeats)
    med = {name: float(np.median(t)) for name, t in times.items()}
    print(f"CPU: {bench.cpu} | {threads} threads | load avg {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} "
          "after")
    print(f"MLP d={d} n_ff={n_ff}, down(w * rms_norm(relu(gate)^2 * up)), fp32, {n_active} of {n_ff} active\n")
    print_paths(runners, med)
    return 0


if __name__ == "__main__":
    sys.exit(main())
