"""Reproducible training recipe for the embedded tiny model.

    python -m actsparse.models.train --kind drelu            # the committed sparse model (~15 min, 1 core)
    python -m actsparse.models.train --kind swiglu           # its dense SwiGLU twin (L1 off by default)

Why an L1 penalty: a freshly trained dReLU MLP already zeroes ~75% of its intermediate entries (two
independent relus); penalising the mean |act_gate(gate) * act_up(up)| pushes pre-activations below zero so
that >= 80% of (token, neuron) entries are *exactly* zero on held-out text, which is what makes the
compiler's lossless sparse kernels worth having. The coefficient ramps up linearly so the model first
learns the language and then trades a little loss for sparsity.

Everything is seeded (data order, init, sampling) and runs on one CPU thread by default; the training
forward uses bfloat16 autocast (2x faster on CPUs with AVX512-BF16) while master weights, evaluation and
the sparsity measurement are float32. Outputs in `--out`: tiny_<kind>.safetensors (float16 weights),
tiny_<kind>.json (config, args, corpus, metrics, sample) and tiny_<kind>_sparsity.png.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from .checkpoint import WEIGHTS_DIR, save_checkpoint
from .data import DEFAULT_CAP_BYTES, eval_windows, load_corpus, random_batch
from .metrics import EvalResult, evaluate, unigram_bits_per_byte, zero_fraction
from .tiny import MLP_ACTIVATIONS, TinyConfig, TinyLlama
from .tokenizer import ByteTokenizer

DEFAULT_L1 = {"drelu": 0.05, "relu": 0.05, "swiglu": 0.0}
SPARSITY_TARGET = 0.8
SAMPLE_PROMPT = "def "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="actsparse.models.train")
    parser.add_argument("--kind", choices=MLP_ACTIVATIONS, default="drelu", help="MLP activation pair")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    parser.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor as a fraction of --lr")
    parser.add_argument("--warmup-steps", type=int, default=50, help="linear LR warm-up")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--l1", type=float, default=None, help="L1 coefficient (default: 0.05, 0 for swiglu)")
    parser.add_argument("--l1-start", type=float, default=0.1, help="fraction of steps before L1 ramps up")
    parser.add_argument("--l1-ramp", type=float, default=0.3, help="fraction of steps the ramp lasts")
    parser.add_argument("--d-model", type=int, default=TinyConfig.d_model)
    parser.add_argument("--n-layers", type=int, default=TinyConfig.n_layers)
    parser.add_argument("--n-heads", type=int, default=TinyConfig.n_heads)
    parser.add_argument("--n-ff", type=int, default=TinyConfig.n_ff)
    parser.add_argument("--corpus-bytes", type=int, default=DEFAULT_CAP_BYTES)
    parser.add_argument("--eval-windows", type=int, default=128, help="held-out windows for final metrics")
    parser.add_argument("--eval-every", type=int, default=150, help="steps between quick held-out evals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    if args.l1 is None:
        args.l1 = DEFAULT_L1[args.kind]
    return args


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    floor = args.min_lr_ratio
    return args.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def l1_coefficient(step: int, args: argparse.Namespace) -> float:
    """0 until l1_start, then a linear ramp to --l1 over l1_ramp (fractions of the run)."""
    start, ramp = args.l1_start * args.steps, max(1.0, args.l1_ramp * args.steps)
    return args.l1 * min(1.0, max(0.0, (step - start) / ramp))


def make_optimizer(model: TinyLlama, args: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (norm gains stay undecayed, as in Llama recipes)."""
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    gains = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": matrices, "weight_decay": args.weight_decay}, {"params": gains, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)


