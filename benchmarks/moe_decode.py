"""Decode tokens/s of a MoE decoder from a GGUF file: actsparse (routed experts, the file's 4-bit blocks kept) vs
llama.cpp on the same file.

    python -m actsparse.benchmarks.moe_decode [--d 2048] [--layers 4] [--experts 32] [--used 8] [--quant Q4_0]
                                              [--tokens 32] [--repeats 5] [--threads N] [--gguf PATH]
                                              [--threshold SPARSITY] [--routed-experts cuts,input]

No MoE GGUF comes from PyPI, so the file is synthetic (`decode_models.write_qwen3_moe_gguf`: Qwen3-30B-A3B's layer
shapes — d 2048, experts of width 768, 16 query / 4 KV heads — with fewer experts and layers by default, random
weights). What is timed is what users run: `actsparse.compile(path, quantize="int4")` (the experts route: a token reads
its k experts' rows; gate, up and down are the file's blocks, the down stack read an output per row as the file stores
it, `routed-down-as-stored`) and `--requantize-gguf`'s all-4-bit build (every matrix quantized from its values, the down
an output per row), with `--threshold S` also both in threshold mode at sparsity S for each of `--routed-experts`
(cuts, the default: each expert neuron's cuts, the routed kernel reading every gate row and the up and down rows of
the neurons the token keeps; input: each routed expert input-sparse, the routed kernel reading the gate and up rows of
the channels a token keeps and the down rows of its kept neurons, passes/routed_input.py; the down stack re-laid a
neuron per row), interleaved (8-token prompt, then `--tokens` steps, median of `--repeats`); then
llama.cpp (llama-cpp-python) on the same file in a child process, same threads. The weights (hundreds of MB) stream
from DRAM each step: no cache eviction needed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from .decode_models import write_qwen3_moe_gguf
from .decode_runners import PROMPT_LEN, actsparse_rates, llama_cpp_rate, load_average
from .decode_tables import rate_cell, ratio_cell
from .moe_quality import threshold_options


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--used", type=int, default=8, help="experts per token (top-k)")
    ap.add_argument("--quant", default="Q4_0", choices=("Q4_0", "Q8_0", "Q4_K_M"),
                    help="the file's matrices (Q4_K_M: Q4_K, the experts' down Q6_K)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gguf", help="time this MoE GGUF instead of writing a synthetic one")
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--threshold", type=float, default=None, metavar="SPARSITY",
                    help="also time threshold mode's builds at this sparsity, each routed expert calibrated on its "
                         "routed tokens (random-id prompts: the weights are random too)")
    ap.add_argument("--routed-experts", default="cuts,input",
                    help="threshold mode's routed experts: per-neuron cuts (the default), input sparsity (the "
                         "sparsify-threshold option `routed_experts`)")
    args = ap.parse_args(argv)

    import numpy as np

    import actsparse

    with tempfile.TemporaryDirectory() as tmp:
        path = args.gguf or os.path.join(tmp, "moe.gguf")
        if not args.gguf:
            t0 = time.perf_counter()
            write_qwen3_moe_gguf(path, d=args.d, layers=args.layers, experts=args.experts, used=args.used,
                                 quant=args.quant)
            print(f"wrote {os.path.getsize(path) / 2**20:.0f} MB in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        builds = {"actsparse int4 (the file's blocks)": {"quantize": "int4"},
                  "actsparse int4 (--requantize-gguf: all 4-bit)": {"quantize": "int4", "prequantized": {}}}
        decoders, stats = {}, {}
        max_seq = PROMPT_LEN + args.tokens + 8
        if args.threshold is not None:
            rng = np.random.default_rng(7)
            vocab_ids = 1000   # below any synthetic file's vocabulary
            calibration = [rng.integers(0, vocab_ids, (1, min(max_seq, 32))) for _ in range(16)]
            threshold = {"mode": "threshold", "sparsity": args.threshold, "calibration": calibration}
            for kind in args.routed_experts.split(","):
                builds.update({f"{name.replace('actsparse int4', f'actsparse int4 threshold, experts {kind},')} at "
                               f"{args.threshold:g}": {**options, **threshold, "routed_experts": kind}
                               for name, options in list(builds.items()) if "threshold" not in name})
        for name, options in builds.items():
            t0 = time.perf_counter()
            with threshold_options(routed_experts=options.pop("routed_experts", "cuts")):
                decoders[name] = actsparse.compile(path, max_seq=max_seq, **options)
            stats[name] = decoders[name].report.pass_stats
            print(f"  compiled {name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        vocab = min(lm.spec.vocab_size for lm in decoders.values())
        rng = np.random.default_rng(1)
        prompt, feed = rng.integers(0, vocab, (1, PROMPT_LEN)), rng.integers(0, vocab, args.tokens)
        load = [load_average()]
        rates = actsparse_rates(decoders, prompt, feed, args.repeats)
        del decoders
        load.append(load_average())
        llama = None if args.no_llama_cpp else llama_cpp_rate(path, prompt, feed, args.repeats, args.threads,
                                                              max_seq + 8)
        load.append(load_average())
        size = os.path.getsize(path)

    print(f"\nMoE GGUF ({'synthetic Qwen3-MoE, ' if not args.gguf else ''}d {args.d}, {args.layers} layers, "
          f"{args.experts} experts of 768, top-{args.used}, {args.quant}, {size / 2**20:.0f} MB); {PROMPT_LEN}-token "
          f"prompt, then {args.tokens} steps, median of {args.repeats}, {args.threads} threads; load average "
          f"{' → '.join(load)}\n")
    print("| runner | tokens/s | vs llama.cpp | routed layers | experts' down |\n|---|---:|---:|---:|---|")
    for name, rate in rates.items():
        routed = stats[name].get("route-moe", {}).get("routed-moe", 0)
        kind = [k for k in ("thresholds", "input") if stats[name].get("route-moe", {}).get(f"routed-{k}")]
        routed = f"{routed} ({kind[0]})" if kind else routed
        quantized = stats[name].get("quantize", {})
        down = ("the file's, by outputs" if quantized.get("routed-down-as-stored") else
                "4-bit from its values, by outputs" if quantized.get("routed-down-by-outputs") else
                "re-laid q8_0" if quantized.get("requantized-int8") else "re-laid 4-bit")
        print(f"| {name} | {rate:.1f} | {ratio_cell(rate, llama)} | {routed} | {down} |")
    print(f"| llama.cpp | {rate_cell(llama)} | - | - | the file's |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
