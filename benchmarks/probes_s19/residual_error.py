# Session 19 throwaway probe (s19-thresh): kept in one commit for the record, removed in the next; see BENCHMARKS.md.
"""Throwaway: the greedy's error measured as the residual stream receives it (after the MLP's output norm where
one follows, relative to the residual's size), fed through the `sensitivity` channel of calibrate_blocks."""
import argparse, functools, os, sys, time
import numpy as np, torch
from actsparse.benchmarks import threshold_frontier as tf
from actsparse.passes import greedy_allocation as ga, sparsity_methods as sm
from actsparse.passes.calibration_data import cached_arrays, digest
from actsparse.passes.loss_sensitivity import cached_fisher_weights, decoder_mlps
from actsparse.ir.activations import apply

p = argparse.ArgumentParser()
p.add_argument("--model", default="gemma3"); p.add_argument("--s", type=float, default=0.5)
p.add_argument("--variants", default="default,resid,resid-span0")
p.add_argument("--error-tokens", type=int, default=256)
a = p.parse_args()
torch.set_num_threads(2)
POST = {"eps": None}
orig_error_curves = ga.error_curves

def error_curves(bw, rows, m, levels, weights=None):
    if weights is None or POST["eps"] is None and not POST.get("plain"):
        return orig_error_curves(bw, rows, m, levels, weights)
    eps = POST["eps"]
    def post(y):
        return y if eps is None else y / np.sqrt(np.mean(np.square(y), -1, keepdims=True) + eps)
    dense = post(ga.dense_out(bw, rows))
    def error(h):
        return float((weights * np.square(post(h @ bw.w_down.T) - dense)).sum())
    def parts(xs):
        g = apply(bw.gate_act, xs @ bw.w_gate.T)
        return g, g * apply(bw.up_act, xs @ bw.w_up.T)
    xsc = ga.channel_scores(rows, bw.x_norm, m.weighted)
    xc = []
    for lv in levels:
        thr, keep = ga.level_thresholds(xsc, bw.x_norm, m.weighted, lv, m.fixed_count)
        xc.append(error(parts(np.where(ga.keep_mask(rows, thr, keep), rows, 0).astype(np.float32))[1]))
    _, h = parts(rows)
    hsc = ga.channel_scores(h, bw.h_norm, m.weighted)
    hc = []
    for lv in levels:
        thr, keep = ga.level_thresholds(hsc, bw.h_norm, m.weighted, lv, m.fixed_count)
        hc.append(error(np.where(ga.keep_mask(h, thr, keep), h, 0).astype(np.float32)))
    return np.asarray(xc), np.asarray(hc)
ga.error_curves = error_curves

t0 = time.perf_counter()
model, tok = tf.load_model(a.model)
calib = tf.prose_windows(tok, "calib", 256, 16)
held = tf.prose_windows(tok, "eval", 256, 8)
key = digest(a.model, [w.tolist() for w in calib], 16 * 256)
cached = cached_arrays("mlp-inputs", key, lambda: {str(i): r for i, r in enumerate(tf.collect_rows(model, calib, 4096))})
rows = [cached[str(i)] for i in range(len(cached))]
held_rows = tf.collect_rows(model, held)
blocks = tf.block_weights(model)
fisher = [g[:len(r)] for g, r in zip(cached_fisher_weights(model, calib, progress=False), rows)]
layers = model.get_decoder().layers
# the residual stream each MLP's output is added to, and the norm after the MLP (if any)
resid = [[] for _ in layers]
hooks = []
for i, L in enumerate(layers):
    pre = getattr(L, "pre_feedforward_layernorm", None) or L.post_attention_layernorm
    hooks.append(pre.register_forward_pre_hook(lambda mod, args, i=i: resid[i].append(args[0].reshape(-1, args[0].shape[-1]).numpy().copy())))
with torch.no_grad():
    for w in (calib if 'resid' in a.variants else []):
        model(torch.from_numpy(w))
for h in hooks: h.remove()
resid = [np.concatenate(r)[:len(x)] if r else x for r, x in zip(resid, rows)]
postnorm = [getattr(L, "post_feedforward_layernorm", None) for L in layers]
gamma = [None if n is None else (1.0 + n.weight.detach().float().numpy()) for n in postnorm]
eps = None if postnorm[0] is None else postnorm[0].eps
d = rows[0].shape[1]
rw = []
for r, gm in zip(resid, gamma):
    inv = 1.0 / np.maximum(np.square(r).sum(1, keepdims=True), 1e-30)
    rw.append((inv * (np.ones((1, r.shape[1])) if gm is None else np.square(gm)[None])).astype(np.float32))
base = tf.perplexity(model, held)
print(f"{a.model}: dense {base:.3f}; setup {time.perf_counter()-t0:.0f}s; post-norm eps {eps}; load {os.getloadavg()[0]:.1f}", flush=True)
print("resid norms (median per block):", [round(float(np.median(np.linalg.norm(r, axis=1))), 1) for r in resid], flush=True)
orig_pool = sm.pooled_budgets
name = "rotated-wina-greedy"
curve_cache = {}
for v in a.variants.split(","):
    t1 = time.perf_counter()
    kind = "resid" if v.startswith("resid") else "fisher"
    weights = rw if kind == "resid" else fisher
    POST["eps"] = eps if kind == "resid" else None
    POST["plain"] = kind == "resid"
    sm.pooled_budgets = functools.partial(orig_pool, span=0.0) if v.endswith("span0") else orig_pool
    ck = (kind, a.error_tokens)
    if ck not in curve_cache:
        if kind == "fisher" and a.error_tokens == 256:
            curve_cache[ck] = tf.cached_curves((key, name, True), lambda: sm.allocation_curves(blocks, rows, sm.method(name), sensitivity=weights))
        else:
            curve_cache[ck] = tf.cached_curves((key, name, "s19", kind, a.error_tokens, eps),
                lambda: sm.allocation_curves(blocks, rows, sm.method(name), error_tokens=a.error_tokens, sensitivity=weights))
    tc = time.perf_counter() - t1
    plans = sm.calibrate_blocks(blocks, rows, name, a.s, progress=False, curves=curve_cache[ck], sensitivity=weights)
    tf.install(model, plans, None, blocks)
    ppl = tf.perplexity(model, held)
    tf.install(model, None)
    held_eff = [sm.measured_effective(b, pl, r) for b, pl, r in zip(blocks, plans, held_rows)]
    print(f"{a.model} {v} et={a.error_tokens} s={a.s}: delivered {np.mean(held_eff):.1%} calibrated {np.mean([pl.effective for pl in plans]):.1%} "
          f"ppl {ppl:.3f} ({ppl/base-1:+.2%}) [curves {tc:.0f}s, total {time.perf_counter()-t1:.0f}s, load {os.getloadavg()[0]:.1f}]", flush=True)
    print("  x/h per block:", " ".join(f"{pl.x_sparsity:.2f}/{pl.h_sparsity:.2f}{'r' if pl.rotation is not None else ''}" for pl in plans), flush=True)
    print("  held eff per block:", " ".join(f"{e:.3f}" for e in held_eff), flush=True)
