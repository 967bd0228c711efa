"""One MoE layer, 8 experts, top-2, batch 1 (a decoding step): routed vs all-experts, and expert x neuron sparsity.

    python -m actsparse.benchmarks.moe [--n-ff 3584] [--experts 8] [--top-k 2] [--sparsity 0.9]
                                       [--repeats 15] [--threads 2] [--plain]

Mixtral's dims are d = 4096, n_ff = 14336: eight fp32 experts hold 5.6 GB. The default n_ff is a quarter of that
(3584, 1.4 GB for the eight experts) to stay within a shared 24 GB machine; `--n-ff 14336` runs the real dims.
ReGLU experts with synthetic weights: for the token, exactly `sparsity` of each expert's gates are <= 0.

Measured (weights from DRAM: the last-level cache is evicted before every timed call; kernels interleaved):
  all-experts dense   what actsparse compiled MoE layers to before route-moe: every expert's dense kernel on the
                      token, each output weighted by its routing weight (0 for the six unchosen experts)
  routed dense        the routed_moe kernel, dense bodies: only the two chosen experts' rows are read
  routed dense biased the routed_moe kernel with gate/up/down biases (gpt-oss's experts), dense bodies
  routed exact        the routed_moe kernel, exact bodies: the chosen experts' gate rows, then the up and down rows
                      of their active neurons only (TurboSparse-Mixtral's expert x neuron sparsity)
`--plain`: experts without a gate, relu²(x W1ᵀ) W2 (Nemotron-H's), in the form exact mode runs them (W1 the gate,
up factor `unit`: no up rows read); the all-experts form is then every expert's exact kernel on the token (what
they compiled to before route-moe took this form), and the routed dense / biased forms are left out.
Each output is checked against the op's numpy reference (ir/moe.py) first. Printed: CPU, load average (the figures
are only comparable within one run on a shared machine), medians, bytes read, ratios; then a markdown table.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d", type=int, default=4096)
    p.add_argument("--n-ff", type=int, default=3584, help="per expert (Mixtral: 14336, 5.6 GB for 8 experts)")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--sparsity", type=float, default=0.9, help="share of each expert's neurons inactive")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--plain", action="store_true", help="relu² experts without a gate (Nemotron-H), as exact runs them")
    args = p.parse_args(argv)
    import numpy as np
    import tvm

    from actsparse.benchmarks.ffn import FfnBench
    from actsparse.codegen.kernels.common import build_standalone
    from actsparse.codegen.kernels.routed_moe import absent_biases, routed_moe
    from actsparse.codegen.kernels.sparse_mlp import dense_gated_mlp, sparse_gated_mlp
    from actsparse.ir.arrays import aligned_contiguous
    from actsparse.ir.moe import routed_moe_ref
    from actsparse.runtime.memory import host_tensor as tv

    d, n, E, k = args.d, args.n_ff, args.experts, args.top_k
    bench = FfnBench(d, 8, threads=args.threads)  # its schedule, target, cache evictor and interleaved timing
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, d)).astype("float32")
    w = {}
    for name in ("gate", "up", "down_t"):  # float32 from the start, aligned: the experts' slices are views, not copies
        w[name] = aligned_contiguous(rng.standard_normal((E * n, d), dtype=np.float32))
        w[name] *= np.float32(1 / np.sqrt(d))
    chosen = np.sort(rng.choice(E, k, replace=False))
    route_i = chosen[None].astype("int64")
    route_w = rng.random((1, k)).astype("float32")
    route_w /= route_w.sum()
    n_active = int(round((1 - args.sparsity) * n))
    for e in range(E):  # exactly n_active gates > 0 per expert for x
        rows = slice(e * n, (e + 1) * n)
        active = np.zeros(n, bool)
        active[rng.choice(n, n_active, replace=False)] = True
        w["gate"][rows] *= np.where(active == (w["gate"][rows] @ x[0] > 0), 1, -1).astype("float32")[:, None]
    act = "relu2" if args.plain else "relu"
    up_act = "unit" if args.plain else "identity"
    if args.plain:  # the up input is the gate's own rows (sparsify-exact's form), never read for `unit`
        w["up"] = w["gate"]
    attrs = {"experts": E, "gate_act": act, "up_act": up_act, "threshold": 0.0}
    expected = routed_moe_ref(x, w["gate"], w["up"], w["down_t"], route_w, route_i, attrs, {})
    biases = [rng.standard_normal(E * n).astype("float32") * 0.1 for _ in range(2)] + [
        rng.standard_normal((E, d)).astype("float32") * 0.1]
    expected_biased = routed_moe_ref(x, w["gate"], w["up"], w["down_t"], route_w, route_i, *biases,
                                     {**attrs, "bias": True, "mode": "dense"}, {})

    t0 = time.perf_counter()
    kw = dict(gate_act=act, up_act=up_act, dtype="float32", sched=bench.sched)
    one_expert = sparse_gated_mlp(d, n, **kw) if args.plain else dense_gated_mlp(d, n, **kw)
    dense = build_standalone(one_expert, bench.target)
    routed = {exact: build_standalone(routed_moe(d, n, E, exact=exact, **kw), bench.target) for exact in (False, True)}
    biased = build_standalone(routed_moe(d, n, E, exact=False, bias=True, **kw), bench.target)
    compile_s = time.perf_counter() - t0

    tx, t_rw, t_ri = tv(x), tv(route_w), tv(route_i)
    per_expert = [[tv(w[name][e * n:(e + 1) * n]) for name in ("gate", "up", "down_t")] for e in range(E)]  # views
    stacked = [tv(w[name]) for name in ("gate", "up", "down_t")]
    outs = [tv(np.zeros((1, d), "float32")) for _ in range(E + 3)]
    t_biases = [tv(b) for b in biases]
    no_biases = [tvm.runtime.tensor(b) for b in absent_biases(d)]  # the unbiased kernel's empty biases (copied:
    # DLPack refuses an empty array's unaligned pointer)
    routing = np.zeros(E, "float32")
    routing[chosen] = route_w[0]

    def all_experts():
        total = np.zeros((1, d), "float32")
        for e in range(E):
            dense(tx, *per_expert[e], outs[e])
            total += routing[e] * outs[e].numpy()
        return total

    def run_routed(exact: bool):
        routed[exact](tx, *stacked, t_rw, t_ri, *no_biases, outs[E + exact])
        return outs[E + exact]

    def run_biased():
        biased(tx, *stacked, t_rw, t_ri, *t_biases, outs[E + 2])
        return outs[E + 2]

    row = d * 4
    baseline = "all-experts exact" if args.plain else "all-experts dense"
    runners = {
        baseline: (all_experts, (E * (n + n_active) if args.plain else 3 * E * n) * row, expected),
        "routed dense": (lambda: run_routed(False), 3 * k * n * row, expected),
        "routed dense biased": (run_biased, 3 * k * n * row + k * (2 * n + d) * 4, expected_biased),
        f"routed exact ({args.sparsity:.0%} sparse)": (lambda: run_routed(True),
                                                        k * (n + (1 if args.plain else 2) * n_active) * row, expected),
    }
    if args.plain:  # exact mode's forms only (the dense ones are what plain experts never compile to)
        del runners["routed dense"], runners["routed dense biased"]
    for name, (fn, _, want) in runners.items():
        out = fn()
        got = out if isinstance(out, np.ndarray) else out.numpy()
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < 1e-4, f"{name}: max rel err vs the reference {err:.2e}"

    load = os.getloadavg()
    times = bench.time({name: (fn, nbytes) for name, (fn, nbytes, _) in runners.items()}, args.repeats)
    med = {name: float(np.median(t)) for name, t in times.items()}
    print(f"CPU: {bench.cpu}")
    print(f"MoE layer: {E} experts x (d={d}, n_ff={n}) fp32, top-{k}, batch 1; {args.threads} threads; "
          f"kernels compiled in {compile_s:.1f} s")
    print(f"load average before timing: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (a shared machine: measured under "
          f"load), after: {os.getloadavg()[0]:.2f}")
    base, routed_dense = med[baseline], med.get("routed dense")
    print("\n| form | median ms | MB read | GB/s | vs all-experts | vs routed dense |")
    print("|---|---|---|---|---|---|")
    for name, (_, nbytes, _) in runners.items():
        vs_dense = f"{routed_dense / med[name]:.2f}x" if routed_dense else "-"
        print(f"| {name} | {med[name] * 1e3:.2f} | {nbytes / 1e6:.0f} | {nbytes / med[name] / 1e9:.1f} | "
              f"{base / med[name]:.2f}x | {vs_dense} |")


if __name__ == "__main__":
    main()
