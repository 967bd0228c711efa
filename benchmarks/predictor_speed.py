"""Predictor mode at Mistral-7B dims through `actsparse.compile()`: predictor (its own cost included) vs exact vs
dense, all compiled from one graph in the same run, batch 1, fp32. One markdown table on stdout.

    python -m actsparse.benchmarks.predictor_speed [--kinds sign,svd,quant] [--active 0.1] [--recall 0.95]
        [--budget 0.03] [--calib-tokens 512] [--repeats 15] [--small] [--dtype float32|float16]

Synthetic weights (speed depends on sizes and on how many neurons are predicted, not on what the weights mean):
one ReGLU-family block with a FATReLU gate whose threshold leaves `--active` of the neurons firing per token, and
a gate matrix with low-rank structure plus noise (W_gate = U·Vᵀ/√r + 0.3·noise, r = 128) so that predicting
from x is possible, as it is in trained models; x ~ N(0, I). Each predictor is fitted by compile() on
`--calib-tokens` calibration tokens (cutoff at `--recall`), then timed on held-out tokens with the last-level cache
evicted before every call (weights come from DRAM), the three modules interleaved. The lowrank predictor costs
what svd costs at the same rank (the same two linears, plus a relu and a bias); pass `--kinds lowrank` to train
one (minutes at these dims on 2 cores). quant reads a q4_0 shadow of the gate (4.7% of the fp32 MLP's bytes) on the
float-x linear kernel.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

MISTRAL, SMALL = (4096, 14336), (256, 1024)

TEXT = """graph @main(%x: f32[1,seq,{d}]) {{
  @mlp.down.weight : {dt}[{d},{n}]
  @mlp.gate.weight : {dt}[{n},{d}]
  @mlp.up.weight : {dt}[{n},{d}]
  %0 = linear(%x, @mlp.gate.weight) : f32[1,seq,{n}]  # mlp.gate
  %1 = fatrelu(%0) {{'threshold': {t}}} : f32[1,seq,{n}]  # mlp
  %2 = linear(%x, @mlp.up.weight) : f32[1,seq,{n}]  # mlp.up
  %3 = mul(%1, %2) : f32[1,seq,{n}]  # mlp
  %4 = linear(%3, @mlp.down.weight) : f32[1,seq,{d}]  # mlp.down
  return %4
}}
"""


def synthetic_block(d: int, n: int, active: float, dtype: str, seed: int = 0):
    import numpy as np
    from scipy.stats import norm

    from actsparse.ir import parse_graph

    rng = np.random.default_rng(seed)
    r = 128
    u = rng.standard_normal((n, r)).astype(np.float32)
    v = rng.standard_normal((d, r)).astype(np.float32)
    gate = (u @ v.T / np.sqrt(r) + 0.3 * rng.standard_normal((n, d), dtype=np.float32)) / np.sqrt(d)
    # for x ~ N(0, I) the gate pre-activation of row j is N(0, |w_j|^2): cut at the (1 - active) quantile
    threshold = float(norm.ppf(1 - active) * np.sqrt((gate.astype(np.float64) ** 2).sum(1).mean()))
    np_dtype = np.float16 if dtype == "float16" else np.float32
    weights = {"mlp.gate.weight": gate.astype(np_dtype),
               "mlp.up.weight": (rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d)).astype(np_dtype),
               "mlp.down.weight": (rng.standard_normal((d, n), dtype=np.float32) / np.sqrt(n)).astype(np_dtype)}
    dt = "f16" if dtype == "float16" else "f32"
    return parse_graph(TEXT.format(d=d, n=n, t=threshold, dt=dt), weights), rng


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default="sign,svd,quant")
    parser.add_argument("--active", type=float, default=0.1)
    parser.add_argument("--recall", type=float, default=0.95)
    parser.add_argument("--budget", type=float, default=0.03)
    parser.add_argument("--calib-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--small", action="store_true", help=f"d, n_ff = {SMALL} (a quick check)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy as np

    import actsparse
    from actsparse.runtime.timing import CacheEvictor
    from actsparse.targets import x86

    d, n = SMALL if args.small else MISTRAL
    load_before = os.getloadavg()[0]
    graph, rng = synthetic_block(d, n, args.active, args.dtype)
    calibration = [(rng.standard_normal((1, 64, d)).astype(np.float32),) for _ in range(args.calib_tokens // 64)]
    held_out = [rng.standard_normal((1, 1, d)).astype(np.float32) for _ in range(8)]
    modules = {mode: actsparse.compile(graph, (held_out[0],), mode=mode) for mode in ("dense", "exact")}
    dense_out = [modules["dense"](x) for x in held_out]
    evict = CacheEvictor(x86.host().llc_bytes or 32 << 20)   # 3x the LLC, written and read before each call
    rows = []
    # one predictor module at a time (each holds its own copy of the weights), timed against dense and exact
    # interleaved, so every row's ratios come from the same minutes
    for kind in args.kinds.split(","):
        start = time.perf_counter()
        cm = actsparse.compile(graph, (np.concatenate(held_out, 1),), mode="predictor", calibration=calibration,
                               predictor=kind, recall=args.recall, predictor_budget=args.budget)
        seconds = time.perf_counter() - start
        print(cm.report, flush=True)
        modules["predictor"] = cm
        for name, m in modules.items():   # every module computes what its graph says (exact equals dense)
            errors = [np.linalg.norm(m(x) - y) / np.linalg.norm(y) for x, y in zip(held_out, dense_out)]
            print(f"{name} ({kind} round): outputs vs dense, median relative error {np.median(errors):.2e}")
            if name == "exact":
                assert max(errors) < 1e-4, "exact mode differs from dense"
        samples = {name: [] for name in modules}
        for i in range(args.repeats + 2):
            x = held_out[i % len(held_out)]
            for name, m in modules.items():
                evict()
                start = time.perf_counter()
                m(x)
                if i >= 2:
                    samples[name].append(time.perf_counter() - start)
        med = {name: float(np.median(v)) * 1e3 for name, v in samples.items()}
        rows.append((kind, med, cm.report.blocks[0], seconds))
        del modules["predictor"], cm
    load_after = os.getloadavg()[0]
    print(f"\n**Predictor mode through compile(), d={d}, n_ff={n}, {args.dtype}, batch 1, {args.active:.0%} active "
          f"(FATReLU)** — {x86.host().description}; LLC evicted before each call; median of {args.repeats}; "
          f"target recall {args.recall:.0%}; load average {load_before:.1f} before, {load_after:.1f} after\n")
    print("| predictor | dense ms | exact ms | predictor ms | vs dense | vs exact | recall (held-out) "
          "| predicted active | predictor bytes % | rank | compile s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, med, b, secs in rows:
        ms = med["predictor"]
        print(f"| {kind} | {med['dense']:.2f} | {med['exact']:.2f} | {ms:.2f} | {med['dense'] / ms:.2f}x "
              f"| {med['exact'] / ms:.2f}x | {b.recall:.1%} | {1 - b.predicted_sparsity:.1%} "
              f"| {b.predictor_bytes_pct:.1f}% | {b.rank or '-'} | {secs:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
