"""`actsparse demo`: the embedded tiny dReLU model, compiled in exact mode, decoding greedily with a KV cache.

Decoding one token per step is the batch-1 regime the compiler targets. The model goes through the same path as
any transformers decoder: `models/decode.py` states it as a LlamaForCausalLM (same weights), `actsparse.compile`
derives the KV-cached decoding function from its forward, and the exact and dense builds and torch eager (the
transformers model with its own cache) run the same greedy loop on the same prompt. Printed: the per-layer
sparsity report (measured on the prompt), how the compiled model agrees with torch eager (same tokens, largest
logit difference over every step), and tokens/s of each (the median of 3 interleaved rounds), all from this run.
"""

from __future__ import annotations

import time

import numpy as np

RUNS = ("actsparse exact", "actsparse dense", "torch eager")
ROUNDS = 3  # timed rounds per runner, interleaved; the median round is reported (a single round of this tiny model's
# 0.4 ms steps swung 3x on a shared machine)


def greedy(lm, ids: np.ndarray, tokens: int):
    """Greedy decoding with a compiled decoder's prefill/step: (new ids, logits of each, seconds of the steps
    after prefill)."""
    state = lm.prefill(ids)
    new, logits = [int(np.argmax(state.logits))], [state.logits]
    start = time.perf_counter()
    for _ in range(tokens - 1):
        step_logits, state = lm.step(new[-1], state)
        new.append(int(np.argmax(step_logits)))
        logits.append(step_logits)
    return new, np.stack(logits), time.perf_counter() - start


def torch_greedy(model, ids: np.ndarray, tokens: int):
    """The same loop in torch eager: the transformers model with its own KV cache."""
    import torch

    from .frontends.kv_cache import cache_argument, returned_cache

    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), use_cache=True)
        cache, step_logits = returned_cache(out), out.logits[0, -1].numpy()
        new, logits = [int(np.argmax(step_logits))], [step_logits]
        start = time.perf_counter()
        for _ in range(tokens - 1):
            out = model(input_ids=torch.tensor([[new[-1]]]), use_cache=True, **{cache_argument(model): cache})
            cache, step_logits = returned_cache(out), out.logits[0, -1].numpy()
            new.append(int(np.argmax(step_logits)))
            logits.append(step_logits)
    return new, np.stack(logits), time.perf_counter() - start


def run_demo(prompt: str, tokens: int = 48, plot: str | None = None) -> dict:
    import torch
    from rich.console import Console
    from rich.progress import Progress

    from . import api
    from .errors import DecodeInputError
    from .models import ByteTokenizer, load_tiny
    from .models.decode import as_transformers

    console = Console()
    torch.manual_seed(0)
    model = as_transformers(load_tiny("drelu"))
    max_seq = model.config.max_position_embeddings
    tokenizer = ByteTokenizer()
    ids = np.array([tokenizer.encode(prompt)], dtype=np.int64)
    if ids.shape[1] + tokens > max_seq:
        raise DecodeInputError(f"prompt ({ids.shape[1]} bytes) + tokens ({tokens}) exceed the model's {max_seq} "
                               "positions; shorten the prompt or ask for fewer tokens")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("compiling (exact, then dense)", total=2)
        # the prompt is the example: the report's sparsity is measured on it
        exact = api.compile(model, (ids,), target="x86", mode="exact", max_seq=max_seq)
        progress.advance(task)
        dense = api.compile(model, (ids,), target="x86", mode="dense", max_seq=max_seq)
        progress.advance(task)
    console.print(exact.report)
    if plot:
        console.print(f"sparsity plot: {exact.report.plot(plot)}")

    runners = dict(zip(RUNS, (lambda n: greedy(exact, ids, n), lambda n: greedy(dense, ids, n),
                              lambda n: torch_greedy(model, ids, n))))
    for run in runners.values():
        run(2)  # warm-up
    rounds = {name: [] for name in RUNS}
    for _ in range(ROUNDS):  # interleaved: a burst of load on a shared machine hits every runner alike
        for name, run in runners.items():
            rounds[name].append(run(tokens))
    runs = {name: sorted(done, key=lambda r: r[2])[ROUNDS // 2] for name, done in rounds.items()}  # the median
    generated, logits, _ = runs["actsparse exact"]
    reference, reference_logits, _ = runs["torch eager"]
    diff = float(np.abs(logits - reference_logits).max())
    agree = float(np.mean([a == b for a, b in zip(generated, reference)]))
    console.print(f"[bold]prompt[/]     {prompt!r}")
    console.print(f"[bold]generated[/]  {tokenizer.decode(generated)!r}")
    console.print(f"agreement with torch eager: {agree:.0%} of {tokens} greedy tokens identical; "
                  f"max |logit diff| {diff:.2e} over {len(logits)} decoding steps")
    steps = max(tokens - 1, 1)
    base = runs["actsparse dense"][2]
    for name, (_, _, seconds) in runs.items():
        console.print(f"{name:16s} {steps / seconds:8.1f} tokens/s   ({base / seconds:.2f}x of actsparse dense)")
    return {"agreement": agree, "max_logit_diff": diff, "tokens_per_s": {k: steps / v[2] for k, v in runs.items()},
            "mean_sparsity": exact.report.mean_sparsity, "text": tokenizer.decode(generated)}
