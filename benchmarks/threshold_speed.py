"""Input-sparse (TEAL/WINA) and CATS kernels on a SwiGLU FFN at Mistral-7B dims, batch 1, vs our dense kernel.

    python -m actsparse.benchmarks.threshold_speed [--sparsities 0.3,0.4,0.5,0.6,0.7] [--dtypes float32]
                                                   [--repeats 15] [--threads 2] [--small]

For each effective sparsity s: the input-sparse kernel with s of x's channels and s of h's entries below their
thresholds (it reads (1 - s) of every matrix), and CATS at neuron sparsity 1.5·s when that is < 1 (the same bytes
skipped: it reads every gate row). Thresholds are quantiles of this input's own scores, so exactly that share
is skipped. Also the rotated-* methods' cost at the same effective sparsity: the d×d rotation stored as the
pass stores it (`rotation.ROTATION_STORAGE`: q8_0; our linear kernel) plus the input-sparse kernel skipping s plus
the rotation's share of the bytes (a random orthogonal Q: the values do not change the speed); a rotation folded
into the residual stream (`actsparse.rotate_residual`) costs nothing per token: the plain input-sparse row. Outputs
are checked against numpy before timing. Timing as `ffn.py` (`FfnBench`): LLC evicted before every call, runners
interleaved, a read-sum probe alongside for the read limit.
"""

from __future__ import annotations

import os
import sys
import time

from .ffn import FfnBench, start_sweep, sweep_parser

DENSE = "actsparse dense"
INPUT = "input-sparse (TEAL)"
CATS = "threshold (CATS)"
ROTATED = "rotated input-sparse (Q + kernel)"
PROBE = "read-sum probe"


def runners(bench: FfnBench, s: float, dtype: str) -> dict:
    np = bench.np
    from actsparse.codegen.kernels.common import build_standalone
    from actsparse.codegen.kernels.input_sparse_mlp import input_sparse_gated_mlp
    from actsparse.codegen.kernels.linear import linear
    from actsparse.codegen.kernels.sparse_mlp import dense_gated_mlp
    from actsparse.codegen.kernels.threshold_mlp import threshold_gated_mlp
    from actsparse.ir.input_sparse import input_sparse_reference
    from actsparse.ir.quant import quantize
    from actsparse.passes.rotation import ROTATION_STORAGE
    from actsparse.runtime.memory import host_tensor as tv

    d, n_ff, wb = bench.d, bench.n_ff, 2 if dtype == "float16" else 4
    wg, wu, wd_t = (w.astype(dtype) for w in (bench.wg, bench.wu, bench.wd_t))
    wg_t, wu_t = np.ascontiguousarray(wg.T), np.ascontiguousarray(wu.T)
    x = bench.x
    x_thr = np.full(d, np.quantile(np.abs(x), s), np.float32)
    xs = np.where(np.abs(x) > x_thr, x, 0)
    g = xs @ wg_t.astype(np.float32)
    h = g / (1 + np.exp(-g)) * (xs @ wu_t.astype(np.float32))
    h_thr = np.full(n_ff, np.quantile(np.abs(h), s), np.float32)
    attrs = {"gate_act": "silu", "up_act": "identity", "criterion": "product"}
    ref = input_sparse_reference(x, wg_t, wu_t, wd_t, x_thr, h_thr, attrs)
    t0 = time.perf_counter()
    k_in = build_standalone(input_sparse_gated_mlp(d, n_ff, gate_act="silu", dtype=dtype, sched=bench.sched),
                            bench.target)
    k_dense = build_standalone(dense_gated_mlp(d, n_ff, gate_act="silu", dtype=dtype, sched=bench.sched), bench.target)
    cats_s = 1.5 * s
    a = bench.x @ wg.astype(np.float32).T
    a = a / (1 + np.exp(-a))
    t_cats = float(np.quantile(np.abs(a), cats_s)) if cats_s < 1 else None
    k_cats = None if t_cats is None else build_standalone(
        threshold_gated_mlp(d, n_ff, gate_act="silu", threshold=t_cats, dtype=dtype, sched=bench.sched), bench.target)
    bench.compile_s += time.perf_counter() - t0
    tx = tv(x)
    t_in = [tv(v) for v in (wg_t, wu_t, wd_t, x_thr, h_thr)]
    t_rows = [tv(v) for v in (wg, wu, wd_t)]
    outs = {k: tv(np.zeros((1, d), "float32")) for k in ("in", "dense", "cats")}
    kept_x, kept_h = int((np.abs(x) > x_thr).sum()), int((np.abs(h) > h_thr).sum())
    result = {
        DENSE: (lambda: k_dense(tx, *t_rows, outs["dense"]), 3 * n_ff * d * wb),
        INPUT: (lambda: k_in(tx, *t_in, outs["in"]), (2 * kept_x * n_ff + kept_h * d) * wb),
    }
    if k_cats is not None:
        kept = int((np.abs(a) > t_cats).sum())
        result[CATS] = (lambda: k_cats(tx, *t_rows, outs["cats"]), (n_ff + 2 * kept) * d * wb)
    # the rotation as the pass stores it (q8_0 rows of Qᵀ), its bytes paid from the budget
    q = np.linalg.qr(np.random.default_rng(0).standard_normal((d, d)))[0].astype(np.float16)
    q_stored = quantize(np.ascontiguousarray(q.T, np.float32), ROTATION_STORAGE["fp16" if wb == 2 else "fp32"])
    s_rot = s + q_stored.blob.nbytes / (3 * d * n_ff * wb)
    if s_rot < 1:
        q = q_stored.dequantize().T
        xr = x @ q
        xr_thr = np.full(d, np.quantile(np.abs(xr), s_rot), np.float32)
        xrs = np.where(np.abs(xr) > xr_thr, xr, 0)
        gr = xrs @ wg_t.astype(np.float32)
        hr = gr / (1 + np.exp(-gr)) * (xrs @ wu_t.astype(np.float32))
        hr_thr = np.full(n_ff, np.quantile(np.abs(hr), s_rot), np.float32)
        k_rot = build_standalone(linear(d, d, dtype=q_stored.layout, sched=bench.sched), bench.target)
        t_q, t_xr = tv(q_stored.blob), tv(np.zeros((1, d), "float32"))
        t_rot = [tv(v) for v in (wg_t, wu_t, wd_t, xr_thr, hr_thr)]
        outs["rot"] = tv(np.zeros((1, d), "float32"))
        kept_xr, kept_hr = int((np.abs(xr) > xr_thr).sum()), int((np.abs(hr) > hr_thr).sum())

        def rotated():
            k_rot(tx, t_q, t_xr)
            k_in(t_xr, *t_rot, outs["rot"])

        result[ROTATED] = (rotated, q_stored.blob.nbytes + (2 * kept_xr * n_ff + kept_hr * d) * wb)
    for fn, _ in result.values():
        fn()
    err = np.abs(outs["in"].numpy() - ref).max() / np.abs(ref).max()
    assert err < (1e-3 if dtype == "float32" else 3e-2), f"input-sparse {dtype} at {s:.0%}: rel err {err:.2e}"
    return result


