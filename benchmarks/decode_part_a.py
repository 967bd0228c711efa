"""Part (a) of benchmarks/decode.py: a Mistral-7B-dims ReGLU decoder with synthetic weights (see decode.py's
docstring), actsparse exact / exact reading every gate row / our dense vs transformers and llama.cpp, in rounds."""

from __future__ import annotations

import gc
import os
import resource
import sys
import tempfile
import time

from .decode_models import build_mistral, step_bytes, write_llama_gguf
from .decode_runners import (
    PROMPT_LEN,
    LlamaChild,
    actsparse_run,
    actsparse_warm_up,
    load_average,
    round_ratios,
    round_robin,
    summarize,
    torch_run,
    torch_setup,
)
from .decode_tables import rate_cell

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
    from actsparse.runtime.bench import dense_twin_decoder

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
        dense = dense_twin_decoder(dense_gate)  # = compile(mode="dense"), same weights
        decoders = {"exact": exact, "exact dense-gate": dense_gate, "dense": dense}
        for lm in decoders.values():
            actsparse_warm_up(lm, prompt, feed)
        torch_setup(threads)
        torch_run(model, prompt, 2)  # warm-up
        llama = LlamaChild(gguf_path, prompt, feed, threads, max_seq + 8)
        runners = {name: (lambda lm=lm: actsparse_run(lm, prompt, feed)) for name, lm in decoders.items()}
        runners.update({"torch": lambda: torch_run(model, prompt, tokens), "llama.cpp": llama.run})
        row["load"]["start"] = load_average()
        print(f"  {repeats} rounds of {', '.join(runners)} (load {row['load']['start']})", file=sys.stderr, flush=True)
        rates = round_robin(runners, repeats)
        row["load"]["end"] = load_average()
        llama.close()
    row["rates"] = rates
    row.update(summarize(rates))
    row["round_ratios"] = round_ratios(rates, RATIOS_A)
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row



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
        rates = " | ".join(rate_cell(r[name]) for name in ("exact", "exact dense-gate", "dense", "torch", "llama.cpp"))
        out.append(f"| {r['dtype']} | {rates} | **{ratio[0]}** | **{ratio[1]}** | {ratio[2]} | "
                   f"{ratio[3]} | {ratio[4]} | {sp:.1%} | {cert} | {_bandwidths(r)} | "
                   f"{r['step_bytes']['dense'] / r['step_bytes']['exact']:.2f}x | "
                   f"{r['load']['start']} → {r['load']['end']} |")
    out += ["", "Spread over the rounds, tokens/s min / median / max (and (max - min) / median):", "",
            "| weights | " + " | ".join(RUNNERS_A) + " |", "|---|" + "---:|" * len(RUNNERS_A)]
    for r in rows:
        cells = []
        for name in RUNNERS_A:
            lo, mid, hi = r["spread"].get(name, (None, None, None))
            cells.append(f"{lo:.2f} / {mid:.2f} / {hi:.2f} ({(hi - lo) / mid:.0%})" if mid else rate_cell(r.get(name)))
        out.append(f"| {r['dtype']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _bandwidths(r: dict) -> str:
    """GB/s each runner reads weights at: bytes per step (`step_bytes`) x tokens/s."""
    sb = r["step_bytes"]
    rates = [(r["exact"], sb["exact"]), (r["dense"], sb["dense"]), (r["llama.cpp"], sb["dense"])]
    return " / ".join(f"{rate * nbytes / 1e9:.1f}" if isinstance(rate, float) else "n/a" for rate, nbytes in rates)
