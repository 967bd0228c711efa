"""One non-gated ReLU MLP (OPT / Falcon style: fc2(relu(fc1(x) + b1)) + b2) at OPT-6.7B dims, batch 1, through
`actsparse.compile()`: exact vs dense vs torch eager, in one run.

    python -m actsparse.benchmarks.plain_mlp [--sparsity 0.9] [--repeats 15] [--small]

Exact mode runs such an MLP as a gated one whose up factor is the constant 1 (`up_act="unit"`, sparsify-exact):
fc1's rows are read densely (they decide which neurons are active), then only the active neurons' fc2 rows. The
fc1 rows are arranged so exactly `sparsity` of the neurons are inactive for the input. Every call follows a
last-level-cache eviction, interleaved (benchmarks/ffn.py's `FfnBench.time`). Printed: the CPU, load average,
median ms of each path, the bytes each must read and the speed-ups, then a markdown table. Two more rows time the
exact kernel alone on the same weights in homogeneous coordinates ([x, 1], [W1 | b1]): with the `unit` up factor
(what compile() builds) and with a stored matrix of unit up rows [0 | 1] read per active neuron (the form before
`unit`), so the difference is measured in one run.
"""

from __future__ import annotations

import argparse
import os
import sys

OPT_6_7B = (4096, 16384)
SMALL = (256, 1024)


def relu_mlp(w1, b1, w2, b2):
    """fc2(relu(fc1(x))) with these weights and biases, in torch's own memory (as a user's model holds them)."""
    import torch
    from torch import nn

    class ReluMlp(nn.Module):
        def __init__(self):
            super().__init__()
            n_ff, d = w1.shape
            self.fc1, self.fc2 = nn.Linear(d, n_ff), nn.Linear(n_ff, d)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    model = ReluMlp()
    with torch.no_grad():
        for layer, w, b in ((model.fc1, w1, b1), (model.fc2, w2, b2)):
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))
    return model.eval()


def kernel_forms(bench, w1, b1, n_active: int, want) -> dict:
    """The exact kernel alone on [x, 1] and [W1 | b1] (fc2's bias left out): up factor `unit` vs stored unit rows
    [0 | 1]; each output checked against `want` (fc2(relu(fc1(x))) without fc2's bias) first."""
    import numpy as np
    import tvm

    from actsparse.codegen.kernels.common import build_standalone
    from actsparse.codegen.kernels.sparse_mlp import sparse_gated_mlp
    from actsparse.ir.arrays import aligned_contiguous

    n_ff, d = w1.shape
    gate = aligned_contiguous(np.concatenate([w1, b1[:, None]], 1))
    unit_rows = aligned_contiguous(np.concatenate([np.zeros((n_ff, d), np.float32), np.ones((n_ff, 1), np.float32)],
                                                  1))
    down_t = aligned_contiguous(np.concatenate([bench.wd_t, np.zeros((n_ff, 1), np.float32)], 1))
    x = tvm.runtime.tensor(np.concatenate([bench.x.reshape(1, d), np.ones((1, 1), np.float32)], 1))
    forms = {"kernel exact, up `unit`": ("unit", gate, (n_ff + n_active) * d * 4),
             "kernel exact, stored unit up rows (before)": ("identity", unit_rows, (n_ff + 2 * n_active) * d * 4)}
    runners = {}
    for name, (up_act, up, nbytes) in forms.items():
        fn = build_standalone(sparse_gated_mlp(d + 1, n_ff, gate_act="relu", up_act=up_act, sched=bench.sched),
                              bench.target)
        args = [x, *(tvm.runtime.tensor(a) for a in (gate, up, down_t)), tvm.runtime.tensor(np.zeros((1, d + 1),
                                                                                                   np.float32))]
        fn(*args)
        err = np.abs(args[-1].numpy()[0, :d] - want).max() / np.abs(want).max()
        assert err <= 1e-4, f"{name}: max rel err {err:.2e} vs torch"
        runners[name] = (lambda fn=fn, args=args: fn(*args), nbytes)
    return runners


