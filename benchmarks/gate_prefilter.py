"""How many inactive neurons an int8 copy of the gate certifies, without reading the fp16 gate rows (issue 11).

    python -m actsparse.benchmarks.gate_prefilter [--tokens 32] [--small]

Exact mode reads every gate row. In fp16 that is what holds part (a) of benchmarks/decode.py below 2x llama.cpp:
the byte ideal of exact / llama.cpp F16 is 1.92x. A *certified pre-filter* would read an int8 copy of the gate
first. The copy is q8_0-style: groups of 32, fp16 scale max|w|/127. Neuron j is certainly inactive (ReLU gate 0)
when

    g~_j + bound_j + margin_j <= 0,   g~ = deq(W8) x,   bound_j = ||w_j - deq(w8_j)||_2 * ||x||_2   (Cauchy-Schwarz),

with ||w_j - deq(w8_j)||_2 one compile-time number per neuron and margin_j a float32-accumulation allowance
(1e-5 * sum|w_j||x|). Only the other neurons' fp16 gate rows are read. The result is exactly the dense one.

On layer 0 of part (a)'s synthetic decoder (`decode_models.build_mistral`; ~90% of the neurons inactive per token, fresh
tokens), this prints the inactive fraction, the fraction each bound certifies, and the bytes per step that would
follow. The bounds are the per-row one above, and a per-group one: sum over groups of ||e_g||_2 ||x_g||_2. It
asserts that no certified neuron is active. Peak memory: one layer in fp32 (~0.9 GB).
"""

from __future__ import annotations

import argparse
import sys

GROUP = 32


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--small", action="store_true", help="tiny dims: a smoke test")
    args = ap.parse_args(argv)
    import numpy as np
    import torch

    from actsparse.benchmarks.decode_models import build_mistral

    model = build_mistral(1, 2048, 40, "float16", small=args.small)
    mlp = model.model.layers[0].mlp
    w = mlp.gate_proj.weight.detach().float().numpy()  # the fp16 values the exact kernel reads
    seen = []
    hook = mlp.register_forward_pre_hook(lambda mod, a: seen.append(a[0].detach().float()))
    ids = torch.randint(256, 2048, (1, args.tokens), generator=torch.Generator().manual_seed(5))  # not calibration's
    with torch.no_grad():
        model.float()(ids, use_cache=False)
    hook.remove()
    x = seen[0][0].numpy().astype(np.float64)  # [tokens, d]
    n, d = w.shape
    groups = w.reshape(n, d // GROUP, GROUP)
    scale = (np.abs(groups).max(axis=2, keepdims=True) / 127).astype(np.float16).astype(np.float32)
    scale[scale == 0] = 1
    err = groups - np.clip(np.round(groups / scale), -127, 127) * scale  # w - deq(w8), per element
    deq = (groups - err).reshape(n, d)
    g, g_approx = x @ w.T.astype(np.float64), x @ deq.T.astype(np.float64)
    margin = 1e-5 * (np.abs(x) @ np.abs(w).T)
    inactive = g <= 0
    x_groups = x.reshape(len(x), d // GROUP, GROUP)
    bounds = {
        "per row: ||e_j|| ||x||": np.sqrt((x ** 2).sum(1))[:, None] * np.sqrt((err ** 2).sum((1, 2)))[None],
        "per group: sum ||e_jg|| ||x_g||": np.sqrt((x_groups ** 2).sum(2)) @ np.sqrt((err ** 2).sum(2)).T,
    }
    row_fp16, row_q8 = d * 2, d + d // GROUP * 2  # bytes of one gate row: fp16, and int8 + fp16 scales
    print(f"layer 0 of part (a), {n} neurons, d {d}, {len(x)} tokens: {inactive.mean():.1%} inactive")
    for name, bound in bounds.items():
        certified = g_approx + bound + margin <= 0
        if (certified & ~inactive).any():
            raise AssertionError(f"{name}: a certified neuron is active (the bound is wrong)")
        read = 1 - certified.mean()
        gate_bytes = n * (row_q8 + read * row_fp16)
        print(f"  {name}: certifies {certified.mean():.1%} ({certified.sum() / max(inactive.sum(), 1):.1%} of the "
              f"inactive); fp16 gate rows still read {read:.1%}; gate bytes per token {gate_bytes / 1e6:.1f} MB vs "
              f"{n * row_fp16 / 1e6:.1f} MB now")
    return 0


if __name__ == "__main__":
    sys.exit(main())