def main(argv=None) -> int:
    sweep = start_sweep(sweep_parser(__doc__.split("\n\n")[0], "0.3,0.4,0.5,0.6,0.7"), argv)
    args, bench, probe = sweep.args, sweep.bench, sweep.probe
    np = bench.np
    rows = []
    for dtype in sweep.dtypes:
        for s in sweep.sparsities:
            found = runners(bench, s, dtype)
            found[PROBE] = probe
            med = {k: float(np.median(v)) for k, v in bench.time(found, args.repeats).items()}
            limit = probe[1] / med[PROBE]
            cats, rot = med.get(CATS), med.get(ROTATED)
            rows.append((dtype, s, limit / 1e9, med[DENSE] * 1e3, med[INPUT] * 1e3, med[DENSE] / med[INPUT],
                         100 * found[INPUT][1] / med[INPUT] / limit, None if cats is None else med[DENSE] / cats,
                         None if rot is None else med[DENSE] / rot, 1 / (1 - s)))
            print(f"{dtype} {s:.0%}: input-sparse {med[INPUT] * 1e3:.2f} ms | dense {med[DENSE] * 1e3:.2f} ms"
                  + ("" if cats is None else f" | CATS {cats * 1e3:.2f} ms")
                  + ("" if rot is None else f" | rotated {rot * 1e3:.2f} ms"), flush=True)
    print(f"\n**SwiGLU FFN d={bench.d}, n_ff={bench.n_ff}, batch 1, input sparsity (TEAL kernel)** — {bench.cpu}, "
          f"{args.threads} threads; LLC evicted before each call; median of {args.repeats}; load average "
          f"{sweep.load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print("| weights | effective sparsity | read limit GB/s | dense ms | input-sparse ms | speed-up vs dense "
          "| % of read limit | CATS at same bytes: speed-up | rotated at same bytes: speed-up | byte ideal |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for dt, s, lim, dms, ims, up, pct, cats, rot, ideal in rows:
        cats_cell = "-" if cats is None else f"{cats:.2f}x"
        rot_cell = "-" if rot is None else f"{rot:.2f}x"
        print(f"| {dt} | {s:.0%} | {lim:.1f} | {dms:.2f} | {ims:.2f} | {up:.2f}x | {pct:.0f}% | {cats_cell} | "
              f"{rot_cell} | {ideal:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