def host_bench(dims: tuple[int, int]):
    """(FfnBench at dims (d, n_ff) on this host's threads, the thread count); torch and OpenBLAS set alike."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import torch

    from actsparse.benchmarks.ffn import FfnBench
    from actsparse.targets import x86

    threads = x86.host().threads
    torch.set_num_threads(threads)
    return FfnBench(*dims, threads), threads


def mlp_bench_setup(doc: str, argv, dims: tuple[int, int], small: tuple[int, int], sparsity: float, what: str,
                    extra=None):
    """The command line every one-MLP benchmark here shares (--sparsity, --repeats, --small, and `extra(ap)`'s own),
    then its host bench at `dims` (or `small`): (args, FfnBench, threads)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--sparsity", type=float, default=sparsity, help=f"{what} (default {sparsity:g})")
    ap.add_argument("--repeats", type=int, default=15, help="timed calls per path (median reported)")
    ap.add_argument("--small", action="store_true", help="tiny dims for a smoke test")
    if extra is not None:
        extra(ap)
    args = ap.parse_args(argv)
    return (args, *host_bench(small if args.small else dims))


def print_paths(runners: dict, med: dict) -> None:
    """The markdown table of timed paths: median ms, bytes read, rate, and the ratios to torch and to dense."""
    from actsparse.benchmarks.tables import markdown_table

    rows = [(name, f"{med[name] * 1e3:.2f}", f"{nbytes / 1e6:.0f}", f"{nbytes / med[name] / 1e9:.1f}",
             f"{med['torch eager (fp32)'] / med[name]:.2f}x", f"{med['compile() dense'] / med[name]:.2f}x")
            for name, (_, nbytes) in runners.items()]
    print(markdown_table(("path", "median ms", "MB read", "GB/s", "vs torch", "vs compile() dense"), rows, 1))


def main(argv=None) -> int:
    args, bench, threads = mlp_bench_setup(__doc__, argv, OPT_6_7B, SMALL, 0.9, "fraction of inactive neurons")
    d, n_ff = bench.d, bench.n_ff

    import numpy as np
    import torch

    import actsparse
    load_before = os.getloadavg()
    w1, active = bench.gate_for(args.sparsity)
    b1, b2 = np.zeros(n_ff, np.float32), np.full(d, 0.01, np.float32)
    model = relu_mlp(w1, b1, bench.wd, b2)
    x = bench.x.reshape(1, 1, d).astype("float32")
    compiled = {mode: actsparse.compile(model, (x,), mode=mode) for mode in ("exact", "dense")}
    pattern = compiled["exact"].report.blocks[0].pattern
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    for mode, cm in compiled.items():
        err = np.abs(cm(x) - want).max() / np.abs(want).max()
        if err > 1e-4:
            print(f"MISMATCH: compile() {mode} vs torch, max rel err {err:.2e}")
            return 1
    xt = torch.from_numpy(x)
    row = d * 4
    n_active = int(active.sum())

    def torch_call():
        with torch.no_grad():
            return model(xt)

    runners = {"torch eager (fp32)": (torch_call, 2 * n_ff * row),
               "compile() dense": (lambda: compiled["dense"](x), 2 * n_ff * row),
               "compile() exact": (lambda: compiled["exact"](x), (n_ff + n_active) * row),
               **kernel_forms(bench, w1, b1, n_active, want[0, 0] - b2)}
    times = bench.time(runners, args.repeats)
    med = {name: float(np.median(t)) for name, t in times.items()}
    load_after = os.getloadavg()[0]
    print(f"CPU: {bench.cpu} | {threads} threads | load avg {load_before[0]:.2f} before, {load_after:.2f} after")
    print(f"MLP d={d} n_ff={n_ff}, fc2(relu(fc1(x))) with biases, fp32, {n_active} of {n_ff} active; exact mode's "
          f"pattern: {pattern}\n")
    print_paths(runners, med)
    return 0


if __name__ == "__main__":
    sys.exit(main())
