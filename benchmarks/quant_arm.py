"""What the quantized row dots cost on aarch64, read from the generated code (no ARM board needed): the float path
(target "arm": weights dequantized in registers) against the integer one (target "arm-dotprod": x quantized once
per call to 8-bit blocks, `sdot`).

    python -m actsparse.benchmarks.quant_arm [--layouts q4_0,q8_0,q4_1] [--k 4096] [--kind linear|down]

For the linear kernel [64, k] of each layout and target: the row-streaming loop (8 rows, one 32-column group of
each per iteration; the loop with the most instructions among those that prefetch) — its instructions per
iteration and its main vector instructions, from `aarch64-linux-gnu-objdump -d` (codegen/asm_stats.py). Fewer
instructions per group is the design property; speed needs a board (`benchmarks/ffn_arm.py` times on one).

`--kind down`: the dense gated MLP's down projection instead (the row axpy over W_downᵀ, d = k, n_ff 64; its loop is
the largest prefetching loop): "arm" float, "arm-dotprod" with the float axpy (`int8_axpy=False`) and
with the integer one (`codegen/kernels/quant_axpy8.py`, layouts `INT8_DOTS["sdot128"].axpy`).
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layouts", default="q4_0,q8_0,q4_1")
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--kind", choices=("linear", "down"), default="linear")
    args = ap.parse_args(argv)
    from dataclasses import replace

    from actsparse import targets
    from actsparse.codegen.asm_stats import disassemble, innermost_loops
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.kernels.common import build_kernels
    from actsparse.codegen.kernels.quant_axpy8 import uses_int8_axpy
    from actsparse.codegen.schedules import schedule_for

    print(f"| layout | target | {'row dots' if args.kind == 'linear' else 'down axpy'} | instructions per 8 rows x 32 "
          "columns | main vector instructions |")
    print("|---|---|---|---:|---|")
    paths = [("arm", True), ("arm-dotprod", True)] if args.kind == "linear" else [
        ("arm", True), ("arm-dotprod", False), ("arm-dotprod", True)]
    for layout in args.layouts.split(","):
        for name, int8_axpy in paths:
            target = targets.get(name)
            sched = replace(schedule_for(target), int8_axpy=int8_axpy)
            prim = kernel("linear", args.k, 64, dtype=layout, sched=sched) if args.kind == "linear" else kernel(
                "dense", args.k, 64, gate_act="relu", up_act="identity", dtype=layout, sched=sched)
            asm = disassemble(build_kernels([prim], target.tvm_target()))
            loop = max((lp for lp in innermost_loops(asm) if lp.prefetches == sched.rows),
                       key=lambda lp: lp.end - lp.start)
            ops = ", ".join(f"{op} {n}" for op, n in loop.vector_ops.most_common(6))
            path = (sched.int8_dot or "float") if args.kind == "linear" else (
                "sdot" if uses_int8_axpy(layout, sched, "dense") else "float")
            print(f"| {layout} | {name} | {path} | {(loop.end - loop.start) // 4} | {ops} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
