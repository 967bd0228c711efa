# Session 19 throwaway probe (s19-thresh): kept in one commit for the record, removed in the next; see BENCHMARKS.md.
"""Throwaway: SCAP's scalar centre (one value per matrix: the median of all x entries) for x only, x-only sparsity
0.5, WINA threshold; raw basis, and centred before the default's pca turn (T fitted on the centred rows 0-2047)."""
import sys, glob, json, numpy as np
from safetensors.numpy import load_file
from actsparse.passes.block_weights import BlockWeights
from actsparse.passes.rotation import rotate_blocks
from actsparse.ir.activations import apply
model = sys.argv[1]
for f in glob.glob("/root/.cache/actsparse/mlp-inputs/*.json"):
    if json.load(open(f)).get("model") == model:
        rows = load_file(f[:-5] + ".safetensors")
W = load_file(f"/root/.cache/actsparse/models/{model}/model.safetensors")
act = "gelu_tanh" if model == "gemma3" else "silu"
def out(bw, x):
    return (apply(bw.gate_act, x @ bw.w_gate.T) * (x @ bw.w_up.T)) @ bw.w_down.T
def err(blk, cal, ev, c, q):
    # x' = (x - c)·T thresholded; a dropped entry reads as its centre's turned value (c·1)·T
    dense = out(blk, ev @ q); scale = np.square(dense).sum()
    cc = (np.full((1, cal.shape[1]), c, np.float32)) @ q
    s = np.abs(cal @ q - cc) * blk.x_norm
    t = np.quantile(s, 0.5) / blk.x_norm
    e = ev @ q
    xs = np.where(np.abs(e - cc) > t, e, cc)
    return np.square(out(blk, xs) - dense).sum() / scale
for b in ([0, 3, 6, 9, 12, 15] if model == "gemma3" else [0, 6, 12, 18, 24]):
    p = f"model.layers.{b}.mlp."
    bw = BlockWeights(W[p + "gate_proj.weight"], W[p + "up_proj.weight"], W[p + "down_proj.weight"], act)
    r = rows[str(b)]
    fit, cal, ev = r[:2048], r[2048:3072], r[3072:4096]
    c = float(np.median(fit))
    eye = np.eye(r.shape[1], dtype=np.float32)
    out_s = [f"centre {c:+.4f}"]
    out_s.append(f"raw: zero {err(bw, cal, ev, 0.0, eye):.4f} scalar {err(bw, cal, ev, c, eye):.4f}")
    for label, shift in (("pca", 0.0), ("pca of x-c", c)):
        turned = rotate_blocks([bw], [cal - shift], None, "fp32", "pca", fit_rows=[fit - shift])
        q, tb = turned[2][0], turned[0][0]
        out_s.append(f"{label}: zero {err(tb, cal, ev, 0.0, q):.4f} scalar {err(tb, cal, ev, c, q):.4f}")
    print(f"block {b}:", " | ".join(out_s), flush=True)
