"""A/B of predictor mode's CPU MLP step at Mistral-7B dims: select + listed kernels vs the scored kernel (issue 11).

    OPENBLAS_NUM_THREADS=1 python -m actsparse.benchmarks.scored_ab [--dtype float16] [--listed 0.21] [--active 0.10]
                                                                   [--repeats 31] [--small]

The `bound` predictor (passes/certified_gate.py) lists every active neuron and the inactive ones it cannot certify:
on part (a) of benchmarks/decode.py about 21% of the neurons, 10% active. Before this change predictor mode ran a
single-threaded select kernel (scores -> index list) and then the listed kernel; now one scored kernel
(codegen/kernels/scored_mlp.py) scans the scores itself, each task its own neurons. Both run here on the same fp16
weights (gate rows sign-flipped so exactly `--active` of the neurons fire for x, `benchmarks/ffn.py`) and the same
scores, interleaved, with the LLC evicted and the thread pool woken before every call (`FfnBench.time`:
weights from DRAM as in decoding), and are checked
against each other first. Also timed: the bound predictor's own score pass (the q8_0 copy of the gate through the
linear kernel's float path), for its share of the step, and the exact kernel (every gate row streamed) for the
GB/s a contiguous stream reaches here. Prints medians, the bytes each reads and the load average.

`--certified` adds the certified kernel (the score pass inside the MLP kernel, `scored_mlp.certified_gated_mlp`)
against the two calls it replaces, score pass + scored kernel, on the same list (its error-bound coefficients set
so the in-kernel scores list exactly the `--listed` neurons); `--block 0,128` times one certified kernel per
block size (neurons scored ahead of the gate rows read; 0: the kernel's default); `--int16 0,1` crosses them with
the score pass's x: float (0) or rounded to int16 on vpdpwssd (1, codegen/kernels/score_int16.py; hosts without
VNNI fall back to float and say so), interleaved, for the A/B that decides the target's `certified_scores` (the
schedule field `CpuSchedule.certified_scores`: "int16" or "float").
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--listed", type=float, default=0.21, help="share of neurons the scores list (default 0.21)")
    ap.add_argument("--active", type=float, default=0.10, help="share of neurons that fire (default 0.10)")
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--threads", type=int, default=0, help="threads (default: the cores)")
    ap.add_argument("--small", action="store_true", help="tiny dims: a smoke test")
    ap.add_argument("--ahead", default="0", help="comma list of 1 (gate rows prefetched whole when listed) / 0 (the "
                                                 "gate dots' own next-step prefetch), crossed with --block")
    ap.add_argument("--certified", action="store_true", help="also the certified kernel vs score pass + scored")
    ap.add_argument("--block", default="0", help="the certified kernel's neurons scored ahead, a comma list: one "
                                                 "runner each (0: the kernel's default)")
    ap.add_argument("--int16", default="", help="comma list of 0 (float x) / 1 (int16 x) for the certified kernel's "
                                                "score pass, crossed with --block (default: the kernel's default)")
    args = ap.parse_args(argv)
    if not 0 < args.active <= args.listed <= 1:
        ap.error("need 0 < --active <= --listed <= 1 (the scores list every active neuron)")
    import numpy as np

    from actsparse.benchmarks.ffn import FfnBench
    from actsparse.codegen.kernels.common import build_standalone
    from actsparse.codegen.kernels.gathered_mlp import sparse_gated_mlp_listed
    from actsparse.codegen.kernels.linear import linear
    from actsparse.codegen.kernels.predictor_kernels import select_active
    from actsparse.codegen.kernels.score_int16 import has_int16_scores
    from actsparse.codegen.kernels.scored_mlp import certified_gated_mlp, scored_gated_mlp
    from actsparse.codegen.kernels.sparse_mlp import sparse_gated_mlp
    from actsparse.ir.quant import quantize
    from actsparse.runtime.memory import host_tensor as tv

    d, n_ff = (256, 1024) if args.small else (4096, 14336)
    bench = FfnBench(d, n_ff, threads=args.threads or os.cpu_count())
    sched, target = bench.sched, bench.target
    wg, active = bench.gate_for(1.0 - args.active)
    rng = np.random.default_rng(2)
    listed = active.copy()
    extra = rng.choice(np.flatnonzero(~active), int(round((args.listed - args.active) * n_ff)), replace=False)
    listed[extra] = True
    scores = np.where(listed, 1.0, -1.0).astype("float32")[None]
    w = [tv(a.astype(args.dtype)) for a in (wg, bench.wu, bench.wd_t)]
    x, cutoff = tv(bench.x), tv(np.zeros(1, "float32"))
    kw = dict(gate_act="relu", up_act="identity", dtype=args.dtype, sched=sched)
    select_f, listed_f, scored_f = (select_active(n_ff, sched=sched), sparse_gated_mlp_listed(d, n_ff, **kw),
                                    scored_gated_mlp(d, n_ff, **kw))
    exact_f = sparse_gated_mlp(d, n_ff, **kw)
    float_sched = dataclasses.replace(sched, int8_dot="")  # the bound predictor's scores: x not rounded
    score_f = linear(d, n_ff, dtype="q8_0", sched=float_sched)
    int16s = [bool(int(i)) for i in args.int16.split(",")] if args.int16 else [None]
    if any(int16s) and not has_int16_scores(sched):
        print(f"# no int16 dot on this host ({sched.int8_dot or 'no VNNI'}): the int16 runners score on the float path")
    variants = [(int(b), bool(int(a)), i) for b in args.block.split(",") for a in args.ahead.split(",") for i in int16s]
    variants = variants if args.certified else []
    def scores_sched(int16):   # the schedule's score pass: the target's default (None), int16 or float x
        return sched if int16 is None else dataclasses.replace(sched, certified_scores="int16" if int16 else "float")

    cert_fs = [certified_gated_mlp(d, n_ff, block=b, ahead=a, **{**kw, "sched": scores_sched(i)})
               for b, a, i in variants]
    mods = {f: build_standalone(f, target) for f in (select_f, listed_f, scored_f, score_f, exact_f, *cert_fs)}
    q8 = quantize(wg, "q8_0")
    w8 = tv(q8.blob)
    # coefficients that make the in-kernel scores x·deq(w8) + ‖x‖·coef come out +1 where listed, -1 elsewhere
    approx = bench.x.astype("float64") @ q8.dequantize().astype("float64").T
    coef = tv(((np.where(listed, 1.0, -1.0) - approx[0]) / np.linalg.norm(bench.x)).astype("float32"))
    s, idx, count = tv(scores), tv(np.zeros((1, n_ff), "int32")), tv(np.zeros(1, "int32"))
    out_a, out_b, out_c, s_out = (tv(np.zeros((1, d), "float32")), tv(np.zeros((1, d), "float32")),
                                  tv(np.zeros((1, d), "float32")), tv(np.zeros((1, n_ff), "float32")))

    def before():
        mods[select_f](s, cutoff, idx, count)
        mods[listed_f](x, *w, idx, count, out_a)

    def after():
        mods[scored_f](x, *w, s, cutoff, out_b)

    def exact():
        mods[exact_f](x, *w, out_c)

    def score_pass():
        mods[score_f](x, w8, s_out)

    def score_then_scored():
        mods[score_f](x, w8, s_out)
        mods[scored_f](x, *w, s, cutoff, out_b)

    out_d = tv(np.zeros((1, d), "float32"))

    def certified(f):
        return lambda: mods[f](x, *w, w8, coef, cutoff, out_d)

    before()
    after()
    np.testing.assert_allclose(out_b.numpy(), out_a.numpy(), rtol=1e-4, atol=1e-4 * np.abs(out_a.numpy()).max())
    for f in cert_fs:
        certified(f)()
        np.testing.assert_allclose(out_d.numpy(), out_a.numpy(), rtol=1e-4, atol=1e-4 * np.abs(out_a.numpy()).max())
    row = d * np.dtype(args.dtype).itemsize
    mlp_bytes = n_ff * row * (args.listed + 2 * args.active)
    runners = {"select + listed (before)": (before, mlp_bytes), "scored (after)": (after, mlp_bytes),
               "bound scores: q8_0 linear, float x": (score_pass, n_ff * (d + d // 32 * 2)),
               "exact kernel (reference: every gate row streamed)": (exact, n_ff * row * (1 + 2 * args.active))}
    score_bytes = n_ff * (d + d // 32 * 2)
    if cert_fs:
        runners["score pass + scored (bound before)"] = (score_then_scored, score_bytes + mlp_bytes)
    for (b, a, i), f in zip(variants, cert_fs):
        xs = "int16 x" if scores_sched(i).certified_scores == "int16" else "float x"
        runners[f"certified: scores inside (block {b or 'default'}, {'rows ahead' if a else 'step prefetch'}, "
                f"{xs})"] = (certified(f), score_bytes + mlp_bytes)
    load0 = os.getloadavg()
    times = bench.time(runners, args.repeats)  # interleaved, LLC evicted and thread pool woken before each call
    print(f"# predictor mode's MLP at d {d}, n_ff {n_ff}, {args.dtype}: {args.listed:.0%} listed, {args.active:.0%} "
          f"active; {bench.threads} threads, {args.repeats} interleaved repeats, LLC evicted; {bench.cpu}")
    print("| runner | median ms | min ms | MB read | GB/s (median) | GB/s (min) |\n|---|---:|---:|---:|---:|---:|")
    for name, (_, nbytes) in runners.items():
        t = np.array(times[name])
        print(f"| {name} | {np.median(t) * 1e3:.3f} | {t.min() * 1e3:.3f} | {nbytes / 1e6:.1f} | "
              f"{nbytes / np.median(t) / 1e9:.1f} | {nbytes / t.min() / 1e9:.1f} |")
    (a, b), (a0, b0) = ([f(times[k]) for k in list(runners)[:2]] for f in (np.median, np.min))
    print(f"\nscored vs select + listed: {a / b:.3f}x faster (median), {a0 / b0:.3f}x (min); "
          f"load avg before {'/'.join(f'{v:.1f}' for v in load0)}, "
          f"after {'/'.join(f'{v:.1f}' for v in os.getloadavg())}")
    base = "score pass + scored (bound before)"
    for name in (k for k in runners if k.startswith("certified")):
        a, b = np.median(times[base]), np.median(times[name])
        print(f"{name} vs {base}: {a / b:.3f}x faster (median), {np.min(times[base]) / np.min(times[name]):.3f}x (min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
