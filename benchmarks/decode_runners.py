"""The timing runners of benchmarks/decode.py: actsparse decoders, transformers `generate` and llama.cpp (kept loaded
in a child process), interleaved in rounds so a slow phase of a shared machine hits every runner alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from .decode_models import drop_from_page_cache

PROMPT_LEN = 8


def load_average() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


SETTLE_S = 0.5  # between runners of a round: the last one's spinning worker threads (OpenMP, ggml) go to sleep


def actsparse_warm_up(lm, prompt, feed) -> None:
    """The first calls of a module pay its one-time costs."""
    state = lm.prefill(prompt)
    for token in feed[:2]:
        _, state = lm.step(int(token), state)


def actsparse_run(lm, prompt, feed) -> float:
    """tokens/s of one decoder's steps over `feed` after prefilling `prompt` (untimed)."""
    import numpy as np

    state = lm.prefill(prompt)
    start = time.perf_counter()
    for token in feed:
        logits, state = lm.step(int(token), state)
        int(np.argmax(logits))
    return len(feed) / (time.perf_counter() - start)


def actsparse_rates(decoders: dict, prompt, feed, repeats: int) -> dict:
    """tokens/s of each decoder's steps over `feed` after prefilling `prompt`; runs interleaved, median."""
    import numpy as np

    for lm in decoders.values():
        actsparse_warm_up(lm, prompt, feed)
    rates = round_robin({name: (lambda lm=lm: actsparse_run(lm, prompt, feed)) for name, lm in decoders.items()},
                        repeats, settle=0.0)
    return {name: float(np.median(r)) for name, r in rates.items()}


def round_robin(runners: dict, rounds: int, settle: float = SETTLE_S) -> dict[str, list]:
    """Each runner (name -> callable returning tokens/s, or a note when it failed) once per round, `rounds` rounds,
    the starting runner rotating: a slow phase of a shared machine then hits every runner alike. -> name -> rates,
    one per round in round order."""
    names = list(runners)
    rates: dict[str, list] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            rates[name].append(runners[name]())
            time.sleep(settle)
    return rates


def summarize(rates: dict[str, list]) -> dict:
    """name -> median rate (a runner that failed: its note), and per runner min / median / max."""
    import numpy as np

    out, spread = {}, {}
    for name, values in rates.items():
        numbers = [v for v in values if isinstance(v, float)]
        if len(numbers) < len(values):
            out[name] = next(v for v in values if not isinstance(v, float))
            continue
        out[name] = float(np.median(numbers))
        spread[name] = [float(min(numbers)), out[name], float(max(numbers))]
    return {**out, "spread": spread}


def round_ratios(rates: dict[str, list], pairs) -> dict[str, float]:
    """Median over rounds of each pair's ratio within a round (both measured in the same minutes)."""
    import numpy as np

    out = {}
    for a, b in pairs:
        ratios = [x / y for x, y in zip(rates.get(a, []), rates.get(b, [])) if isinstance(x, float)
                  and isinstance(y, float)]
        if ratios:
            out[f"{a} / {b}"] = float(np.median(ratios))
    return out


def torch_setup(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def torch_run(model, prompt, tokens: int) -> float:
    """transformers generate, greedy: (N - 1) steps / (time of generate(N) - time of generate(1))."""
    import torch

    ids = torch.from_numpy(prompt)
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)

    def run(n):
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        return time.perf_counter() - start

    return (tokens - 1) / max(run(tokens) - run(1), 1e-9)


def torch_rate(model, prompt, tokens: int, repeats: int, threads: int) -> float:
    """`torch_run`'s median of `repeats`, after a warm-up."""
    import numpy as np

    torch_setup(threads)
    torch_run(model, prompt, 2)  # warm-up
    return float(np.median([torch_run(model, prompt, tokens) for _ in range(repeats)]))


class LlamaChild:
    """llama.cpp (llama-cpp-python) loaded once in a child process (`llama_cpp_serve`), one timed run per `run()`:
    so it can take its turn among the other runners. A crash of its native code (seen: SIGILL in libggml-cpu's
    batched path on a quantized file, avoided by feeding one token at a time) becomes a note instead of ending
    the benchmark."""

    def __init__(self, path: str, prompt, feed, threads: int, n_ctx: int):
        import numpy as np

        arg = json.dumps({"path": path, "prompt": np.asarray(prompt).tolist(), "feed": np.asarray(feed).tolist(),
                          "threads": threads, "n_ctx": n_ctx})
        self.proc = subprocess.Popen([sys.executable, "-m", "actsparse.benchmarks.decode", "--llama-child", arg],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.failed = ""
        self._answer("READY")  # loaded and warmed up

    def _answer(self, word: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(word):
                return line[len(word):].strip()
        self.failed = f"failed (exit {self.proc.wait()})"
        return self.failed

    def run(self) -> float | str:
        if self.failed:
            return self.failed
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        answer = self._answer("RATE ")
        return answer if self.failed else float(answer)

    def close(self) -> None:
        if not self.failed:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        self.proc.wait()


def llama_cpp_rate(path: str, prompt, feed, repeats: int, threads: int, n_ctx: int) -> float | str:
    """llama.cpp's median tokens/s of `repeats` runs (after a warm-up), or a note when it failed."""
    child = LlamaChild(path, prompt, feed, threads, n_ctx)
    try:
        return summarize({"llama.cpp": [child.run() for _ in range(repeats)]})["llama.cpp"]
    finally:
        child.close()


def llama_cpp_serve(path: str, prompt, feed, threads: int, n_ctx: int) -> None:
    """The child: load the file, warm up, print READY; then per "run" line one timed run over `feed` after
    prefilling `prompt`, printed as RATE <tokens/s>; "quit" ends it."""
    import llama_cpp
    import numpy as np

    # the prompt goes in one token at a time (n_batch = n_ubatch = 1): llama.cpp's batched matmul on quantized
    # blocks traps (SIGILL) on hosts whose CPU advertises AMX that the VM does not enable, while its one-token
    # path, the one decoding runs and this times, works; prefill is not timed
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          n_batch=1, n_ubatch=1, use_mmap=False, verbose=False)
    drop_from_page_cache(path)  # loading read the file: its pages are not what llama.cpp runs from
    vocab = llm.n_vocab()

    def run() -> float:
        llm.reset()
        llm.eval([int(t) for t in prompt[0]])
        start = time.perf_counter()
        for token in feed:
            llm.eval([int(token)])
            int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), (vocab,))))
        return len(feed) / (time.perf_counter() - start)

    run()  # warm-up
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print(f"RATE {run()}", flush=True)
