"""CATS's neuron criterion with a weight per neuron: what a per-neuron threshold would buy the kernels that skip
neurons (routed MoE experts: passes/routed_thresholds.py; the `cats` method).

CATS keeps neuron i of a token where |act(g_i)| > t, one t per block. Weighting each neuron's score by c_i,
|act(g_i)|·c_i > t (a threshold t / c_i per neuron), with
    cats      c_i = 1
    down      c_i = ‖W_down[:, i]‖                      (how far the neuron moves the output per unit of h)
    down_up   c_i = ‖W_down[:, i]‖ · mean_rows |u_i|     (and how large its up factor is on the calibration text)
each t the `--sparsity` quantile of its block's scores on the calibration rows (the same rows, windows and held-out
text as threshold_frontier.py), installed as torch forward replacements; held-out perplexity against dense.

    python -m actsparse.benchmarks.neuron_weights [--model smollm2|gemma3] [--sparsity 0.5]
"""

from __future__ import annotations

import argparse

from . import threshold_frontier as frontier

WEIGHTS = ("cats", "down", "down_up")


def neuron_weight(mlp, rows, kind: str):
    import torch

    with torch.no_grad():
        if kind == "cats":
            return torch.ones(mlp.gate_proj.out_features)
        c = mlp.down_proj.weight.norm(dim=0)
        return c * mlp.up_proj(rows).abs().mean(0) if kind == "down_up" else c


def masked_forward(mlp, t: float, c):
    import torch

    def forward(x):
        a = mlp.act_fn(mlp.gate_proj(x))
        return mlp.down_proj(torch.where(a.abs() * c > t, a * mlp.up_proj(x), 0))
    return forward


def main(argv=None) -> int:
    import numpy as np
    import torch

    from actsparse.passes.loss_sensitivity import decoder_mlps

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--calib-windows", type=int, default=16)
    ap.add_argument("--eval-windows", type=int, default=4)
    args = ap.parse_args(argv)
    model, tok = frontier.load_model(args.model)
    held_out = frontier.prose_windows(tok, "eval", 256, args.eval_windows)
    rows = frontier.collect_rows(model, frontier.prose_windows(tok, "calib", 256, args.calib_windows))
    mlps = decoder_mlps(model)
    dense = frontier.perplexity(model, held_out)
    print(f"{args.model} dense: {dense:.4f}")
    print("\n| neuron weight | perplexity | vs dense |\n|---|---:|---:|")
    for kind in WEIGHTS:
        own = [m.forward for m in mlps]
        for m, r in zip(mlps, rows):
            x = torch.from_numpy(r)
            c = neuron_weight(m, x, kind)
            with torch.no_grad():
                scores = (m.act_fn(m.gate_proj(x)).abs() * c).numpy()
            m.forward = masked_forward(m, float(np.quantile(scores, args.sparsity)), c)
        with torch.no_grad():
            ppl = frontier.perplexity(model, held_out)
        for m, f in zip(mlps, own):
            m.forward = f
        print(f"| {kind} | {ppl:.4f} | {100 * (ppl / dense - 1):+.2f}% |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
