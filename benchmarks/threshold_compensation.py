"""Error compensation (passes/error_compensation.py) of the default threshold plan, measured on held-out text.

    python -m actsparse.benchmarks.threshold_compensation [--model gemma3] [--sparsities 0.4,0.5]
        [--variants none,x,h,both] [--calib-windows 16] [--eval-windows 8] [--method rotated-wina-greedy]

Calibrates as threshold_frontier does (same text, windows, cached rows, Fisher weights and error curves), then per
variant fits each block's compensation on the calibration rows (never the held-out windows) and reports the
delivered sparsity (held-out text) and the perplexity. Variants: `none` (the plan as it is), a side of SIDES
(fitted on the dense model's rows), `<side>-nobias` (no down bias), `<side>-keeph` (the plan's h thresholds
kept after an x correction), `<side>-seq` (block by block on the inputs of the model whose earlier blocks are
already sparsified and compensated, against the dense block on those inputs, as GPTQ propagates),
`<side>-seqglobal` (the same inputs, against the dense *model's* block output),
`lowrank<r>` (R-Sparse: a rank-r correction (x − x_sparse)·R·L of the gate/up pre-activations, fitted on the
calibration rows; its bytes paid: the plan asks s + their share, the delivered sparsity is net of them; `lowrank0`
is the control: the plan through the same forward) and `lowrank<r>free` (the same at s, the factors not paid).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import numpy as np

from . import threshold_frontier as frontier


class _Stop(Exception):
    pass


def block_inputs(model, windows, index: int, max_tokens: int) -> np.ndarray:
    """Block `index`'s MLP input rows over the windows as the model is now (forward stopped there)."""
    import torch

    rows = []

    def grab(module, args):
        rows.append(args[0].reshape(-1, args[0].shape[-1]).numpy().copy())
        raise _Stop

    hook = frontier.mlps(model)[index].register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            for w in windows:
                try:
                    model(torch.from_numpy(w))
                except _Stop:
                    pass
    finally:
        hook.remove()
    return np.concatenate(rows)[:max_tokens].astype(np.float32)


def compensate(model, blocks, plans, rows, calib, variant: str, weighted: bool, max_tokens: int) -> list:
    """Every block's plan with its compensation for `variant` (module docstring)."""
    from actsparse.passes.error_compensation import fit_compensation
    from actsparse.passes.input_thresholds import dense_out

    side, _, how = variant.partition("-")
    bias = how != "nobias"
    if how not in ("seq", "seqglobal"):
        return [fit_compensation(b, p, r, side, weighted, bias, reset_h=how != "keeph")
                for b, p, r in zip(blocks, plans, rows)]
    done: list = []
    for i, (b, p) in enumerate(zip(blocks, plans)):
        frontier.install(model, done + [None] * (len(plans) - len(done)), None, blocks)
        sparse_rows = block_inputs(model, calib, i, max_tokens)
        frontier.install(model, None)
        n = min(len(sparse_rows), len(rows[i]))
        targets = dense_out(b, rows[i][:n]) if how == "seqglobal" else None
        done.append(fit_compensation(b, p, sparse_rows[:n], side, weighted, bias, targets))
    return done


def install_lowrank(model, blocks, plans, factors, kept: list) -> None:
    """Every MLP's forward as input_sparse_torch plus the low-rank correction (x − x_sparse)·R·L of the gate/up
    pre-activations (R-Sparse); `kept` collects per block [tokens, kept x entries, kept h entries]."""
    import torch

    from .quant_quality import stored

    def forward(x, i, plan, block, r, lo, q, w_gate, w_up, w_down, x_thr, h_thr):
        x = x @ q if q is not None else x
        keep_x = x.abs() > x_thr
        xs = torch.where(keep_x, x, 0)
        correction = ((x - xs) @ r) @ lo
        g = xs @ w_gate.T + correction[..., :w_gate.shape[0]]
        u = xs @ w_up.T + correction[..., w_gate.shape[0]:]
        a = frontier.mlps(model)[i].act_fn(g)
        h = a * u
        keep_h = (a if plan.criterion == "gate" else h).abs() > h_thr
        kept[i][0] += keep_x.shape[:-1].numel()
        kept[i][1] += int(keep_x.sum())
        kept[i][2] += int(keep_h.sum())
        return torch.where(keep_h, h, 0) @ w_down.T

    for i, (m, b, p, (r, lo)) in enumerate(zip(frontier.mlps(model), blocks, plans, factors)):
        # Q as the kernels read it (q8_0), as frontier.install stores it
        t = None if p.rotation is None else stored(torch.from_numpy(p.rotation.astype(np.float32)).T, "int8").T
        turn = None if p.rotation is None else torch.from_numpy((p.rotation if p.turn is None else p.turn)
                                                                .astype(np.float32))
        w_gate, w_up = (torch.from_numpy(w) for w in (b.w_gate, b.w_up))
        if turn is not None:
            w_gate, w_up = w_gate @ turn, w_up @ turn
        m.forward = functools.partial(forward, i=i, plan=p, block=b, r=torch.from_numpy(r), lo=torch.from_numpy(lo),
                                      q=t, w_gate=w_gate, w_up=w_up, w_down=torch.from_numpy(b.w_down),
                                      x_thr=torch.from_numpy(p.x_thr), h_thr=torch.from_numpy(p.h_thr))


