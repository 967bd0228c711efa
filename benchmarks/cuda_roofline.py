"""The roofline figures of the CUDA gated-MLP kernels, computed from the code generated here (no GPU needed).

For each kernel (exact, indexed, dense, threshold, scored) at the given dims, weight dtype and sparsity:
- launches: the `__global__` functions TVM generated for it;
- per launch, from `nvcc --cubin -Xptxas -v` for the target's architecture: registers per thread and shared
  memory per block, hence resident blocks per multiprocessor (the occupancy limits of sm_80/sm_90: 64K
  registers, 2048 threads, 32 blocks, 228 KB shared memory per SM);
- bytes touched per call: weight rows read (DRAM, unique) and scratch written and read back (mostly L2);
- bytes in flight per SM, from the unroll and the occupancy: the down launch keeps `rows` 16-byte loads per
  lane in flight (a warp's compacted list permitting: at sparsity s a warp holds about (1 - s) of its positions),
  the gate launch the chunk loads of one row per warp that nvcc unrolled (16-byte global loads in its PTX over
  the 2 row dots: gate and up);
- x read by the gate/up launch per token (L1/L2 traffic, not DRAM): fp16 weights stage x once per block in shared
  memory (4·d bytes per block, again for the up pass of blocks where some warp kept its neuron), fp32 weights read
  it per warp and row (4·d bytes per row dot).
Nothing here is timed: these are the design's figures (what the code asks of the memory system), not speed.

    python -m actsparse.benchmarks.cuda_roofline [--dtype float16] [--sparsity 0.9] [--arch sm_90] [--small]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from functools import cache
from pathlib import Path

MISTRAL = (4096, 14336)
SMALL = (512, 2048)
SM_LIMITS = {"registers": 65536, "threads": 2048, "blocks": 32, "shared": 228 << 10, "reg_granule": 256}
KINDS = ("exact", "indexed", "dense", "threshold", "scored")


def ptxas_usage(source: str, arch: str) -> dict[str, tuple[int, int]]:
    """kernel name -> (registers per thread, static shared bytes per block), from ptxas -v."""
    from actsparse.codegen.cuda_support import nvcc_path

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.cu"
        src.write_text(source)
        proc = subprocess.run([nvcc_path(), "--cubin", f"-arch={arch}", "-O3", "-Xptxas", "-v", "-o",
                               str(Path(tmp) / "k.cubin"), str(src)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    usage, name = {}, None
    for line in proc.stderr.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            name = m.group(1)
        elif name and (m := re.search(r"Used (\d+) registers", line)):
            smem = re.search(r"(\d+) bytes smem", line)
            usage[name] = (int(m.group(1)), int(smem.group(1)) if smem else 0)
    return usage


def resident_blocks(regs: int, smem: int, threads: int) -> int:
    g = SM_LIMITS["reg_granule"]
    regs_per_warp = (regs * 32 + g - 1) // g * g
    by_regs = SM_LIMITS["registers"] // (regs_per_warp * (threads // 32))
    by_smem = SM_LIMITS["shared"] // smem if smem else SM_LIMITS["blocks"]
    return max(0, min(by_regs, by_smem, SM_LIMITS["threads"] // threads, SM_LIMITS["blocks"]))


def launches(source: str, symbol: str) -> list[str]:
    """The kernel's launches in order (each declared once and defined once in the source)."""
    found = re.findall(rf"__global__ void __launch_bounds__\(\d+\) ({symbol}_kernel(?:_\d+)?)\(", source)
    return list(dict.fromkeys(found))


