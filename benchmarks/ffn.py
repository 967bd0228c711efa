"""One ReLU-gated MLP (ReGLU) at Mistral-7B dims, batch 1: actsparse exact / indexed / dense vs torch dense.

    python -m actsparse.benchmarks.ffn [--sparsity 0.9] [--dtype float32|float16] [--repeats 25]
                                       [--threads 2] [--small]

The gate weights are arranged so exactly `sparsity` of the neurons are inactive for the input (g <= 0),
the last-level cache is evicted before every timed call (weights come from DRAM, as in real decoding),
and the kernels run interleaved, so a change in machine load hits them all alike. TVM and torch read the
same kind of memory (numpy-allocated, transparent huge pages where the kernel allows them). Printed: the CPU,
its measured read bandwidth (the best of two multi-threaded TVM read-sums over 1 GB), each kernel's median time, the
bytes it must read and the bandwidth that makes, and its speed-up over torch's dense F.linear chain;
then the same as a markdown table for BENCHMARKS.md.

The schedule (vector lanes, threads) is chosen here from /proc/cpuinfo and the options: benchmarks may
look at the host, kernels never do. `FfnBench` holds the pieces (bandwidth probe, weights for a sparsity,
kernels per dtype, interleaved timing) that `ffn_sweep.py` reuses.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

from actsparse.benchmarks.tables import markdown_table
from actsparse.ir.quant import LAYOUTS

MISTRAL = (4096, 14336)
SMALL = (256, 1024)
TORCH = "torch dense (F.linear chain, fp32)"
EXACT = "actsparse exact (fused gate + sparse up/down)"
INDEXED = "actsparse indexed (active set given: predictor ideal)"
DENSE = "actsparse dense"
# quantized layouts: what dense mode builds for a quantized MLP (codegen/lower_kernels.py): the gate / up kernel, then
# the down projection's linear on its rows as stored ([d, n_ff], a row per output), not DENSE's neuron rows
DENSE_MODE = "actsparse dense mode (gate / up kernel + down linear)"


def x86_level(isa: str):
    """The host's x86 target narrowed to an older ISA level the host also runs ("avx2": x86-64-v3, AVX2 + FMA +
    F16C, 16 vector registers — the Zen 3 class of machine), to measure that schedule on this machine."""
    import dataclasses

    from actsparse.targets import x86

    if isa != "avx2":
        raise ValueError(f"isa must be 'host' or 'avx2', got {isa!r}")
    host = x86.host()
    if host.vector_bits < 256:
        raise ValueError("this machine has no AVX2")
    return dataclasses.replace(host, tvm={**host.tvm, "mcpu": "x86-64-v3"}, vector_bits=256, vector_registers=16,
                               features=("avx2", "fma", "f16c"),
                               description=host.description + " as x86-64-v3 (AVX2)")


class FfnBench:
    """A ReGLU FFN of d x n_ff on this machine's x86 target with `threads` threads (TVM and torch)."""

    def __init__(self, d: int, n_ff: int, threads: int = 2, lanes: int = 0, seed: int = 0, isa: str = "host"):
        os.environ["TVM_NUM_THREADS"] = str(threads)
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # spinning OpenBLAS threads halve TVM's speed
        import numpy as np
        import torch
        import tvm

        from actsparse.codegen.kernels.schedule import CpuSchedule
        from actsparse.codegen.schedules import int8_dot
        from actsparse.runtime.timing import CacheEvictor
        from actsparse.targets import x86

        torch.set_num_threads(threads)
        self.np, self.torch, self.tvm = np, torch, tvm
        self.d, self.n_ff, self.threads = d, n_ff, threads
        self.host = x86.host() if isa == "host" else x86_level(isa)
        self.isa = "avx512" if self.host.vector_bits == 512 else "avx2" if self.host.vector_bits == 256 else "sse"
        self.lanes = lanes or self.host.lanes
        # the int8 dot product (VNNI) where the target has it, as compile() schedules it: quantized kernels then
        # take x in 8-bit blocks, which is what users run
        self.sched = CpuSchedule(lanes=self.lanes, threads=threads, vector_registers=self.host.vector_registers,
                                 l2_bytes=self.host.l2_bytes, int8_dot=int8_dot(self.host),
                                 int8_axpy=self.host.int8_axpy_kernels)
        self.target = tvm.target.Target({**self.host.tvm, "num-cores": threads})
        self.evict = CacheEvictor(self.host.llc_bytes)  # 3x the LLC, written and read before every timed call
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.x = rng.standard_normal((1, d)).astype("float32")
        self.wg = (rng.standard_normal((n_ff, d)) / np.sqrt(d)).astype("float32")
        self.wu = (rng.standard_normal((n_ff, d)) / np.sqrt(d)).astype("float32")
        self.wd = (rng.standard_normal((d, n_ff)) / np.sqrt(n_ff)).astype("float32")  # torch layout [d, n_ff]
        self.wd_t = np.ascontiguousarray(self.wd.T)
        self._kernels: dict = {}
        # blob -> the bytes the kernels read (kernel_ab: another tree's kernels may read GGUF's blocks)
        self.kernel_blob = lambda blob, dtype, cols: blob
        self._quantized: dict = {}
        self.compile_s = 0.0
        self._wake = self._wakers()

    @property
    def cpu(self) -> str:
        return f"{self.host.description} | ISA {self.isa} | LLVM mcpu {self.host.tvm['mcpu']}"

    # --- read bandwidth: multi-threaded vectorized read-sums over 1 GB ----------------------------------------
    def read_probe(self, small: bool = False) -> tuple:
        """A runner (fn, bytes) reading 1 GB (64 MB with `small`) as fast as TVM code can (`weights_probe.
        buffer_probe`). Time it interleaved with the kernels: on a shared machine the memory bandwidth a VM gets
        moves (23-53 GB/s seen on one machine within minutes), so only a probe measured alongside says which share
        of the limit a kernel reaches."""
        from .weights_probe import buffer_probe

        return buffer_probe(self, small)

    def read_bandwidth(self, small: bool = False) -> float:
        """The read limit measured now: median of 7 runs of `read_probe`."""
        fn, nbytes = self.read_probe(small)
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return nbytes / float(self.np.median(times))

    # --- kernels, built once per weight dtype ----------------------------------------------------------------
    def kernels(self, dtype: str) -> dict:
        if dtype not in self._kernels:
            from actsparse.codegen.kernels.common import build_standalone
            from actsparse.codegen.kernels.gathered_mlp import sparse_gated_mlp_indexed
            from actsparse.codegen.kernels.sparse_mlp import dense_gated_mlp, sparse_gated_mlp

            kw = dict(gate_act="relu", up_act="identity", dtype=dtype, sched=self.sched)
            t0 = time.perf_counter()
            self._kernels[dtype] = {
                "exact": build_standalone(sparse_gated_mlp(self.d, self.n_ff, **kw), self.target),
                "indexed": build_standalone(sparse_gated_mlp_indexed(self.d, self.n_ff, **kw), self.target),
                "dense": build_standalone(dense_gated_mlp(self.d, self.n_ff, **kw), self.target),
            }
            if dtype in LAYOUTS:
                from actsparse.codegen.kernels.gate_up import gate_up
                from actsparse.codegen.kernels.linear import linear

                self._kernels[dtype] |= {
                    "gate_up": build_standalone(gate_up(self.d, self.n_ff, **kw), self.target),
                    "down": build_standalone(linear(self.n_ff, self.d, dtype=dtype, sched=self.sched), self.target)}
            self.compile_s += time.perf_counter() - t0
        return self._kernels[dtype]

    def quantized(self, dtype: str, which: str):
        """The weight `which` ("wg", "wu", "wd_t") quantized in layout `dtype` (cached), or None for a float dtype."""
        if dtype not in LAYOUTS:
            return None
        key = (dtype, which)
        if key not in self._quantized:
            from actsparse.ir.quant import quantize

            self._quantized[key] = quantize(getattr(self, which), dtype)
        return self._quantized[key]

    # --- one configuration: weights for a sparsity, the runners, their check -----------------------------------
    def gate_for(self, sparsity: float):
        """(w_gate, active mask): the gate rows' signs flipped so exactly `sparsity` of the neurons are inactive
        (g <= 0) for the input `x`; the active ones drawn at random."""
        np, n_ff = self.np, self.n_ff
        n_active = int(round((1.0 - sparsity) * n_ff))
        active = np.zeros(n_ff, bool)
        active[self.rng.choice(n_ff, n_active, replace=False)] = True
        g = self.wg @ self.x[0]
        wg = self.wg * np.where(active == (g > 0), 1.0, -1.0).astype("float32")[:, None]  # g > 0 exactly on active
        assert ((wg @ self.x[0]) > 0).sum() == n_active
        return wg, active

    def runners(self, sparsity: float, dtype: str, which=(TORCH, EXACT, INDEXED, DENSE), gate=None
                ) -> tuple[dict, int]:
        """{name: (fn, bytes it must read)} for `sparsity` (exactly that fraction of gates <= 0; `gate` gives
        `gate_for`'s (w_gate, active) to reuse, float layouts only) and the number of active neurons; the runners'
        outputs are checked against torch first (AssertionError)."""
        np, torch = self.np, self.torch
        import torch.nn.functional as F

        from actsparse.runtime.memory import host_tensor as tv  # numpy-owned aligned memory via DLPack

        d, n_ff = self.d, self.n_ff
        row_bytes = LAYOUTS[dtype].row_bytes(d) if dtype in LAYOUTS else d * (2 if dtype == "float16" else 4)
        qg = self.quantized(dtype, "wg")  # negating a row's fp16 scales (and offsets) negates it exactly: flip after
        if gate is not None and qg is None:
            wg, active = gate
            n_active = int(active.sum())
        else:
            n_active = int(round((1.0 - sparsity) * n_ff))
            active = np.zeros(n_ff, bool)
            active[self.rng.choice(n_ff, n_active, replace=False)] = True
            g = (qg.dequantize() if qg else self.wg) @ self.x[0]
            flip = np.where(active == (g > 0), 1.0, -1.0).astype("float32")[:, None]  # g > 0 exactly on active
            wg = self.wg * flip
        idx = np.flatnonzero(active).astype("int32")[None]
        if qg:  # quantized layouts: the blobs, and the float reference of what they hold (not torch's weights)
            from actsparse.ir.quant import from_gguf_blocks, to_gguf_blocks

            blocks = to_gguf_blocks(qg.blob, dtype, d).copy()
            lay = LAYOUTS[dtype]  # the sign bits of every fp16 in a block's header (scale; q4_1: offset too)
            blocks.reshape(n_ff, -1, lay.block_bytes)[flip[:, 0] < 0, :, 1:lay.header_bytes:2] ^= 0x80
            wg_blob = from_gguf_blocks(blocks, dtype, d)
            tw = [tv(self.kernel_blob(b, dtype, d)) for b in (wg_blob, self.quantized(dtype, "wu").blob,
                                                                self.quantized(dtype, "wd_t").blob)]
            deq = [qg.dequantize() * flip, self.quantized(dtype, "wu").dequantize(),
                   self.quantized(dtype, "wd_t").dequantize()]
            assert ((deq[0] @ self.x[0]) > 0).sum() == n_active
            down_rows = self.quantized(dtype, "wd")   # dense mode's down: rows of W_down [d, n_ff] as stored
            t_down, t_h = tv(self.kernel_blob(down_rows.blob, dtype, n_ff)), tv(np.zeros((1, n_ff), "float32"))
            deq_down = down_rows.dequantize()
        else:
            assert ((wg @ self.x[0]) > 0).sum() == n_active
            tw = [tv(w.astype(dtype)) for w in (wg, self.wu, self.wd_t)]
        self.weights = tw  # the tensors the kernels read (weights_probe.py reads the same)
        tx = tv(self.x)
        t_idx = tv(idx if n_active else np.zeros((1, 1), "int32"))
        t_count = tv(np.array([n_active], "int32"))
        outs = {k: tv(np.zeros((1, d), "float32")) for k in ("exact", "indexed", "dense")}
        k = self.kernels(dtype)
        xt, wgt, wut, wdt = (torch.from_numpy(a) for a in (self.x, wg, self.wu, self.wd))

        def torch_dense():
            with torch.no_grad():
                return F.linear(F.relu(F.linear(xt, wgt)) * F.linear(xt, wut), wdt)

        all_runners = {
            TORCH: (torch_dense, 3 * n_ff * d * 4),
            EXACT: (lambda: k["exact"](tx, *tw, outs["exact"]), n_ff * row_bytes + 2 * n_active * row_bytes),
            INDEXED: (lambda: k["indexed"](tx, *tw, t_idx, t_count, outs["indexed"]), 3 * n_active * row_bytes),
            DENSE: (lambda: k["dense"](tx, *tw, outs["dense"]), 3 * n_ff * row_bytes),
        }
        if qg:
            def dense_mode():
                k["gate_up"](tx, tw[0], tw[1], t_h)
                k["down"](t_h, t_down, outs["dense mode"])
            outs["dense mode"] = tv(np.zeros((1, d), "float32"))
            all_runners[DENSE_MODE] = (dense_mode, 2 * n_ff * row_bytes + d * LAYOUTS[dtype].row_bytes(n_ff))
        runners = {name: all_runners[name] for name in which}
        # correctness first (fp32 accumulation; fp16 weights differ from the fp32 torch weights by rounding)
        ref = torch_dense().numpy().astype("float64")
        if qg:
            x64 = self.x[0].astype("float64")
            ref = ((np.maximum(deq[0] @ x64, 0) * (deq[1] @ x64)) @ deq[2])[None]
        for fn, _ in runners.values():
            fn()
        # fp16 weights; or x rounded to 8-bit blocks for the int8 dot (VNNI) of quantized weights
        tol = 3e-2 if dtype == "float16" or (qg and self.sched.int8_dot) else 1e-3
        for name, key in ((EXACT, "exact"), (INDEXED, "indexed"), (DENSE, "dense"), (DENSE_MODE, "dense mode")):
            if name in runners:
                want = ref if name != DENSE_MODE else (  # its down projection's own rounding
                    (np.maximum(deq[0] @ x64, 0) * (deq[1] @ x64)) @ deq_down.T)[None]
                err = np.abs(outs[key].numpy() - want).max() / max(np.abs(want).max(), 1e-30)
                assert err < tol, f"{key} {dtype} at {sparsity:.0%}: max rel err vs torch {err:.2e}"
        return runners, n_active

    # --- timing: interleaved, cache evicted, thread pools woken -------------------------------------------------
    def _wakers(self):
        """Decoding runs layer after layer, so thread pools are awake; after the eviction they are asleep and
        waking them costs tens to hundreds of microseconds, so each timed call follows a tiny parallel call
        of its own runtime."""
        np, torch = self.np, self.torch
        import torch.nn.functional as F
        from tvm.script import tirx as T

        from actsparse.codegen.kernels.common import build_standalone
        from actsparse.runtime.memory import host_tensor

        threads = self.threads

        @T.prim_func
        def tvm_nop(a: T.Buffer((threads, 16), "float32")):
            T.func_attr({"global_symbol": "bench_nop", "tirx.noalias": True})
            for t in T.parallel(threads):
                for v in T.vectorized(16):
                    a[t, v] = a[t, v] + T.float32(1)

        k_nop = build_standalone(tvm_nop, self.target)
        nop_buf = host_tensor(np.zeros((threads, 16), "float32"))
        small_x, small_w = torch.ones(1, 1024), torch.ones(2048, 1024)

        def wake_torch():
            with torch.no_grad():
                F.linear(small_x, small_w)

        return {"tvm": lambda: k_nop(nop_buf), "torch": wake_torch}

    def time(self, runners: dict, repeats: int) -> dict[str, list[float]]:
        times = {name: [] for name in runners}
        wake = {name: self._wake["torch" if name.startswith("torch") else "tvm"] for name in runners}
        for _ in range(2):  # warm-up
            for fn, _ in runners.values():
                self.evict()
                fn()
        for rep in range(repeats):  # interleaved: drifting machine load hits every kernel alike
            # every other round in reverse: a runner's place in the round (what ran just before it) favours none
            for name, (fn, _) in (reversed if rep % 2 else iter)(list(runners.items())):
                self.evict()
                wake[name]()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        return times


