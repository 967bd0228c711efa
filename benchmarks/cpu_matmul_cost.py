"""What the CPU matmul schedule pass (codegen/cpu_matmul.py) costs a build that has no legalized matmul: a dense
tiny Llama decoder built with the pass run on every PrimFunc (as before session 17: `calls_matmul` forced true) and
as now (no `R.matmul` in the module: the pass left out), interleaved in one process, plus the time the pass spends
deciding which PrimFuncs are legalized matmuls.

    python -m actsparse.benchmarks.cpu_matmul_cost [--rounds 3] [--layers 2]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    import torch
    import transformers

    from actsparse import targets
    from actsparse.codegen import cpu_matmul
    from actsparse.codegen.build import build
    from actsparse.frontends.decoder_export import import_decoder
    from actsparse.passes import pipeline_for, run_pipeline

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=args.layers,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    model = transformers.LlamaForCausalLM(config).eval()
    target = targets.get("x86")
    graph = run_pipeline(import_decoder(model, 32)[0], pipeline_for("dense", target)).graph

    decided = {"calls": 0, "matmuls": 0, "seconds": 0.0}
    original = cpu_matmul.is_legalized_matmul

    def timed(func):
        start = time.perf_counter()
        found = original(func)
        decided["seconds"] += time.perf_counter() - start
        decided["calls"] += 1
        decided["matmuls"] += found
        return found

    cpu_matmul.is_legalized_matmul = timed
    print(f"load average {os.getloadavg()[0]:.2f}")
    builds = {"pass run": [], "pass left out": []}
    checked, original_check = [], cpu_matmul.calls_matmul

    def skipping(mod):  # the check that leaves the pass out, timed
        start = time.perf_counter()
        found = original_check(mod)
        checked.append(time.perf_counter() - start)
        return found

    build(graph, target)  # warm: TVM's first build loads LLVM
    for _ in range(args.rounds):
        for name in builds:
            cpu_matmul.calls_matmul = (lambda mod: True) if name == "pass run" else skipping
            start = time.perf_counter()
            build(graph, target)
            builds[name].append(time.perf_counter() - start)
    cpu_matmul.calls_matmul = original_check
    per_build = {k: v / args.rounds for k, v in decided.items()}  # only the "pass run" builds decide
    for name, times in builds.items():
        print(f"{name}: build min {min(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s")
    print(f"the pass per build that runs it: {per_build['calls']:.0f} PrimFuncs looked at, "
          f"{per_build['matmuls']:.0f} legalized matmuls, {per_build['seconds'] * 1e3:.1f} ms deciding; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"calls_matmul (the check that leaves it out): {max(checked) * 1e3:.1f} ms at most per build")


if __name__ == "__main__":
    main()
