"""Where a sparsity plan's perplexity goes: one block (and one of its matrices) at a time (issue 15, Gemma at 0.5).

    python -m actsparse.benchmarks.threshold_ablation [--model gemma3] [--method rotated-wina-greedy]
        [--sparsity 0.5] [--calib-windows 16] [--eval-windows 6] [--sensitivity fisher|none] [--parts full,x,h]

The method is calibrated once for the whole model, as threshold_frontier does (same text, windows, rows, Fisher
weights, forward replacements). Then each block's plan is installed alone (every other block dense) and the
held-out perplexity measured: `full` (its x and h sparsity), `x` (only the gate/up input sparsified: the down
input's thresholds zeroed) and `h` (only the down input). Each row gives what the block skips on the held-out
text (x / h sparsity, its effective sparsity) and the loss it costs per point of the *model's* MLP bytes it skips
(Δ log-perplexity ×100 / model-byte points: comparable across blocks and matrices; blocks of equal size). The sum
of the single-block costs against the whole plan's says how much the blocks' errors compound.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

import numpy as np

from . import threshold_frontier as frontier


def held_sparsity(block, plan, rows) -> tuple[float, float]:
    """(x sparsity, h sparsity) the plan gives on `rows` (held-out text), in the plan's basis."""
    from actsparse.ir.input_sparse import input_sparse_parts

    x, w_gate, w_up = rows, block.w_gate, block.w_up
    if plan.rotation is not None:
        x, w_gate, w_up = rows @ plan.rotation, w_gate @ plan.turn, w_up @ plan.turn
    keep_x, keep_h, _ = input_sparse_parts(x.astype(np.float32), w_gate.T, w_up.T, plan.x_thr, plan.h_thr,
                                           {**block.attrs, **plan.attrs})
    return float(1 - keep_x.mean()), float(1 - keep_h.mean())


def part(plan, which: str):
    """The plan with only x (`x`) or only h (`h`) sparsified; `full`: as it is."""
    if which == "x":
        return replace(plan, h_thr=np.zeros_like(plan.h_thr), h_keep=0)
    if which == "h":
        return replace(plan, x_thr=np.zeros_like(plan.x_thr), x_keep=0)
    return plan


def main(argv=None) -> int:
    import torch

    from actsparse.passes.sparsity_methods import allocation_curves, calibrate_blocks, method

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma3")
    p.add_argument("--method", default="rotated-wina-greedy")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--calib-windows", type=int, default=16)
    p.add_argument("--eval-windows", type=int, default=6)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--sensitivity", choices=("fisher", "none"), default="fisher")
    p.add_argument("--parts", default="full,x,h")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    m = method(args.method)
    t0 = time.perf_counter()
    model, tok = frontier.load_model(args.model)
    calib = frontier.prose_windows(tok, "calib", args.window, args.calib_windows)
    held = frontier.prose_windows(tok, "eval", args.window, args.eval_windows)
    rows = frontier.collect_rows(model, calib, args.calib_windows * args.window)
    held_rows = frontier.collect_rows(model, held)
    blocks = frontier.block_weights(model)
    sensitivity = None
    if args.sensitivity == "fisher":
        sensitivity = frontier.fisher_rows(model, calib, rows)
    curves = allocation_curves(blocks, rows, m, progress=False, sensitivity=sensitivity) if m.greedy else None
    plans = calibrate_blocks(blocks, rows, m.name, args.sparsity, progress=False, curves=curves,
                             sensitivity=sensitivity)
    base = np.log(frontier.perplexity(model, held))
    parts = args.parts.split(",")
    whole = {}
    for which in ("full", "x", "h"):   # every block at once, each part
        frontier.install(model, [part(plan, which) for plan in plans])
        whole[which] = np.log(frontier.perplexity(model, held)) - base
        frontier.install(model, None)
    n = len(blocks)
    print(f"{args.model} {m.name}{'+fisher' if sensitivity else ''} at {args.sparsity:g}, calibration windows "
          f"1-{args.calib_windows}, held-out windows 1-{args.eval_windows} (window {args.window}); dense perplexity "
          f"{np.exp(base):.3f}; every block: " + ", ".join(f"{w} {np.expm1(c):+.2%}" for w, c in whole.items())
          + f" [{time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f}]", flush=True)
    print("| block | rotated | x / h asked | x / h held-out | effective held-out | "
          + " | ".join(f"{w}: Δppl, Δlog·100/pt" for w in parts) + " |")
    print("|---:|---|---|---|---:|" + "---:|" * len(parts))
    summed = dict.fromkeys(parts, 0.0)
    for i, (b, plan, hr) in enumerate(zip(blocks, plans, held_rows)):
        px, ph = held_sparsity(b, plan, hr)
        sx, sh = b.byte_shares()
        cells = []
        for which in parts:
            skipped = {"full": sx * px + sh * ph - plan.rotation_share, "x": sx * px, "h": sh * ph}[which]
            frontier.install(model, [part(plan, which) if j == i else None for j in range(n)])
            cost = np.log(frontier.perplexity(model, held)) - base
            frontier.install(model, None)
            summed[which] += cost
            per_point = 100 * cost / max(100 * skipped / n, 1e-9)
            cells.append(f"{np.expm1(cost):+.2%}, {per_point:.3f}")
        print(f"| {i} | {'yes' if plan.rotation is not None else 'no'} | {plan.x_sparsity:.2f} / "
              f"{plan.h_sparsity:.2f} | {px:.1%} / {ph:.1%} | {sx * px + sh * ph - plan.rotation_share:.1%} | "
              + " | ".join(cells) + " |", flush=True)
    print("summed single-block costs: " + ", ".join(f"{w} {np.expm1(c):+.2%}" for w, c in summed.items())
          + f"; every block at once: full {np.expm1(whole['full']):+.2%} "
          f"[{time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
