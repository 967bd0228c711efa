"""`actsparse demo`: the embedded tiny dReLU model, compiled in exact mode, generating greedily.

Prints the per-layer sparsity report, how the compiled model agrees with torch eager (same tokens, logit
difference), and tokens/s of the sparse build against a dense build and torch, all measured in this run.
"""

from __future__ import annotations

import time

import numpy as np


def greedy(step, ids: np.ndarray, tokens: int) -> tuple[list[int], float]:
    """Generate `tokens` ids by re-running the full prefix (no KV cache); returns (new ids, seconds)."""
    seq = ids.copy()
    start = time.perf_counter()
    for _ in range(tokens):
        logits = step(seq)
        seq = np.concatenate([seq, logits[:, -1].argmax(-1)[:, None].astype(seq.dtype)], axis=1)
    return seq[0, ids.shape[1]:].tolist(), time.perf_counter() - start


def run_demo(prompt: str, tokens: int = 48, plot: str | None = None) -> dict:
    import torch
    from rich.console import Console
    from rich.progress import Progress

    from . import api
    from .models import ByteTokenizer, load_tiny

    console = Console()
    torch.manual_seed(0)
    model = load_tiny("drelu")
    tokenizer = ByteTokenizer()
    ids = np.array([tokenizer.encode(prompt)], dtype=np.int64)
    example = (torch.from_numpy(ids),)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("compiling (exact, then dense)", total=2)
        exact = api.compile(model, example, target="x86", mode="exact")
        progress.advance(task)
        dense = api.compile(model, example, target="x86", mode="dense")
        progress.advance(task)
    console.print(exact.report)
    if plot:
        console.print(f"sparsity plot: {exact.report.plot(plot)}")

    def torch_step(seq):
        with torch.no_grad():
            return model(torch.from_numpy(seq)).numpy()

    runs = {}
    for name, step in (("actsparse exact", exact), ("actsparse dense", dense), ("torch eager", torch_step)):
        greedy(step, ids, 2)  # warm-up
        runs[name] = greedy(step, ids, tokens)
    reference, _ = runs["torch eager"]
    generated, _ = runs["actsparse exact"]
    full = np.array([[*ids[0], *generated]], dtype=np.int64)
    diff = float(np.abs(exact(full) - torch_step(full)).max())
    agree = float(np.mean([a == b for a, b in zip(generated, reference)]))
    console.print(f"[bold]prompt[/]     {prompt!r}")
    console.print(f"[bold]generated[/]  {tokenizer.decode(generated)!r}")
    console.print(f"agreement with torch eager: {agree:.0%} of {tokens} greedy tokens identical; "
                  f"max |logit diff| {diff:.2e} over {full.shape[1]} positions")
    base = runs["actsparse dense"][1]
    for name, (_, seconds) in runs.items():
        console.print(f"{name:16s} {tokens / seconds:8.1f} tokens/s   ({base / seconds:.2f}x of actsparse dense)")
    return {"agreement": agree, "max_logit_diff": diff, "tokens_per_s": {k: tokens / v[1] for k, v in runs.items()},
            "mean_sparsity": exact.report.mean_sparsity, "text": tokenizer.decode(generated)}
