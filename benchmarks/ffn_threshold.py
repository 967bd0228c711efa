"""Threshold mode (training-free, CATS) on a SwiGLU FFN at Mistral-7B dims, batch 1: the threshold kernel against
torch dense SwiGLU fp32 and our own dense SwiGLU kernel, measured in the same runs. One markdown table on stdout.

    python -m actsparse.benchmarks.ffn_threshold [--sparsities 0.5,0.7,0.9] [--dtypes float32,float16]
                                                 [--repeats 15] [--threads 2] [--small]

For each sparsity s the threshold t is the s-quantile of |silu(gate)| for the input (what calibration picks for
a target s), so exactly that share of neurons is dropped; the kernel reads every gate row and the up and down
rows of the kept neurons: (1 + 2 (1 - s)) / 3 of the dense bytes. Outputs are checked against numpy's masked
computation before timing. Same timing as `ffn.py` (`FfnBench`): LLC evicted before every call, runners
interleaved, a 1 GB read-sum probe alongside for the read limit.
"""

from __future__ import annotations

import os
import sys
import time

from .ffn import FfnBench, start_sweep, sweep_parser
from .tables import markdown_table

TORCH = "torch dense SwiGLU (fp32)"
DENSE = "actsparse dense SwiGLU"
THRESHOLD = "actsparse threshold (CATS)"
PROBE = "read-sum probe"


def runners(bench: FfnBench, sparsity: float, dtype: str) -> tuple[dict, float]:
    """{name: (fn, bytes it must read)} and the threshold, outputs checked against numpy first."""
    np, torch = bench.np, bench.torch
    import torch.nn.functional as F

    from actsparse.codegen.kernels.common import build_standalone
    from actsparse.codegen.kernels.sparse_mlp import dense_gated_mlp
    from actsparse.codegen.kernels.threshold_mlp import threshold_gated_mlp
    from actsparse.runtime.memory import host_tensor as tv

    d, n_ff, wbytes = bench.d, bench.n_ff, 2 if dtype == "float16" else 4
    ws = [w.astype(dtype) for w in (bench.wg, bench.wu, bench.wd_t)]
    x64 = bench.x.astype(np.float64)
    g = x64 @ ws[0].astype(np.float64).T
    a = g / (1 + np.exp(-g))
    t = float(np.quantile(np.abs(a), sparsity))
    kept = np.abs(a) > t
    h = np.where(kept, a, 0) * (x64 @ ws[1].astype(np.float64).T)
    ref = h @ ws[2].astype(np.float64)
    t0 = time.perf_counter()
    k_thr = build_standalone(threshold_gated_mlp(d, n_ff, gate_act="silu", threshold=t, dtype=dtype,
                                                 sched=bench.sched), bench.target)
    k_dense = build_standalone(dense_gated_mlp(d, n_ff, gate_act="silu", dtype=dtype, sched=bench.sched),
                               bench.target)
    bench.compile_s += time.perf_counter() - t0
    tx, tw = tv(bench.x), [tv(w) for w in ws]
    outs = {k: tv(np.zeros((1, d), "float32")) for k in ("thr", "dense")}
    xt, wgt, wut, wdt = (torch.from_numpy(v) for v in (bench.x, bench.wg, bench.wu, bench.wd))

    def torch_dense():
        with torch.no_grad():
            return F.linear(F.silu(F.linear(xt, wgt)) * F.linear(xt, wut), wdt)

    result = {
        TORCH: (torch_dense, 3 * n_ff * d * 4),
        DENSE: (lambda: k_dense(tx, *tw, outs["dense"]), 3 * n_ff * d * wbytes),
        THRESHOLD: (lambda: k_thr(tx, *tw, outs["thr"]), (n_ff + 2 * int(kept.sum())) * d * wbytes),
    }
    for fn, _ in result.values():
        fn()
    err = np.abs(outs["thr"].numpy() - ref).max() / np.abs(ref).max()
    assert err < (1e-3 if dtype == "float32" else 3e-2), f"threshold {dtype} at {sparsity:.0%}: rel err {err:.2e}"
    return result, t


def main(argv=None) -> int:
    sweep = start_sweep(sweep_parser(__doc__.split("\n\n")[0], "0.5,0.7,0.9"), argv)
    args, bench, probe, load_before = sweep.args, sweep.bench, sweep.probe, sweep.load_before
    np, d, n_ff = bench.np, bench.d, bench.n_ff
    rows = []
    for dtype in sweep.dtypes:
        for sparsity in sweep.sparsities:
            try:
                found, t = runners(bench, sparsity, dtype)
            except AssertionError as err:
                print(f"MISMATCH: {err}")
                return 1
            found[PROBE] = probe
            med = {k: float(np.median(v)) for k, v in bench.time(found, args.repeats).items()}
            limit = probe[1] / med[PROBE]
            thr_ms, thr_bytes = med[THRESHOLD] * 1e3, found[THRESHOLD][1]
            rows.append((dtype, sparsity, t, limit / 1e9, med[TORCH] * 1e3, med[DENSE] * 1e3, thr_ms,
                         100 * thr_bytes / med[THRESHOLD] / limit, med[TORCH] / med[THRESHOLD],
                         med[DENSE] / med[THRESHOLD], 3 / (1 + 2 * (1 - sparsity))))
            print(f"{dtype} {sparsity:.0%}: t={t:.4f} threshold {thr_ms:.2f} ms | dense {med[DENSE] * 1e3:.2f} ms | "
                  f"torch {med[TORCH] * 1e3:.2f} ms", flush=True)

    print(f"\n**SwiGLU FFN d={d}, n_ff={n_ff}, batch 1, threshold mode (CATS)** — {bench.cpu}, {args.threads} "
          f"threads; LLC evicted before each call; median of {args.repeats}; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after\n")
    print(markdown_table(
        ["weights", "sparsity", "read limit GB/s", "torch dense fp32 ms", "actsparse dense ms", "threshold ms",
         "threshold % limit", "vs torch", "vs our dense", "byte ideal vs dense"],
        [[dt, f"{s:.0%}", f"{lim:.1f}", f"{tms:.2f}", f"{dms:.2f}", f"{thr:.2f}", f"{pct:.0f}%", f"{vt:.2f}x",
          f"{vd:.2f}x", f"{ideal:.2f}x"] for dt, s, _, lim, tms, dms, thr, pct, vt, vd, ideal in rows], right_from=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