def lowrank_point(model, blocks, rows, held, s, rank, free, calibrate) -> tuple[float, float, float]:
    """(delivered effective sparsity net of the factors' bytes, perplexity, share): the plan asked s + the
    factors' share (`free`: s, the factors' bytes not counted), R/L fitted on the calibration rows, measured on
    the held-out windows."""
    from actsparse.passes.error_compensation import fit_lowrank, lowrank_share

    share = 0.0 if free else lowrank_share(blocks[0], rank)
    plans = calibrate(s + share)
    factors = [fit_lowrank(b, p, r, rank) for b, p, r in zip(blocks, plans, rows)]
    kept = [[0, 0, 0] for _ in blocks]
    install_lowrank(model, blocks, plans, factors, kept)
    ppl = frontier.perplexity(model, held)
    frontier.install(model, None)
    delivered = []
    for b, p, (tokens, kx, kh) in zip(blocks, plans, kept):
        share_x, share_h = b.byte_shares()
        delivered.append(share_x * (1 - kx / (tokens * b.w_gate.shape[1])) +
                         share_h * (1 - kh / (tokens * b.w_gate.shape[0])) - p.rotation_share - share)
    return float(np.mean(delivered)), ppl, share


def main(argv=None) -> int:
    import torch

    from actsparse.passes.calibration_data import cached_arrays, digest
    from actsparse.passes.error_compensation import output_error
    from actsparse.passes.loss_sensitivity import cached_fisher_weights
    from actsparse.passes.sparsity_methods import allocation_curves, calibrate_blocks, measured_effective, method

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma3")
    p.add_argument("--method", default="rotated-wina-greedy")
    p.add_argument("--sparsities", default="0.4,0.5")
    p.add_argument("--variants", default="none,x,h,both")
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--calib-windows", type=int, default=16)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = frontier.load_model(args.model)
    calib = frontier.prose_windows(tok, "calib", args.window, args.calib_windows)
    held = frontier.prose_windows(tok, "eval", args.window, args.eval_windows)
    max_tokens = args.calib_windows * args.window
    key = digest(args.model, [w.tolist() for w in calib], max_tokens)
    cached = cached_arrays("mlp-inputs", key, lambda: {str(i): r for i, r in enumerate(
        frontier.collect_rows(model, calib, max_tokens))}, {"model": args.model})
    rows = [cached[str(i)] for i in range(len(cached))]
    held_rows = frontier.collect_rows(model, held)
    blocks = frontier.block_weights(model)
    weights = [g[:len(r)] for g, r in zip(cached_fisher_weights(model, calib, progress=False), rows)]
    m = method(args.method)
    curves = frontier.cached_curves((key, args.method, True),
                                    lambda: allocation_curves(blocks, rows, m, sensitivity=weights)) \
        if m.greedy else None
    base = frontier.perplexity(model, held)
    print(f"{args.model}: dense {base:.3f}", file=sys.stderr, flush=True)
    print("| model | asked | variant | delivered (held-out) | calib output error (mean over blocks) | perplexity "
          "| vs dense |\n|---|---:|---|---:|---:|---:|---:|")
    for s in (float(x) for x in args.sparsities.split(",")):
        plans = calibrate_blocks(blocks, rows, args.method, s, progress=False, curves=curves, sensitivity=weights)
        for variant in args.variants.split(","):
            t0 = time.perf_counter()
            if variant.startswith("lowrank"):
                rank, free = int(variant[7:].removesuffix("free")), variant.endswith("free")
                eff, ppl, share = lowrank_point(model, blocks, rows, held, s, rank, free, functools.partial(
                    calibrate_blocks, blocks, rows, args.method, progress=False, curves=curves, sensitivity=weights))
                print(f"| {args.model} | {s:.2f} | {variant} (factors {share:.1%} of the bytes paid) | {eff:.1%} | "
                      f"- | {ppl:.3f} | {100 * (ppl / base - 1):+.2f}% |", flush=True)
                print(f"  [{time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f}]", file=sys.stderr)
                continue
            chosen = plans if variant == "none" else compensate(model, blocks, plans, rows, calib, variant,
                                                                m.weighted, max_tokens)
            scales = [np.concatenate([s for s in (c.compensation.gate_scale, c.compensation.up_scale,
                                                  c.compensation.down_scale) if s is not None])
                      for c in chosen if getattr(c, "compensation", None) is not None]
            if scales:
                q = np.quantile(np.concatenate(scales), [0, 0.01, 0.5, 0.99, 1])
                print(f"  {variant}: scales min/1%/median/99%/max " + " ".join(f"{v:.3f}" for v in q),
                      file=sys.stderr, flush=True)
            error = float(np.mean([output_error(b, c, r[:1024]) for b, c, r in zip(blocks, chosen, rows)]))
            frontier.install(model, chosen, None, blocks)
            ppl = frontier.perplexity(model, held)
            frontier.install(model, None)
            eff = float(np.mean([measured_effective(b, c, r) for b, c, r in zip(blocks, chosen, held_rows)]))
            print(f"| {args.model} | {s:.2f} | {variant} | {eff:.1%} | {error:.4f} | {ppl:.3f} | "
                  f"{100 * (ppl / base - 1):+.2f}% |", flush=True)
            print(f"  [{time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f}]", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