def train(
    model: TinyLlama,
    corpus_train: torch.Tensor,
    val_ids: tuple[torch.Tensor, torch.Tensor],
    args: argparse.Namespace,
) -> float:
    """Run the optimisation loop; returns wall-clock seconds spent."""
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(args.seed)
    optimizer = make_optimizer(model, args)
    model.train()
    started = time.perf_counter()
    progress = tqdm(range(args.steps), desc=f"train {args.kind}", dynamic_ncols=True)
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        inputs, targets = random_batch(corpus_train, args.batch_size, args.seq_len, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits, acts = model(inputs, return_mlp_acts=True)
        ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        l1 = torch.stack([a.float().abs().mean() for a in acts]).mean()
        loss = ce + l1_coefficient(step, args) * l1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        sparsity = sum(zero_fraction(a.detach()) for a in acts) / len(acts)
        progress.set_postfix(loss=f"{ce.item():.3f}", l1=f"{l1.item():.4f}", sparsity=f"{sparsity:.3f}")
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            quick = evaluate(model, val_ids[0][:32], val_ids[1][:32])
            model.train()
            progress.write(
                f"step {step + 1}: val loss {quick.loss:.4f} ({quick.bits_per_byte:.3f} bpb), "
                f"val sparsity {quick.sparsity_mean:.3f}"
            )
    return time.perf_counter() - started


def round_trip_float16(model: TinyLlama) -> None:
    """Make the in-memory weights exactly what the float16 file will hold, so metrics match load_tiny()."""
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(torch.float16).to(torch.float32))


def sample_text(model: TinyLlama, seed: int, n_bytes: int = 300) -> str:
    tokenizer = ByteTokenizer()
    prompt = torch.tensor([tokenizer.encode(SAMPLE_PROMPT)])
    generator = torch.Generator().manual_seed(seed)
    out = model.eval().generate(prompt, n_bytes, temperature=0.7, generator=generator)
    return tokenizer.decode(out[0].tolist())


def plot_sparsity(result: EvalResult, kind: str, path: Path) -> None:
    """Bar chart of per-layer exact-zero fraction with the 80% target line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    layers = list(range(len(result.sparsity_per_layer)))
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.bar(layers, result.sparsity_per_layer, color="#4c72b0")
    ax.axhline(SPARSITY_TARGET, color="#c44e52", linestyle="--", label=f"target {SPARSITY_TARGET:.0%}")
    for layer, value in zip(layers, result.sparsity_per_layer, strict=True):
        ax.text(layer, value + 0.01, f"{value:.1%}", ha="center", fontsize=8)
    ax.set(xlabel="layer", ylabel="exact-zero fraction", ylim=(0, 1.05), xticks=layers)
    ax.set_title(f"tiny_{kind}: MLP intermediate sparsity (mean {result.sparsity_mean:.1%})", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    corpus = load_corpus(args.corpus_bytes)
    config = TinyConfig(
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        n_ff=args.n_ff,
        max_seq=max(args.seq_len, TinyConfig.max_seq),
        mlp_act=args.kind,
    )
    model = TinyLlama(config)
    val_ids = eval_windows(corpus.val, args.seq_len, args.eval_windows)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny_{args.kind}: {n_params / 1e6:.2f}M params, corpus {corpus.describe()}")

    seconds = train(model, corpus.train, val_ids, args)
    round_trip_float16(model)
    result = evaluate(model, *val_ids)
    unigram = unigram_bits_per_byte(corpus.train, corpus.val)
    sample = sample_text(model, args.seed)

    metrics = {**result.to_dict(), "unigram_bits_per_byte": round(unigram, 5), "eval_tokens": int(val_ids[1].numel())}
    train_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    metadata = {
        "train_args": train_args,
        "train_seconds": round(seconds, 1),
        "n_params": n_params,
        "corpus": corpus.describe(),
        "metrics": metrics,
        "sample": sample,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "reproduce": " ".join(["python -m actsparse.models.train", *(sys.argv[1:] if argv is None else argv)]),
    }
    tensors_path, json_path = save_checkpoint(model, args.kind, metadata, args.out)
    plot_path = args.out / f"tiny_{args.kind}_sparsity.png"
    plot_sparsity(result, args.kind, plot_path)

    print(f"trained {args.steps} steps in {seconds / 60:.1f} min")
    print(
        f"val loss {result.loss:.4f} nats, ppl {result.perplexity:.3f}, {result.bits_per_byte:.3f} bits/byte "
        f"(unigram baseline {unigram:.3f} bits/byte)"
    )
    print(
        "sparsity per layer: "
        + ", ".join(f"{s:.3f}" for s in result.sparsity_per_layer)
        + f"  (mean {result.sparsity_mean:.3f}, target {SPARSITY_TARGET})"
    )
    print(f"sample:\n{sample}\n")
    print(f"wrote {tensors_path}, {json_path}, {plot_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