def x_reads(kind: str, d: int, n_ff: int, dtype: str, sparsity: float, warps: int) -> float:
    """Bytes of x the gate/up launch reads per token (see the module docstring)."""
    from actsparse.codegen.kernels.cuda_blocks import stages_x

    active = (1 - sparsity) * n_ff
    if not stages_x(dtype):  # a row dot per warp reads all of x: gate rows, then up rows
        dots = {"exact": n_ff + active, "threshold": n_ff + active, "dense": 2 * n_ff}.get(kind, 2 * active)
        return dots * 4 * d
    blocks = -(-n_ff // warps)
    stagings = {"exact": blocks * (2 - sparsity ** warps), "threshold": blocks * (2 - sparsity ** warps),
                "indexed": -(-active // warps)}.get(kind, blocks)  # dense, scored: every block stages once
    return stagings * 4 * d


def unrolled_loads(ptx: str, name: str, dots: int = 2) -> int:
    """16-byte global loads per row dot in the PTX of launch `name` (the chunk loop's unroll)."""
    body = re.split(r"\.entry ", ptx.split(f".entry {name}(", 1)[1], maxsplit=1)[0] if f".entry {name}(" in ptx else ""
    return max(1, len(re.findall(r"ld\.global(?:\.nc)?\.v4", body)) // dots)


def figures(kind: str, d: int, n_ff: int, dtype: str, sparsity: float, sched, source: str, usage: dict,
            ptx: str = "") -> dict:
    from actsparse.codegen.kernels.cuda_blocks import down_splits, vector_elems

    wb = 2 if dtype == "float16" else 4
    active = round((1 - sparsity) * n_ff)
    row = d * wb
    weights = {"exact": n_ff * row + 2 * active * row, "threshold": n_ff * row + 2 * active * row,
               "indexed": 3 * active * row, "scored": 3 * active * row, "dense": 3 * n_ff * row}[kind]
    splits = down_splits(d, dtype, sched, n_ff)
    n_slices = -(-d // (sched.warp * vector_elems(d, dtype, sched)))
    rows_listed = n_ff if kind != "indexed" else active  # positions the down launch scans per token
    scratch = (2 * n_ff * 4 + n_ff * 4 + n_slices * rows_listed * 4  # h written + read, flags, flag/index scans
               + 2 * splits * d * 4 + 4 * d)                          # split-K parts written + read, x
    names = launches(source, kind_symbol(source, kind))
    per_launch = []
    for name in names:
        regs, smem = usage.get(name, (0, 0))
        per_launch.append((name, regs, smem, resident_blocks(regs, smem, sched.threads)))
    # down launch (the second): per warp `rows` 16-byte loads per lane while its list holds that many rows
    lane_bytes = sched.vector_bytes
    per_warp_positions = rows_listed / splits / sched.warps
    listed = per_warp_positions if kind in ("indexed", "dense") else per_warp_positions * (1 - sparsity)
    down_rows = min(sched.rows, max(listed, 0.0))
    down_blocks = per_launch[1][3] if len(per_launch) > 1 else 0
    down_flight = down_blocks * sched.warps * down_rows * sched.warp * lane_bytes
    gate_chunks = -(-d // (sched.warp * vector_elems(d, dtype, sched)))  # unrolled 16-byte loads per lane per row
    gate_blocks = per_launch[0][3] if per_launch else 0
    in_flight = min(gate_chunks, unrolled_loads(ptx, names[0])) if ptx and names else gate_chunks
    gate_flight = gate_blocks * sched.warps * in_flight * sched.warp * lane_bytes
    return {"kind": kind, "launches": len(names), "per_launch": per_launch, "weight_MB": weights / 1e6,
            "scratch_MB": scratch / 1e6, "splits": splits, "gate_inflight_KB": gate_flight / 1024,
            "down_inflight_KB": down_flight / 1024, "down_rows_per_warp": down_rows,
            "x_MB": x_reads(kind, d, n_ff, dtype, sparsity, sched.warps) / 1e6}


def kind_symbol(source: str, kind: str) -> str:
    tag = {"threshold": "thrgate"}.get(kind, kind)
    m = re.search(rf"(actsparse_cuda_gmlp_{tag}_\w+?)_kernel\b", source)
    return m.group(1)


@cache
def build(d: int, n_ff: int, dtype: str, arch: str):
    """(schedule, CUDA source, ptxas usage, PTX) of every kernel kind at these dims (one build per process: the
    report at several sparsities reuses it)."""
    from actsparse.codegen.cuda_support import cuda_source
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.kernels.common import build_kernels
    from actsparse.codegen.schedules import schedule_for
    from actsparse.targets.cuda import target as cuda_target

    target = cuda_target(arch)  # the architecture's reference part (multiprocessors) unless a GPU is here
    sched = schedule_for(target)
    prims = [kernel(k, d, n_ff, dtype=dtype, sched=sched, gate_act="silu" if k == "threshold" else "relu",
                    **({"criterion": "gate"} if k == "threshold" else {})) for k in KINDS]
    from actsparse.codegen.cuda_support import compile_ptx

    source = cuda_source(build_kernels(prims, target.tvm_target()).mod)
    return sched, source, ptxas_usage(source, arch), compile_ptx(source, arch)


def report(d: int, n_ff: int, dtype: str, sparsity: float, arch: str) -> list[dict]:
    sched, source, usage, ptx = build(d, n_ff, dtype, arch)
    rows = [figures(k, d, n_ff, dtype, sparsity, sched, source, usage, ptx) for k in KINDS]
    print(f"\n**Roofline of the generated CUDA code** — d={d}, n_ff={n_ff}, weights {dtype}, {arch} "
          f"({sched.multiprocessors} SMs), {sparsity:.0%} inactive; computed from the source and ptxas, not timed\n")
    print("| kernel | launches | regs / smem B / blocks per SM (per launch) | weights MB | scratch MB | split-K | "
          "in flight per SM: gate KB | down KB (rows/warp) | x read by gate/up MB (L1/L2) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        occ = "; ".join(f"{regs}/{smem}/{blocks}" for _, regs, smem, blocks in r["per_launch"])
        print(f"| {r['kind']} | {r['launches']} | {occ} | {r['weight_MB']:.1f} | {r['scratch_MB']:.2f} | "
              f"{r['splits']} | {r['gate_inflight_KB']:.0f} | {r['down_inflight_KB']:.0f} "
              f"({r['down_rows_per_warp']:.1f}) | {r['x_MB']:.1f} |")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--small", action="store_true", help=f"dims {SMALL}")
    args = ap.parse_args(argv)
    d, n_ff = SMALL if args.small else MISTRAL
    report(d, n_ff, args.dtype, args.sparsity, args.arch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
