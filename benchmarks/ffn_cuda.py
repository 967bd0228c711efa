"""The ReGLU FFN at Mistral-7B dims on a CUDA GPU: actsparse's CUDA kernels (exact, indexed, dense) against cuBLAS
dense (torch F.linear chain), batch 1, for a few sparsities.

First, always (no GPU needed): the roofline figures computed from the generated code (`cuda_roofline.py`:
launches, registers and occupancy from ptxas, bytes touched, bytes in flight per SM), and the kernel launches of a
whole decode step of a 32-layer 7B-shape decoder (`cuda_step.py`: how many CUDA graphs and launches per token;
two tiny decoder builds, about a minute; `--no-step` skips it). Then, only on a machine with
an NVIDIA GPU and torch's CUDA build, the timed part — marked "measured on <GPU>"; without one it says why and
skips it (exit status 0; `--require-gpu`: 2).

    python -m actsparse.benchmarks.ffn_cuda [--dtype float16|float32] [--sparsities 0.5,0.9,0.95]
                                            [--repeats 50] [--small] [--arch sm_90] [--require-gpu]

Weights live on the GPU (torch tensors shared with TVM through DLPack, zero copy); the L2 cache is flushed (a
buffer of 4x its size rewritten) before every timed call; each call is timed with CUDA events around it; the
kernels and cuBLAS run interleaved. Printed: median microseconds, the bytes each must read and the bandwidth
that makes, that bandwidth as a share of the device's copy bandwidth (a 1 GiB device-to-device copy, read + write,
measured in the same run), and the speed-up over cuBLAS dense in the same weight dtype (and over fp32 cuBLAS).
"""

from __future__ import annotations

import argparse
import sys

from actsparse.benchmarks.tables import markdown_table

MISTRAL = (4096, 14336)
SMALL = (512, 2048)


