"""One ReLU-gated MLP (ReGLU) at Mistral-7B dims, batch 1: actsparse exact / indexed / dense vs torch dense.

    python -m actsparse.benchmarks.ffn [--sparsity 0.9] [--dtype float32|float16] [--repeats 25]
                                       [--threads 2] [--small]

The gate weights are arranged so exactly `sparsity` of the neurons are inactive for the input (g <= 0),
the last-level cache is evicted before every timed call (weights come from DRAM, as in real decoding),
and the kernels run interleaved, so a change in machine load hits them all alike. TVM and torch read the
same kind of memory (numpy-allocated, transparent huge pages where the kernel allows them). Printed: the CPU,
its measured read bandwidth (multi-threaded TVM read-sum over 1 GB), each kernel's median time, the
bytes it must read and the bandwidth that makes, and its speed-up over torch's dense F.linear chain;
then the same as a markdown table for BENCHMARKS.md.

The schedule (vector lanes, threads) is chosen here from /proc/cpuinfo and the options: benchmarks may
look at the host, kernels never do.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

MISTRAL = (4096, 14336)
SMALL = (256, 1024)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sparsity", type=float, default=0.9, help="fraction of inactive neurons (default 0.9)")
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="weight dtype")
    ap.add_argument("--repeats", type=int, default=25, help="timed calls per kernel (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="threads for TVM and torch (default 2)")
    ap.add_argument("--lanes", type=int, default=0, help="fp32 vector lanes (default: 16 with AVX-512, else 8)")
    ap.add_argument("--small", action="store_true", help=f"tiny dims {SMALL} for a smoke test")
    args = ap.parse_args(argv)
    if not 0.0 <= args.sparsity < 1.0:
        ap.error("--sparsity must be in [0, 1)")

    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # spinning OpenBLAS threads halve TVM's speed
    import numpy as np
    import torch
    import torch.nn.functional as F
    import tvm
    from tvm.script import tirx as T
    from tvm.target import codegen

    from actsparse.codegen.kernels.common import build_standalone
    from actsparse.codegen.kernels.schedule import CpuSchedule
    from actsparse.codegen.kernels.sparse_mlp import dense_gated_mlp, sparse_gated_mlp, sparse_gated_mlp_indexed
    from actsparse.runtime.memory import host_tensor
    from actsparse.runtime.timing import CacheEvictor
    from actsparse.targets import x86

    torch.set_num_threads(args.threads)
    host = x86.host()
    model, isa = host.description, "avx512" if host.vector_bits == 512 else "avx2" if host.vector_bits == 256 else "sse"
    lanes = args.lanes or host.lanes
    sched = CpuSchedule(lanes=lanes, threads=args.threads, vector_registers=host.vector_registers)
    target = tvm.target.Target({**host.tvm, "num-cores": args.threads})
    d, n_ff = SMALL if args.small else MISTRAL
    wbytes = 2 if args.dtype == "float16" else 4
    load_before = os.getloadavg()[0]  # other processes on the cores skew every multi-threaded timing
    print(f"CPU: {model} | ISA: {isa} | LLVM mcpu: {codegen.llvm_get_system_cpu()} | "
          f"threads: {args.threads} | load avg: {load_before:.2f}")
    print(f"FFN: d={d} n_ff={n_ff} weights {args.dtype} | sparsity {args.sparsity:.0%} | schedule {sched}")

    # --- cache eviction ---------------------------------------------------------------------------------
    evict = CacheEvictor(host.cache_bytes)  # 3x the LLC, written and read before every timed call

    # --- read bandwidth: multi-threaded vectorized read-sum over 1 GB -------------------------------------
    bw_n = (64 << 20) if args.small else (256 << 20)
    per = bw_n // args.threads
    C = lanes * 8

    @T.prim_func
    def read_sum(a: T.Buffer((bw_n,), "float32"), o: T.Buffer((args.threads, C), "float32")):
        T.func_attr({"global_symbol": "bench_read_sum", "tirx.noalias": True})
        for t in T.parallel(args.threads):
            acc = T.alloc_buffer((C,), "float32", scope="local")
            for v in T.vectorized(C):
                acc[v] = T.float32(0)
            for c in range(per // C):
                for v in T.vectorized(C):
                    acc[v] = acc[v] + a[t * per + c * C + v]
            for v in T.vectorized(C):
                o[t, v] = acc[v]

    rs = build_standalone(read_sum, target)
    a_bw = tvm.runtime.tensor(np.ones(bw_n, "float32"))
    o_bw = tvm.runtime.tensor(np.zeros((args.threads, C), "float32"))
    rs(a_bw, o_bw)
    bw_times = []
    for _ in range(7):
        t0 = time.perf_counter()
        rs(a_bw, o_bw)
        bw_times.append(time.perf_counter() - t0)
    read_bw = bw_n * 4 / float(np.median(bw_times))
    del a_bw

    # --- weights and an input with exactly `sparsity` inactive neurons -----------------------------------
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, d)).astype("float32")
    wg = (rng.standard_normal((n_ff, d)) / np.sqrt(d)).astype("float32")
    wu = (rng.standard_normal((n_ff, d)) / np.sqrt(d)).astype("float32")
    wd = (rng.standard_normal((d, n_ff)) / np.sqrt(n_ff)).astype("float32")  # torch layout [d, n_ff]
    g = wg @ x[0]
    n_active = int(round((1.0 - args.sparsity) * n_ff))
    active = np.zeros(n_ff, bool)
    active[rng.choice(n_ff, n_active, replace=False)] = True
    wg *= np.where(active == (g > 0), 1.0, -1.0).astype("float32")[:, None]  # g > 0 exactly on `active`
    assert ((wg @ x[0]) > 0).sum() == n_active
    wd_t = np.ascontiguousarray(wd.T)
    idx = np.flatnonzero(active).astype("int32")[None]
    count = np.array([n_active], "int32")
    wdt = args.dtype

    tv = host_tensor  # numpy-owned aligned memory shared via DLPack (huge pages, as torch gets)

    tx = tv(x)
    tw = [tv(w.astype(wdt)) for w in (wg, wu, wd_t)]
    t_idx, t_count = tv(idx if n_active else np.zeros((1, 1), "int32")), tv(count)
    outs = {k: tv(np.zeros((1, d), "float32")) for k in ("exact", "indexed", "dense")}
    kw = dict(gate_act="relu", up_act="identity", dtype=wdt, sched=sched)
    t0 = time.perf_counter()
    k_exact = build_standalone(sparse_gated_mlp(d, n_ff, **kw), target)
    k_index = build_standalone(sparse_gated_mlp_indexed(d, n_ff, **kw), target)
    k_dense = build_standalone(dense_gated_mlp(d, n_ff, **kw), target)
    compile_s = time.perf_counter() - t0

    xt = torch.from_numpy(x)
    wgt, wut, wdt_ = torch.from_numpy(wg), torch.from_numpy(wu), torch.from_numpy(wd)

    def torch_dense():
        with torch.no_grad():
            return F.linear(F.relu(F.linear(xt, wgt)) * F.linear(xt, wut), wdt_)

    # decoding runs layer after layer, so thread pools are awake; after the eviction they are asleep
    # and waking them costs a VM tens to hundreds of microseconds, so each timed call follows a tiny
    # parallel call of its own runtime
    @T.prim_func
    def tvm_nop(a: T.Buffer((args.threads, 16), "float32")):
        T.func_attr({"global_symbol": "bench_nop", "tirx.noalias": True})
        for t in T.parallel(args.threads):
            for v in T.vectorized(16):
                a[t, v] = a[t, v] + T.float32(1)

    k_nop = build_standalone(tvm_nop, target)
    nop_buf = tv(np.zeros((args.threads, 16), "float32"))
    small_x, small_w = torch.ones(1, 1024), torch.ones(2048, 1024)

    def wake_tvm():
        k_nop(nop_buf)

    def wake_torch():
        with torch.no_grad():
            F.linear(small_x, small_w)

    runners = {
        "torch dense (F.linear chain, fp32)": (torch_dense, 3 * n_ff * d * 4),
        "actsparse exact (fused gate + sparse up/down)": (
            lambda: k_exact(tx, *tw, outs["exact"]), n_ff * d * wbytes + 2 * n_active * d * wbytes),
        "actsparse indexed (active set given: predictor ideal)": (
            lambda: k_index(tx, *tw, t_idx, t_count, outs["indexed"]), 3 * n_active * d * wbytes),
        "actsparse dense": (lambda: k_dense(tx, *tw, outs["dense"]), 3 * n_ff * d * wbytes),
    }
    # correctness first (fp32 accumulation; fp16 weights differ from the fp32 torch weights by rounding)
    ref = torch_dense().numpy().astype("float64")
    for fn, _ in runners.values():
        fn()
    tol = 1e-3 if wdt == "float32" else 3e-2
    for k in outs:
        err = np.abs(outs[k].numpy() - ref).max() / max(np.abs(ref).max(), 1e-30)
        status = "ok" if err < tol else "MISMATCH"
        print(f"check {k:8s}: max rel err vs torch {err:.2e} ({status})")
        if err >= tol:
            return 1

    times = {name: [] for name in runners}
    wakes = {name: wake_torch if name.startswith("torch") else wake_tvm for name in runners}
    for _ in range(2):  # warm-up
        for fn, _ in runners.values():
            evict()
            fn()
    for _ in range(args.repeats):  # interleaved: drifting machine load hits every kernel alike
        for name, (fn, _) in runners.items():
            evict()
            wakes[name]()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    base = float(np.median(times["torch dense (F.linear chain, fp32)"]))
    rows = []
    for name, (_, nbytes) in runners.items():
        med = float(np.median(times[name]))
        rows.append((name, med * 1e3, float(np.min(times[name])) * 1e3, nbytes / 1e6, nbytes / med / 1e9,
                     base / med))
    ideal = 3 * n_ff * d * 4 / (n_ff * d * wbytes + 2 * n_active * d * wbytes)
    print(f"\nread bandwidth (TVM read-sum, 1 GB, {args.threads} threads): {read_bw / 1e9:.1f} GB/s | "
          f"compile 3 kernels: {compile_s:.1f} s | load avg after: {os.getloadavg()[0]:.2f}")
    print(f"equal-bandwidth ideal of exact vs torch dense fp32: {ideal:.2f}x\n")
    print(f"{'kernel':55s} {'median ms':>10s} {'min ms':>8s} {'MB read':>8s} {'GB/s':>6s} {'vs torch':>9s}")
    for r in rows:
        print(f"{r[0]:55s} {r[1]:10.2f} {r[2]:8.2f} {r[3]:8.1f} {r[4]:6.1f} {r[5]:8.2f}x")

    print(f"\n**FFN d={d}, n_ff={n_ff}, ReGLU, batch 1, weights {args.dtype}, {args.sparsity:.0%} inactive** — "
          f"{model} ({isa}, LLVM mcpu {codegen.llvm_get_system_cpu()}), {args.threads} threads, LLC evicted "
          f"before each call, median of {args.repeats}; read bandwidth {read_bw / 1e9:.1f} GB/s; "
          f"equal-bandwidth ideal of exact vs torch {ideal:.2f}x; load average {load_before:.1f}\n")
    print("| kernel | median ms | MB read | GB/s | vs torch dense |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[3]:.0f} | {r[4]:.1f} | {r[5]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
