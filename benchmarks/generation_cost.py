"""What choosing a token costs on top of a decode step (runtime/generation.py): the chooser per token, at a real
vocabulary, for plain greedy, greedy with Qwen2.5-Instruct's repetition_penalty, and sampling with its warpers.

    python -m actsparse.benchmarks.generation_cost [--vocab 151936] [--context 512]

With --model (a Hugging Face folder, compiled dense): what a beam search step costs against a greedy token, split
into the k decoder steps, the cache copies (runtime/beam_search.py) and the rest (log-softmax, processors, top-k
over k x vocab, on the host):

    python -m actsparse.benchmarks.generation_cost --model ~/.cache/actsparse/models/smollm2 --beams 4
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


def beam_cost(model: str, beams: int, new: int, max_seq: int) -> None:
    import actsparse
    from actsparse.runtime import beam_search

    lm = actsparse.compile(model, mode="dense", max_seq=max_seq)
    prompt = np.array([lm.tokenizer("The quick brown fox jumps over the lazy dog. Once upon a time")["input_ids"]])
    spent = {"prefill": 0.0, "decoder steps": 0.0, "cache copies": 0.0}
    calls = dict.fromkeys(spent, 0)

    def timed(name, function):
        def call(*args):
            calls[name] += 1
            start = time.perf_counter()
            try:
                return function(*args)
            finally:
                spent[name] += time.perf_counter() - start
        return call

    fixed = dict(min_new_tokens=new)  # no eos before `new` tokens: every run takes new - 1 steps after the prefill
    lm.generate(prompt, 4, **fixed)  # warm up
    start = time.perf_counter()
    lm.generate(prompt, new, **fixed)
    greedy = (time.perf_counter() - start) / new
    step, copy, prefill = lm.step, beam_search.copy_state, lm.prefill
    lm.step, beam_search.copy_state = timed("decoder steps", step), timed("cache copies", copy)
    lm.prefill = timed("prefill", prefill)
    try:
        start = time.perf_counter()
        lm.generate(prompt, new, num_beams=beams, **fixed)
        total = time.perf_counter() - start
    finally:
        lm.step, beam_search.copy_state, lm.prefill = step, copy, prefill
    steps = new - 1
    print(f"load average {os.getloadavg()[0]:.2f}; {model}: vocab {lm.spec.vocab_size}, cache "
          f"{beam_search.cache_bytes(lm) / 2**20:.1f} MiB, prompt {prompt.shape[1]}, {new} new tokens")
    print(f"greedy: {greedy * 1e3:.1f} ms/token (prefill included)")
    rest = total - sum(spent.values())
    print(f"beam search k={beams}: prefill {spent['prefill'] * 1e3:.0f} ms, then "
          f"{(total - spent['prefill']) / steps * 1e3:.1f} ms/step, of which decoder steps "
          f"{spent['decoder steps'] / steps * 1e3:.1f}, cache copies {spent['cache copies'] / steps * 1e3:.2f} "
          f"({calls['cache copies']} copies, {calls['decoder steps']} decoder steps in {steps} steps), the rest "
          f"{rest / steps * 1e3:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--context", type=int, default=512, help="ids so far (prompt + generated)")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--model", help="a Hugging Face folder: the cost of a beam search step instead")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--max-seq", type=int, default=128)
    args = parser.parse_args()
    if args.model:
        return beam_cost(args.model, args.beams, min(args.tokens, 64), args.max_seq)
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