def gpu_or_reason() -> str | None:
    """None when a CUDA GPU is usable from both torch and TVM, else why not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch finds no CUDA GPU (torch.cuda.is_available() is False; the CPU build of torch, or no driver)"
    from actsparse.targets.cuda import gpu_device

    if gpu_device() is None:
        return "TVM's CUDA runtime finds no GPU"
    return None


def scratch_tensors(prim, tensors) -> list:
    """Torch tensors for a kernel's scratch parameters (`scratch.py`), on the device of `tensors` (its other
    arguments): allocated once by the caller, as Relax does in a model."""
    import torch

    from actsparse.codegen.kernels.scratch import scratch_shapes

    return [torch.empty(shape, dtype=getattr(torch, dtype), device=tensors[0].device)
            for shape, dtype in scratch_shapes(prim, [tuple(t.shape) for t in tensors])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="weight dtype")
    ap.add_argument("--sparsities", default="0.5,0.9,0.95", help="comma-separated inactive fractions")
    ap.add_argument("--repeats", type=int, default=50, help="timed calls per kernel and configuration")
    ap.add_argument("--small", action="store_true", help=f"dims {SMALL} for a smoke test")
    ap.add_argument("--arch", default=None, help="architecture of the roofline figures (default: the GPU's, or sm_90)")
    ap.add_argument("--require-gpu", action="store_true", help="exit 2 when no GPU is here (after the roofline)")
    ap.add_argument("--no-step", action="store_true", help="skip the decode step's launch count (cuda_step.py)")
    args = ap.parse_args(argv)
    from actsparse.targets.cuda import gpu_device

    from .cuda_bundle_run import timed as timed_call
    from .cuda_roofline import report

    device = gpu_device()
    arch = args.arch or (f"sm_{device['compute'].replace('.', '')}" if device else "sm_90")
    d, n_ff = SMALL if args.small else MISTRAL
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        report(d, n_ff, args.dtype, sparsity, arch)
    if not args.no_step:
        from .cuda_step import report as step_report

        step_report()
    reason = gpu_or_reason()
    if reason:
        print(f"\nGPU-measured part (achieved vs copy bandwidth, vs cuBLAS): SKIPPED — no GPU here: {reason}. "
              "Nothing above was timed.")
        return 2 if args.require_gpu else 0

    import numpy as np
    import torch
    import torch.nn.functional as F
    import tvm

    from actsparse import targets
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.kernels.common import build_standalone
    from actsparse.codegen.schedules import schedule_for

    target = targets.get("cuda")
    sched = schedule_for(target)
    dt = getattr(torch, args.dtype)
    wbytes = torch.finfo(dt).bits // 8
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(0)
    print(f"GPU: {props.name} ({target.tvm['arch']}, {props.multi_processor_count} SMs) | FFN d={d} n_ff={n_ff} "
          f"weights {args.dtype} | schedule {sched}")
    kw = dict(gate_act="relu", up_act="identity", dtype=args.dtype, sched=sched)
    prims = {name: kernel(name, d, n_ff, **kw) for name in ("exact", "indexed", "dense")}
    built = {name: build_standalone(prim, target.tvm_target()) for name, prim in prims.items()}
    flush = torch.empty(4 * max(props.L2_cache_size, 1 << 20) // 4, dtype=torch.float32, device=dev)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(1, d, generator=g).to(dev)
    wu = (torch.randn(n_ff, d, generator=g) / d**0.5).to(dev, dt)
    wd = (torch.randn(d, n_ff, generator=g) / n_ff**0.5).to(dev, dt)
    wd_t = wd.t().contiguous()
    wg_base = torch.randn(n_ff, d, generator=g) / d**0.5
    wu32, wd32 = wu.float(), wd.float()
    tvm_of = tvm.runtime.from_dlpack
    copy_src = torch.empty(1 << 28, dtype=torch.float32, device=dev)  # 1 GiB
    copy_dst = torch.empty_like(copy_src)

    def timed(fn) -> float:  # microseconds, the L2 flushed first
        return timed_call(torch, fn, flush)

    rows = []
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        n_active = int(round((1 - sparsity) * n_ff))
        active = torch.zeros(n_ff, dtype=torch.bool)
        active[torch.randperm(n_ff, generator=g)[:n_active]] = True
        gx = wg_base @ x.cpu()[0]
        wg = (wg_base * torch.where(active == (gx > 0), 1.0, -1.0)[:, None]).to(dev, dt)  # g > 0 exactly on active
        wg32 = wg.float()
        idx = torch.nonzero(active).int().reshape(1, -1).to(dev) if n_active else torch.zeros(1, 1, dtype=torch.int32,
                                                                                              device=dev)
        count = torch.tensor([n_active], dtype=torch.int32, device=dev)
        outs = {k: torch.zeros(1, d, device=dev) for k in built}
        tx, tg, tu, tdt = (tvm_of(t) for t in (x, wg, wu, wd_t))
        calls = {"exact": [x, wg, wu, wd_t, outs["exact"]], "dense": [x, wg, wu, wd_t, outs["dense"]],
                 "indexed": [x, wg, wu, wd_t, idx, count, outs["indexed"]]}
        scratch = {k: [tvm_of(t) for t in scratch_tensors(prims[k], a)] for k, a in calls.items()}
        runners = {
            f"cuBLAS dense ({args.dtype})": (lambda: F.linear(F.relu(F.linear(x.to(dt), wg)) * F.linear(x.to(dt), wu),
                                                              wd), 3 * n_ff * d * wbytes),
            "cuBLAS dense (float32)": (lambda: F.linear(F.relu(F.linear(x, wg32)) * F.linear(x, wu32), wd32),
                                       3 * n_ff * d * 4),
            "actsparse exact": (lambda: built["exact"](tx, tg, tu, tdt, tvm_of(outs["exact"]), *scratch["exact"]),
                                n_ff * d * wbytes + 2 * n_active * d * wbytes),
            "actsparse indexed": (lambda: built["indexed"](tx, tg, tu, tdt, tvm_of(idx), tvm_of(count),
                                                           tvm_of(outs["indexed"]), *scratch["indexed"]),
                                  3 * n_active * d * wbytes),
            "actsparse dense": (lambda: built["dense"](tx, tg, tu, tdt, tvm_of(outs["dense"]), *scratch["dense"]),
                                3 * n_ff * d * wbytes),
        }
        with torch.no_grad():
            ref = F.linear(F.relu(F.linear(x, wg32)) * F.linear(x, wu32), wd32)
            for fn, _ in runners.values():
                fn()
            torch.cuda.synchronize()
            for k, out in outs.items():
                err = ((out - ref).abs().max() / ref.abs().max()).item()
                if err > (1e-3 if args.dtype == "float32" else 2e-2):
                    print(f"MISMATCH: {k} at {sparsity:.0%}: max rel err {err:.2e}", file=sys.stderr)
                    return 1
            times = {name: [] for name in runners}
            for _ in range(3):
                for fn, _ in runners.values():
                    fn()
            for _ in range(args.repeats):
                for name, (fn, _) in runners.items():
                    times[name].append(timed(fn))
        copies = []
        for _ in range(5):
            copies.append(timed(lambda: copy_dst.copy_(copy_src)))
        copy_gbs = 2 * copy_src.numel() * 4 / float(np.median(copies)) / 1e3  # read + write
        base = float(np.median(times[f"cuBLAS dense ({args.dtype})"]))
        base32 = float(np.median(times["cuBLAS dense (float32)"]))
        for name, (_, nbytes) in runners.items():
            us = float(np.median(times[name]))
            rows.append((f"{sparsity:.0%}", name, us, nbytes / 1e6, nbytes / us / 1e3, base / us, base32 / us,
                         nbytes / us / 1e3 / copy_gbs))
    print(f"\n**ReGLU FFN d={d}, n_ff={n_ff}, batch 1, weights {args.dtype}** — measured on {props.name}; L2 flushed "
          f"before each call; median of {args.repeats} (CUDA events); copy bandwidth {copy_gbs:.0f} GB/s\n")
    columns = ("sparsity", "kernel", "median us", "MB read", "GB/s", "% of copy BW", f"vs cuBLAS {args.dtype}",
               "vs cuBLAS fp32")
    print(markdown_table(columns, ((r[0], r[1], f"{r[2]:.1f}", f"{r[3]:.1f}", f"{r[4]:.0f}", f"{r[7]:.0%}",
                                    f"{r[5]:.2f}x", f"{r[6]:.2f}x") for r in rows), 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
