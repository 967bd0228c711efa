"""How a threshold method's quality depends on the calibration and held-out windows (issue 15's Gemma question).

    python -m actsparse.benchmarks.threshold_windows [--model gemma3] [--method rotated-wina-greedy]
        [--sparsity 0.5] [--calib-windows 8,16] [--eval-windows 6,8] [--sensitivity none|fisher]

One model load for the whole grid: the calibration rows of the largest count are collected once (a smaller count's
rows are their prefix, as threshold_frontier cuts them), every held-out window is scored dense and sparse on its
own, and each held-out count's perplexity is the prefix of those windows. Prints, per calibration count, the
perplexity and effective sparsity (calibrated, and measured on each held-out window), so one run answers whether
a change comes from the calibration side or from the held-out side. Same text, windows and forward replacements
as threshold_frontier (pydoc prose, BOS first, window 256).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from . import threshold_frontier as frontier


def window_nll(model, windows) -> np.ndarray:
    """Summed next-token loss of each window on its own."""
    import torch

    out = []
    with torch.no_grad():
        for w in windows:
            ids = torch.from_numpy(w)
            logits = model(ids).logits[0, :-1].float()
            out.append(float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")))
    return np.asarray(out)


def main(argv=None) -> int:
    import torch

    from actsparse.passes.calibrate import SINK_POSITIONS
    from actsparse.passes.sparsity_methods import allocation_curves, calibrate_blocks, measured_effective, method

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma3")
    p.add_argument("--method", default="rotated-wina-greedy")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--calib-windows", default="8,16")
    p.add_argument("--eval-windows", default="6,8")
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--sensitivity", choices=("fisher", "none"), default="none")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    calib_counts = sorted(int(c) for c in args.calib_windows.split(","))
    eval_counts = sorted(int(c) for c in args.eval_windows.split(","))
    torch.set_num_threads(args.threads)
    m = method(args.method)
    t0 = time.perf_counter()
    model, tok = frontier.load_model(args.model)
    calib = frontier.prose_windows(tok, "calib", args.window, calib_counts[-1])
    held = frontier.prose_windows(tok, "eval", args.window, eval_counts[-1])
    all_rows = frontier.collect_rows(model, calib, calib_counts[-1] * args.window)
    held_rows = [frontier.collect_rows(model, [w]) for w in held]
    blocks = frontier.block_weights(model)
    tokens = held[0].shape[1] - 1
    dense = window_nll(model, held)
    print(f"{args.model}: loaded and collected in {time.perf_counter() - t0:.0f} s; dense perplexity per held-out "
          f"window: {' '.join(f'{np.exp(x / tokens):.2f}' for x in dense)}")
    for count in calib_counts:
        t1 = time.perf_counter()
        # the rows of the first `count` windows (each less its first SINK_POSITIONS)
        rows = [r[:count * (calib[0].shape[-1] - SINK_POSITIONS)] for r in all_rows]
        sensitivity = frontier.fisher_rows(model, calib[:count], rows) if args.sensitivity == "fisher" else None
        curves = allocation_curves(blocks, rows, m, progress=False, sensitivity=sensitivity) if m.greedy else None
        plans = calibrate_blocks(blocks, rows, m.name, args.sparsity, progress=False, curves=curves,
                                 sensitivity=sensitivity)
        frontier.install(model, plans)
        sparse = window_nll(model, held)
        frontier.install(model, None)
        held_eff = [float(np.mean([measured_effective(b, pl, hr[i]) for i, (b, pl) in enumerate(zip(blocks, plans))]))
                    for hr in held_rows] if hasattr(plans[0], "x_thr") else [float("nan")] * len(held)
        print(f"calibration {count} windows ({len(rows[0])} rows), {m.name}, {args.sensitivity}: calibrated "
              f"effective {np.mean([pl.effective for pl in plans]):.1%}, rotated blocks "
              f"{sum(getattr(pl, 'rotation', None) is not None for pl in plans)}")
        print("  held-out window:  " + " ".join(f"{i + 1:>7d}" for i in range(len(held))))
        print("  sparse perplexity:" + " ".join(f"{np.exp(x / tokens):7.2f}" for x in sparse))
        print("  vs dense:         " + " ".join(f"{np.exp((s - d) / tokens) - 1:+7.1%}" for s, d in zip(sparse, dense)))
        print("  effective there:  " + " ".join(f"{e:7.1%}" for e in held_eff))
        for k in eval_counts:
            ppl, base = np.exp(sparse[:k].sum() / (k * tokens)), np.exp(dense[:k].sum() / (k * tokens))
            print(f"  {k} held-out windows: dense {base:.3f}, sparse {ppl:.3f} ({ppl / base - 1:+.2%}), effective "
                  f"there {np.mean(held_eff[:k]):.1%}")
        print(f"  [{time.perf_counter() - t1:.0f} s, load average {os.getloadavg()[0]:.1f}]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
