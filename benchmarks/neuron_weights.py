"""CATS's neuron criterion with a weight per neuron, and a second cut on h: what the kernels that skip neurons
(routed MoE experts: passes/routed_thresholds.py) buy with each, as torch forward replacements.

CATS keeps neuron i of a token where |act(g_i)| > t, one t per block. Weighting each neuron's score by c_i,
|act(g_i)|·c_i > t (a threshold t / c_i per neuron), with
    cats      c_i = 1
    down      c_i = ‖W_down[:, i]‖                      (how far the neuron moves the output per unit of h)
    down_up   c_i = ‖W_down[:, i]‖ · mean_rows |u_i|     (and how large its up factor is on the calibration text)
each t the `--sparsity` quantile of its block's scores on the calibration rows; and
    two-cut   down_up's gate cut at sparsity - shift, then h dropped where |h_i|·‖W_down[:, i]‖ is below the cut
              that drops sparsity + shift of h, the shift the least-error one per block
              (`routed_thresholds.least_error_cuts`, on at most SHARED_ROWS of the rows, as for an expert):
              as many up and down rows read as the others'
The same rows, windows and held-out text as threshold_frontier.py; held-out perplexity against dense.

    python -m actsparse.benchmarks.neuron_weights [--model smollm2|gemma3] [--sparsity 0.5]
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from . import threshold_frontier as frontier

WEIGHTS = ("cats", "down", "down_up", "two-cut")


def block_cuts(bw, rows: np.ndarray, kind: str, sparsity: float) -> tuple[np.ndarray, float]:
    """(cuts [2, n]: on |act(g)|, on |h|; the shift chosen, NaN for a gate cut alone) of one block for `kind`."""
    from actsparse.ir.activations import apply
    from actsparse.passes.routed_thresholds import expert_scores, least_error_cuts

    scored = expert_scores(bw, rows, np.ones(len(rows), np.float32))
    if kind == "two-cut":
        cuts = least_error_cuts([scored], sparsity)
        return np.stack([cuts.gate / scored.weights, cuts.h / scored.down_norms]), cuts.shift
    c = {"cats": np.ones_like(scored.weights), "down": scored.down_norms, "down_up": scored.weights}[kind]
    a = np.abs(apply(bw.gate_act, rows @ bw.w_gate.T))
    return np.stack([np.quantile(a * c, sparsity) / c, np.zeros_like(c)]), float("nan")


def masked_forward(mlp, cuts):
    import torch

    def forward(x):
        a = mlp.act_fn(mlp.gate_proj(x))
        h = torch.where(a.abs() > cuts[0], a, 0) * mlp.up_proj(x)
        return mlp.down_proj(torch.where(h.abs() > cuts[1], h, 0))
    return forward


def main(argv=None) -> int:
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
    mlps, blocks = decoder_mlps(model), frontier.block_weights(model)
    dense = frontier.perplexity(model, held_out)
    print(f"{args.model} dense: {dense:.4f}")
    print("\n| neuron weight | perplexity | vs dense | shifts chosen |\n|---|---:|---:|---|")
    for kind in WEIGHTS:
        own, shifts = [m.forward for m in mlps], Counter()
        for m, bw, r in zip(mlps, blocks, rows):
            cuts, shift = block_cuts(bw, r, kind, args.sparsity)
            if not np.isnan(shift):
                shifts[shift] += 1
            m.forward = masked_forward(m, torch.from_numpy(cuts.astype(np.float32)))
        with torch.no_grad():
            ppl = frontier.perplexity(model, held_out)
        for m, f in zip(mlps, own):
            m.forward = f
        chosen = ", ".join(f"{s:g}: {n}" for s, n in sorted(shifts.items())) or "-"
        print(f"| {kind} | {ppl:.4f} | {100 * (ppl / dense - 1):+.2f}% | {chosen} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
