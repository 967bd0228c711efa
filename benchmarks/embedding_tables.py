"""Quantized embedding tables (passes/quantize.py, session 22): a real model compiled with `quantize=`, before/after as
an A/B of two trees (run `build` once per tree with its PYTHONPATH), then each artifact measured in its own process.

    python -m actsparse.benchmarks.embedding_tables build gemma3|smollm2 OUT [--quantize int4]
    python -m actsparse.benchmarks.embedding_tables measure gemma3|smollm2 ARTIFACT [--windows 4] [--window 128]
    python -m actsparse.benchmarks.embedding_tables untied gemma3|smollm2 [--windows 4] [--window 512]

build: `compile(cached float folder, mode="dense", quantize=..., prequantized=read_gguf_quantized(the GGUF))` (the
folder is threshold_frontier's float copy of the package's GGUF, as gguf_kquants' build), saved to OUT; prints the
compile seconds, the quantize statistics and the weight bytes.
measure: the artifact's size on disk, the resident memory loading it adds and the process's peak after decoding,
decode tokens/s (gguf_kquants' passage: prompt, then teacher-forced steps; median of 5, the target's threads), and
perplexity on threshold_frontier's held-out prose windows (BOS + `--window` tokens each), scored from the artifact's
own step logits: what the compiled model computes, not a torch imitation of it.
untied: the policy question for an untied table (these two models tie theirs): torch fake-quant (quant_quality's
`fake_quantized`, the kernels' exact values) of every Linear as int4 stores it, lm_head int8, and the input table
untied and stored fp32 / int8 / int4; perplexity on quant_quality's windows.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np

from .decode_runners import actsparse_rates, load_average
from .threshold_frontier import load_model, model_source, prose_windows


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def build(args) -> None:
    import actsparse
    from actsparse.frontends.gguf_quant import read_gguf_quantized
    from actsparse.passes.calibration_data import cache_dir

    from .decode_part_b import text_tokens

    folder, gguf = model_source(args.model)
    _, tok = load_model(args.model)   # the cached float folder (converted once)
    _, prompt, feed = text_tokens(tok, 32)
    passage = np.concatenate([prompt[0], feed])[None]
    kept = read_gguf_quantized(folder / gguf)
    t0 = time.perf_counter()
    lm = actsparse.compile(str(cache_dir() / "models" / args.model), (passage,), mode="dense", max_seq=300,
                           quantize=args.quantize, prequantized=kept)
    took = time.perf_counter() - t0
    lm.save(args.out)
    weights = lm.module.graph.weights
    print(f"{args.out}: compiled in {took:.0f} s; quantize stats {lm.report.pass_stats.get('quantize')}; "
          f"{len(weights)} weights, {sum(a.nbytes for a in weights.values()) / 1e6:.1f} MB (load {load_average()})")


def perplexity(lm, windows) -> float:
    total, count = 0.0, 0
    for w in windows:
        ids = np.asarray(w).reshape(-1)
        state = lm.prefill(ids[None, :1])
        logits = state.logits
        for t in range(1, len(ids)):
            z = np.asarray(logits, np.float64).reshape(-1)
            z = z - z.max()
            total -= z[ids[t]] - math.log(np.exp(z).sum())
            count += 1
            logits, state = lm.step(int(ids[t]), state)
    return math.exp(total / count)


def measure(args) -> None:
    from transformers import AutoTokenizer

    import actsparse
    from actsparse.passes.calibration_data import cache_dir

    from .decode_part_b import text_tokens

    tok = AutoTokenizer.from_pretrained(str(cache_dir() / "models" / args.model))   # not the float model: its RSS
    size = sum(f.stat().st_size for f in Path(args.artifact).rglob("*") if f.is_file())
    before = rss_mb()
    lm = actsparse.load(args.artifact)
    loaded = rss_mb() - before
    _, prompt, feed = text_tokens(tok, 32)
    rate = actsparse_rates({"a": lm}, prompt, feed, 5)["a"]
    ppl = perplexity(lm, prose_windows(tok, "eval", args.window, args.windows))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| {args.artifact} | {size / 1e6:.1f} MB | +{loaded:.0f} MB | {peak:.0f} MB | {rate:.1f} | {ppl:.4f} |  "
          f"(load {load_average()})", flush=True)


def untied(args) -> None:
    """Perplexity of the model with every Linear fake-quantized as `quantize="int4"` stores it (lm_head int8) and the
    input embedding table, untied from lm_head, stored as fp32 / int8 / int4: what an untied table's storage costs."""
    import torch

    from actsparse.passes.torch_plans import stored

    from .quant_quality import fake_quantized, nll_torch, token_windows

    torch.set_num_threads(2)
    model, tok = load_model(args.model)
    windows = token_windows(tok, args.windows, args.window)
    table = model.get_input_embeddings().weight.detach().clone()
    base = fake_quantized(model, "int4", "sparse", lm_head="int8")   # lm_head gets its own Parameter: untied
    print(f"{args.model}: {args.windows} x {args.window} tokens of pydoc prose, Linear int4 (lm_head int8)\n\n"
          "| input embedding table | perplexity |\n|---|---:|", flush=True)
    for kind in ("fp32", "int8", "int4"):
        values = table if kind == "fp32" else stored(table, kind, "out")
        base.get_input_embeddings().weight = torch.nn.Parameter(values, requires_grad=False)
        nll, n = nll_torch(base, windows)
        print(f"| {kind} | {math.exp(nll / n):.4f} |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    b = sub.add_parser("build")
    b.add_argument("model", choices=["gemma3", "smollm2"])
    b.add_argument("out")
    b.add_argument("--quantize", default="int4")
    m = sub.add_parser("measure")
    m.add_argument("model", choices=["gemma3", "smollm2"])
    m.add_argument("artifact")
    m.add_argument("--windows", type=int, default=4)
    m.add_argument("--window", type=int, default=128)
    u = sub.add_parser("untied")
    u.add_argument("model", choices=["gemma3", "smollm2"])
    u.add_argument("--windows", type=int, default=4)
    u.add_argument("--window", type=int, default=512)
    args = ap.parse_args(argv)
    {"build": build, "measure": measure, "untied": untied}[args.part](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
