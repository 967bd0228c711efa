"""What choosing a token costs on top of a decode step (runtime/generation.py): the chooser per token, at a real
vocabulary, for plain greedy, greedy with Qwen2.5-Instruct's repetition_penalty, and sampling with its warpers.

    python -m actsparse.benchmarks.generation_cost [--vocab 151936] [--context 512]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from actsparse.runtime.generation import TokenChooser, resolve

CASES = {  # Qwen2.5-Instruct's generation_config.json: repetition_penalty 1.05, temperature 0.7, top_p 0.8, top_k 20
    "greedy": {},
    "greedy + repetition_penalty": {"repetition_penalty": 1.05},
    "greedy + repetition_penalty + no_repeat_ngram_size=3": {"repetition_penalty": 1.05, "no_repeat_ngram_size": 3},
    "sampling (Qwen2.5-Instruct)": {"repetition_penalty": 1.05, "do_sample": True, "temperature": 0.7, "top_p": 0.8,
                                    "top_k": 20, "seed": 0},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--context", type=int, default=512, help="ids so far (prompt + generated)")
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (args.tokens, args.vocab)).astype(np.float32)
    ids = list(rng.integers(0, args.vocab, args.context))
    print(f"load average {os.getloadavg()[0]:.2f}; vocab {args.vocab}, {args.context} ids so far, "
          f"{args.tokens} tokens")
    for name, settings in CASES.items():
        choose = TokenChooser(resolve({}, settings, args.vocab), args.context, args.tokens, (2,))
        start = time.perf_counter()
        for row in logits:
            choose(row, ids)
        print(f"{name:55s} {(time.perf_counter() - start) / args.tokens * 1e6:8.0f} us/token")


if __name__ == "__main__":
    main()
