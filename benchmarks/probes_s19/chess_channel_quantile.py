# Session 19 throwaway probe (s19-thresh): kept in one commit for the record, removed in the next; see BENCHMARKS.md.
"""Throwaway: block-output error with only x sparsified at 0.5: one WINA threshold vs per-channel quantiles (CHESS-
style), raw and turned (pca, fitted on rows 0-2047; thresholds on 2048-3071; error on 3072-4095)."""
import sys, numpy as np
from safetensors.numpy import load_file
from actsparse.passes.block_weights import BlockWeights
from actsparse.passes.rotation import rotate_blocks
from actsparse.ir.activations import apply
import glob, json
model = sys.argv[1]
for f in glob.glob("/root/.cache/actsparse/mlp-inputs/*.json"):
    if json.load(open(f)).get("model") == model:
        rows = load_file(f[:-5] + ".safetensors")
from safetensors.numpy import load_file as lf
W = lf(f"/root/.cache/actsparse/models/{model}/model.safetensors")
act = "gelu_tanh" if model == "gemma3" else "silu"
def out(bw, x):
    return (apply(bw.gate_act, x @ bw.w_gate.T) * (x @ bw.w_up.T)) @ bw.w_down.T
for b in [0, 3, 6, 9, 12, 15] if model == "gemma3" else [0, 6, 12, 18, 24]:
    p = f"model.layers.{b}.mlp."
    bw = BlockWeights(W[p + "gate_proj.weight"], W[p + "up_proj.weight"], W[p + "down_proj.weight"], act)
    r = rows[str(b)]
    fit, cal, ev = r[:2048], r[2048:3072], r[3072:4096]
    turned = rotate_blocks([bw], [cal], None, "fp32", "pca", fit_rows=[fit])
    q = turned[2][0]
    res = []
    for name, blk, c, e in (("raw", bw, cal, ev), ("pca", turned[0][0], turned[1][0], ev @ q if q is not None else ev)):
        dense = out(blk, e); scale = np.square(dense).sum()
        s = np.abs(c) * blk.x_norm
        t = np.quantile(s, 0.5) / blk.x_norm
        err_w = np.square(out(blk, np.where(np.abs(e) > t, e, 0)) - dense).sum() / scale
        tc = np.quantile(np.abs(c), 0.5, axis=0)
        err_c = np.square(out(blk, np.where(np.abs(e) > tc, e, 0)) - dense).sum() / scale
        res.append(f"{name}: wina {err_w:.4f} (kept {np.mean(np.abs(e) > t):.2f}) per-channel {err_c:.4f} (kept {np.mean(np.abs(e) > tc):.2f})")
    print(f"block {b}:", " | ".join(res), flush=True)
