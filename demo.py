"""`actsparse demo`: the embedded tiny dReLU model, compiled in exact mode, decoding greedily with a KV cache.

Decoding one token per step is the batch-1 regime the compiler targets. The model runs as a KV-cached step
(`models/decode.py`); the exact and dense builds and torch eager run the same greedy loop on the same prompt.
Printed: the per-layer sparsity report (measured on the prompt's last token), how the compiled model agrees
with torch eager (same tokens, largest logit difference over every step), and tokens/s of each, all from
this run.
"""

from __future__ import annotations

import warnings

import numpy as np

RUNS = ("actsparse exact", "actsparse dense", "torch eager")


def run_demo(prompt: str, tokens: int = 48, plot: str | None = None) -> dict:
    import torch
    from rich.console import Console
    from rich.progress import Progress

    from . import api
    from .models import ByteTokenizer, load_tiny
    from .models.decode import TinyLlamaStep, decode

    console = Console()
    torch.manual_seed(0)
    step = TinyLlamaStep(load_tiny("drelu")).eval()
    tokenizer = ByteTokenizer()
    ids = np.array([tokenizer.encode(prompt)], dtype=np.int64)
    if ids.shape[1] + tokens > step.config.max_seq:
        raise ValueError(f"prompt ({ids.shape[1]} bytes) + tokens ({tokens}) exceed the model's "
                         f"{step.config.max_seq} positions")

    def torch_step(*arrays):
        with torch.no_grad():
            return [t.numpy() for t in step(*(torch.from_numpy(a) for a in arrays))]

    # compile on a real token: the prompt's last, with the cache the prompt fills (the report's sparsity)
    cache = step.empty_cache()
    decode(torch_step, ids[:, :-1], 1, cache)  # fills slots 0 .. len - 2 (and generates one id, unused)
    example = (ids[:, -1:], np.array([ids.shape[1] - 1], np.int64), *cache)
    with Progress(console=console, transient=True) as progress, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*symbolic")  # a decode step has static shapes by design
        task = progress.add_task("compiling (exact, then dense)", total=2)
        exact = api.compile(step, example, target="x86", mode="exact")
        progress.advance(task)
        dense = api.compile(step, example, target="x86", mode="dense")
        progress.advance(task)
    console.print(exact.report)
    if plot:
        console.print(f"sparsity plot: {exact.report.plot(plot)}")

    runs = {}
    for name, fn in zip(RUNS, (exact, dense, torch_step)):
        decode(fn, ids, 2, step.empty_cache())  # warm-up
        runs[name] = decode(fn, ids, tokens, step.empty_cache())
    generated, logits, _ = runs["actsparse exact"]
    reference, reference_logits, _ = runs["torch eager"]
    diff = float(np.abs(logits - reference_logits).max())
    agree = float(np.mean([a == b for a, b in zip(generated, reference)]))
    console.print(f"[bold]prompt[/]     {prompt!r}")
    console.print(f"[bold]generated[/]  {tokenizer.decode(generated)!r}")
    console.print(f"agreement with torch eager: {agree:.0%} of {tokens} greedy tokens identical; "
                  f"max |logit diff| {diff:.2e} over {len(logits)} decoding steps")
    base = runs["actsparse dense"][2]
    for name, (_, _, seconds) in runs.items():
        console.print(f"{name:16s} {tokens / seconds:8.1f} tokens/s   ({base / seconds:.2f}x of actsparse dense)")
    return {"agreement": agree, "max_logit_diff": diff, "tokens_per_s": {k: tokens / v[2] for k, v in runs.items()},
            "mean_sparsity": exact.report.mean_sparsity, "text": tokenizer.decode(generated)}