@dataclass
class Sweep:
    """What a sweep script (`ffn_sweep.py`, `ffn_threshold.py`) starts from: its parsed options, the bench with the
    read-limit probe, and the load average before the first timing."""

    args: argparse.Namespace
    sparsities: list[float]
    dtypes: list[str]
    bench: FfnBench
    probe: tuple
    load_before: float


def sweep_parser(description: str, sparsities: str) -> argparse.ArgumentParser:
    """The options every sweep takes; a script adds its own before `start_sweep`."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--sparsities", default=sparsities, help="comma-separated inactive fractions")
    ap.add_argument("--dtypes", default="float32,float16", help="comma-separated weight dtypes")
    ap.add_argument("--repeats", type=int, default=15, help="timed calls per kernel and configuration")
    ap.add_argument("--threads", type=int, default=2, help="threads for TVM and torch (default 2)")
    ap.add_argument("--small", action="store_true", help=f"tiny dims {SMALL} for a smoke test")
    return ap


def start_sweep(ap: argparse.ArgumentParser, argv=None) -> Sweep:
    """Parse and check the options, build the bench (`--isa` if the script has it) and its probe; print the CPU."""
    args = ap.parse_args(argv)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    dtypes = args.dtypes.split(",")
    if any(not 0.0 <= s < 1.0 for s in sparsities):
        ap.error("sparsities must be in [0, 1)")
    if any(dt not in ("float32", "float16", *LAYOUTS) for dt in dtypes):
        ap.error(f"dtypes: float32, float16 and/or a quantized layout ({', '.join(LAYOUTS)})")
    d, n_ff = SMALL if args.small else MISTRAL
    bench = FfnBench(d, n_ff, args.threads, isa=getattr(args, "isa", "host"))
    load_before = os.getloadavg()[0]
    print(f"CPU: {bench.cpu} | threads: {args.threads} | load avg: {load_before:.2f}", flush=True)
    return Sweep(args, sparsities, dtypes, bench, bench.read_probe(args.small), load_before)


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

    d, n_ff = SMALL if args.small else MISTRAL
    bench = FfnBench(d, n_ff, args.threads, args.lanes)
    np = bench.np
    load_before = os.getloadavg()[0]  # other processes on the cores skew every multi-threaded timing
    print(f"CPU: {bench.cpu} | threads: {args.threads} | load avg: {load_before:.2f}")
    print(f"FFN: d={d} n_ff={n_ff} weights {args.dtype} | sparsity {args.sparsity:.0%} | schedule {bench.sched}")
    read_bw = bench.read_bandwidth(args.small)
    try:
        runners, n_active = bench.runners(args.sparsity, args.dtype)
    except AssertionError as err:
        print(f"MISMATCH: {err}")
        return 1
    times = bench.time(runners, args.repeats)

    wbytes = 2 if args.dtype == "float16" else 4
    base = float(np.median(times[TORCH]))
    rows = []
    for name, (_, nbytes) in runners.items():
        med = float(np.median(times[name]))
        rows.append((name, med * 1e3, float(np.min(times[name])) * 1e3, nbytes / 1e6, nbytes / med / 1e9,
                     base / med))
    ideal = 3 * n_ff * d * 4 / (n_ff * d * wbytes + 2 * n_active * d * wbytes)
    print(f"\nread bandwidth (TVM read-sums, 1 GB, {args.threads} threads): {read_bw / 1e9:.1f} GB/s | "
          f"compile 3 kernels: {bench.compile_s:.1f} s | load avg after: {os.getloadavg()[0]:.2f}")
    print(f"equal-bandwidth ideal of exact vs torch dense fp32: {ideal:.2f}x\n")
    print(f"{'kernel':55s} {'median ms':>10s} {'min ms':>8s} {'MB read':>8s} {'GB/s':>6s} {'vs torch':>9s}")
    for r in rows:
        print(f"{r[0]:55s} {r[1]:10.2f} {r[2]:8.2f} {r[3]:8.1f} {r[4]:6.1f} {r[5]:8.2f}x")

    print(f"\n**FFN d={d}, n_ff={n_ff}, ReGLU, batch 1, weights {args.dtype}, {args.sparsity:.0%} inactive** — "
          f"{bench.cpu}, {args.threads} threads, LLC evicted before each call, median of {args.repeats}; "
          f"read bandwidth {read_bw / 1e9:.1f} GB/s; equal-bandwidth ideal of exact vs torch {ideal:.2f}x; "
          f"load average {load_before:.1f}\n")
    print(markdown_table(("kernel", "median ms", "MB read", "GB/s", "vs torch dense"),
                         ((r[0], f"{r[1]:.2f}", f"{r[3]:.0f}", f"{r[4]:.1f}", f"{r[5]:.2f}x") for r in rows), 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
