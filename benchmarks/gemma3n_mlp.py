"""Gemma 3n's cut MLP through `actsparse.compile()`: exact (the cutoff variant: gate dense, up and down rows of the
active neurons only) vs dense (the same graph's ops on the linear kernels) vs torch eager, one token, in one run.

    python -m actsparse.benchmarks.gemma3n_mlp [--dtype float32|float16] [--repeats 15] [--small]

(float16: the weights stored as `quantize="fp16"` stores them; torch eager runs the float32 model.)

The block is transformers' own `Gemma3nTextMLP` at E2B/E4B dims (hidden 2048, n_ff 16384) with the first layers'
`activation_sparsity_pattern` 0.95: its gate gelu_tanh(relu(P - mean(P) - 1.645·std(P))) cuts ~95% of the neurons
per token by its own statistic, on random weights and a random input as on trained ones. Every call follows a
last-level-cache eviction and a thread-pool wake-up, interleaved (benchmarks/ffn.py's `FfnBench.time`). Printed:
median ms per path, exact / dense as a speedup, the neurons the cutoff kept and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys

E2B = (2048, 16384)
SMALL = (256, 1024)
EXACT, DENSE, TORCH = "compile() exact", "compile() dense", "torch eager"


def gemma3n_mlp(wg, wu, wd, dtype: str, sparsity: float = 0.95):
    """transformers' Gemma3nTextMLP (layer 0, cut at `sparsity`) holding these weights."""
    from transformers.models.gemma3n.configuration_gemma3n import Gemma3nTextConfig
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextMLP

    from actsparse.benchmarks.torch_weights import with_weights

    n_ff, d = wg.shape
    config = Gemma3nTextConfig(hidden_size=d, intermediate_size=[n_ff], num_hidden_layers=1,
                               activation_sparsity_pattern=[sparsity], layer_types=["full_attention"])
    mlp = Gemma3nTextMLP(config, layer_idx=0)
    return with_weights(mlp, ((mlp.gate_proj, wg), (mlp.up_proj, wu), (mlp.down_proj, wd)), dtype)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="weight dtype")
    ap.add_argument("--repeats", type=int, default=15, help="timed calls per path (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="kernel threads (default: the host target's)")
    ap.add_argument("--small", action="store_true", help="tiny dims for a smoke test")
    args = ap.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    import numpy as np
    import torch

    import actsparse
    from actsparse.benchmarks.ffn import FfnBench
    from actsparse.targets import x86

    d, n_ff = SMALL if args.small else E2B
    bench = FfnBench(d, n_ff, args.threads or x86.host().threads)
    load_before = os.getloadavg()[0]
    model = gemma3n_mlp(bench.wg, bench.wu, bench.wd, "float32")
    del bench.wd_t, bench.wg  # the bench's own copies: only its x, eviction and timing are used
    x = bench.x.reshape(1, 1, d)
    # fp16 weights as `quantize="fp16"` stores them (activations float32): a float16 model's own graph would take
    # its mean / std over 16384 neurons in float16, as torch does not (it accumulates them in float32)
    quantize = "fp16" if args.dtype == "float16" else None
    exact = actsparse.compile(model, (x,), mode="exact", quantize=quantize)
    dense = actsparse.compile(model, (x,), mode="dense", quantize=quantize)
    assert exact.report.pass_stats["sparsify-exact"] == {"geglu-cutoff": 1}, exact.report.pass_stats
    xt = torch.from_numpy(x)
    with torch.no_grad():
        want = model(xt).float().numpy().astype("float64")
    err = {name: np.abs(np.asarray(f(x), "float64") - want).max() / np.abs(want).max()
           for name, f in ((EXACT, exact), (DENSE, dense))}
    tol = 1e-4 if args.dtype == "float32" else 2e-2
    if max(err.values()) > tol:
        print(f"MISMATCH vs torch: {err}")
        return 1
    kept = 1 - exact.report.blocks[0].sparsity

    def torch_call():
        with torch.no_grad():
            model(xt)

    runners = {EXACT: (lambda: exact(x), 0), DENSE: (lambda: dense(x), 0), TORCH: (torch_call, 0)}
    times = bench.time(runners, args.repeats)
    med = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    load_after = os.getloadavg()[0]
    print(f"\n**Gemma 3n cut MLP — d={d}, n_ff={n_ff}, gate cut at 95% per token (transformers' Gemma3nTextMLP), "
          f"batch 1, weights {args.dtype}**, {bench.cpu}; {bench.threads} threads; LLC evicted before each call, "
          f"median of {args.repeats}; {kept:.1%} of the neurons active; under load: load average "
          f"{load_before:.1f} before, {load_after:.1f} after\n")
    print("| path | median ms | dense / path |")
    print("|---|---:|---:|")
    for name, ms in med.items():
        print(f"| {name} | {ms:.2f} | {med[DENSE] / ms:.2f}x |")
    print(f"\nmax rel. error vs torch: exact {err[EXACT]:.1e}, dense {err[DENSE]:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
