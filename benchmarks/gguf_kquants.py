"""A Q4_K_M GGUF kept quantized (frontends/gguf_kquants.py) on the real Gemma 3 270M file: what converts, the
rounding, the perplexity, and compile(gguf)'s decode speed before/after against llama.cpp.

    python -m actsparse.benchmarks.gguf_kquants convert [--gguf PATH]
    python -m actsparse.benchmarks.gguf_kquants quality [--eval-windows 8] [--window 256] [--no-llama]
    python -m actsparse.benchmarks.gguf_kquants build OUT [--modes dense,threshold] [--quantize int4] [--sparsity 0.5]
    python -m actsparse.benchmarks.gguf_kquants speed DIR,DIR,... [--tokens 32] [--repeats 5] [--no-llama]

convert: every tensor of the file by GGUF type: kept as stored, converted (`KEPT`'s rewrite) or dequantized, the
seconds `read_gguf_quantized` takes, and per converted tensor the change of its values against the gguf package's
dequantizer (max |Δ| / max |w| and RMS Δ / RMS w; Q5_0 must be 0).
quality: perplexity on threshold_frontier's held-out prose windows (BOS + 256 tokens each) of the model as
transformers dequantizes it; with the kept tensors' stored values (only the conversion's rounding differs); and as
`compile(quantize=)` stores it, before (main: only Q8_0/Q4_0/Q4_1 kept, the rest quantized from float) and after
(the converted ones kept), torch fake-quant by the quantize pass's rules (the kernels compute on exactly these
values: tests/test_quantize.py); llama.cpp's own on the same token ids (`--no-llama` skips it).
build: `actsparse.compile(folder, (passage,), mode=..., quantize=..., prequantized=read_gguf_quantized(gguf))`
per mode, saved under OUT/<mode>-<quantize>, with whichever actsparse is on PYTHONPATH (run it once per tree for an
A/B). The folder is threshold_frontier's cached float copy of the same GGUF (the same weights and tokenizer;
compile(gguf) would convert Gemma's tokenizer again, minutes, for the same graph); threshold mode calibrates on
decode.py part (b)'s windows at `--sparsity` (part (b)'s 0.5). It prints each artifact's MLP weight bytes per token
(the MLP blobs x (1 - effective sparsity on the held-out passage)).
speed: the artifacts timed interleaved (decode.py's runners, teacher-forced on the held-out passage), then
llama.cpp on the GGUF file with the same prompt and feed.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time

import numpy as np

from .decode_runners import actsparse_rates, llama_cpp_rate, load_average
from .threshold_frontier import load_model, model_source, prose_windows


def gemma_gguf() -> str:
    folder, name = model_source("gemma3")
    return str(folder / name)


def convert(path: str) -> None:
    from gguf import quants

    from actsparse.frontends.gguf_quant import KEPT, hf_tensor_types, kept_blob, read_gguf_quantized
    from actsparse.frontends.gguf_read import read_gguf
    from actsparse.ir.quant import dequantize

    t0 = time.perf_counter()
    kept = read_gguf_quantized(path)
    took = time.perf_counter() - t0
    types = hf_tensor_types(path)
    by_type: dict[str, list] = {}
    changes = []
    for t in read_gguf(path).tensors:
        kind = t.tensor_type.name
        hf = next((h for h, (g, _) in types.items() if g == t.name), None)
        by_type.setdefault(kind, []).append(hf in kept)
        if kind in KEPT and KEPT[kind].rewrite is not None and hf in kept:
            raw = np.asarray(t.data)
            ref = quants.dequantize(raw, t.tensor_type).astype(np.float64)
            ours = dequantize(kept_blob(raw, kind, int(t.shape[0])), KEPT[kind].layout, int(t.shape[0]))
            delta = ours - ref
            changes.append((t.name, kind, float(np.abs(delta).max() / np.abs(ref).max()),
                            float(np.sqrt((delta ** 2).mean() / (ref ** 2).mean()))))
    print(f"{path}: read_gguf_quantized {took:.2f} s, {len(kept)} matrices kept (load {load_average()})\n")
    print("| GGUF type | tensors | kept as | how |\n|---|---:|---|---|")
    for kind, flags in sorted(by_type.items()):
        entry = KEPT.get(kind)
        how = ("dequantized" if entry is None else "the same bytes" if entry.rewrite is None
               else f"converted ({entry.rounding})" if entry.rounding != "none" else "converted (lossless)")
        print(f"| {kind} | {len(flags)} ({sum(flags)} kept) | {entry.layout if entry else 'float32'} | {how} |")
    for kind in sorted({c[1] for c in changes}):
        rows = [c for c in changes if c[1] == kind]
        mx, rms = np.array([c[2] for c in rows]), np.array([c[3] for c in rows])
        print(f"\n{kind} vs gguf.quants.dequantize over {len(rows)} tensors: max |Δ|/max|w| worst {mx.max():.3g} "
              f"(median {np.median(mx):.3g}); RMS Δ / RMS w worst {rms.max():.3g} (median {np.median(rms):.3g})")
        for name, _, a, b in rows:
            print(f"  {name}: {a:.3g} / {b:.3g}")


def as_compiled(model, kind: str, kept: dict):
    """`model` with its Linear weights as the quantize pass stores them under `quantize=kind` with `kept`
    ({HF name: QuantizedWeight}) prequantized: kept rows as stored; the down projection (stored one neuron per
    row) quantized as `kind` from its values, or in its gate's layout when the gate's differs (`relaid`); the
    output projection int8 (the tied embedding's Q8_0 when kept); the rest `kind`."""
    import torch

    from actsparse.ir.quant import QUANTIZE_KINDS
    from actsparse.passes.torch_plans import stored

    q = copy.deepcopy(model)
    for name, mod in q.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        weight = f"{name}.weight"
        if name.endswith("down_proj"):
            gate = kept.get(weight.replace("down_proj", "gate_proj"))
            layout = gate.layout if gate is not None else QUANTIZE_KINDS[kind]
            new = stored(mod.weight, kind if layout == QUANTIZE_KINDS[kind] else layout, "in")
        elif name == "lm_head":
            embed = kept.get("model.embed_tokens.weight")
            new = torch.from_numpy(embed.dequantize()) if embed is not None else stored(mod.weight, "int8")
        elif weight in kept:
            new = torch.from_numpy(kept[weight].dequantize())
        else:
            new = stored(mod.weight, kind)
        mod.weight = torch.nn.Parameter(new, requires_grad=False)
    return q


def quality(args) -> None:
    import torch

    from actsparse.frontends.gguf_quant import KEPT, hf_tensor_types, read_gguf_quantized

    from .quant_quality import nll_llama

    torch.set_num_threads(2)
    path = gemma_gguf()
    model, tok = load_model("gemma3")
    windows = prose_windows(tok, "eval", args.window, args.eval_windows)
    kept = read_gguf_quantized(path)
    types = hf_tensor_types(path)
    before = {k: v for k, v in kept.items() if KEPT[types[k][1]].rewrite is None}

    def ppl(m) -> float:
        from .threshold_frontier import perplexity

        return perplexity(m, windows)

    print(f"Gemma 3 270M Q4_K_M, {len(windows)} x (BOS + {args.window}) tokens of held-out pydoc prose "
          f"(load {load_average()})\n\n| weights | perplexity |\n|---|---:|", flush=True)
    print(f"| dequantized by transformers (fp32) | {ppl(model):.4f} |", flush=True)
    converted = copy.deepcopy(model)   # every kept matrix as stored, everything else fp32
    for name, mod in converted.named_modules():
        if isinstance(mod, torch.nn.Linear) and f"{name}.weight" in kept:
            mod.weight = torch.nn.Parameter(torch.from_numpy(kept[f"{name}.weight"].dequantize()), requires_grad=False)
    print(f"| the {len(kept)} kept matrices as stored (Q4_K as q4_1, Q5_0 as q8_0), the rest fp32 | "
          f"{ppl(converted):.4f} |", flush=True)
    del converted
    for kind in ("int8", "int4"):
        print(f"| compile(quantize={kind!r}) before: {len(before)} Q8_0 kept | "
              f"{ppl(as_compiled(model, kind, before)):.4f} |", flush=True)
        print(f"| compile(quantize={kind!r}) after: {len(kept)} kept | {ppl(as_compiled(model, kind, kept)):.4f} |",
              flush=True)
    if not args.no_llama:
        nll, n = nll_llama(path, [w[0].tolist() for w in windows])
        print(f"| llama.cpp on the file (its runtime) | {math.exp(nll / n):.4f} |", flush=True)
    print(f"\nload average at the end {load_average()}")


def passage_tokens(tokens: int):
    from .decode_part_b import text_tokens

    _, tok = load_model("gemma3")
    return text_tokens(tok, tokens)


def build(args) -> None:
    import actsparse
    from actsparse.frontends.gguf_quant import read_gguf_quantized
    from actsparse.passes.calibration_data import cache_dir

    calibration, prompt, feed = passage_tokens(args.tokens)
    passage = np.concatenate([prompt[0], feed])[None]
    kept = read_gguf_quantized(gemma_gguf())
    folder = cache_dir() / "models" / "gemma3"
    for mode in args.modes.split(","):
        options = {"calibration": calibration, "sparsity": args.sparsity} if mode == "threshold" else {}
        t0 = time.perf_counter()
        lm = actsparse.compile(str(folder), (passage,), mode=mode, max_seq=max(264, calibration[0].shape[1]),
                               quantize=args.quantize, prequantized=kept, **options)
        took = time.perf_counter() - t0
        out = f"{args.out}/{mode}-{args.quantize}"
        lm.save(out)
        graph = lm.module.graph
        mlp = sum(graph.weights[w.attrs["name"]].nbytes for n in graph.nodes if n.op == "sparse_gated_mlp"
                  for w in n.inputs[1:4] if w.op == "weight")
        skipped = (lm.report.effective_sparsity or 0.0) if mode != "dense" else 0.0
        print(f"{out}: compiled in {took:.0f} s; quantize stats {lm.report.pass_stats.get('quantize')}; MLP weights "
              f"{mlp / 1e6:.1f} MB, effective sparsity {skipped:.1%}: {mlp * (1 - skipped) / 1e6:.1f} MB a token "
              f"(load {load_average()})", flush=True)


def speed(args) -> None:
    import actsparse

    _, prompt, feed = passage_tokens(args.tokens)
    decoders = {p: actsparse.load(p) for p in args.paths.split(",") if p}
    before = load_average()
    rates = actsparse_rates(decoders, prompt, feed, args.repeats)
    print(f"\n{prompt.shape[1]}-token prompt, then {len(feed)} teacher-forced steps, median of {args.repeats}, "
          f"interleaved; load {before} -> {load_average()}\n\n| artifact | tokens/s |\n|---|---:|")
    for path, rate in rates.items():
        print(f"| {path} | {rate:.1f} |", flush=True)
    if not args.no_llama:
        del decoders
        rate = llama_cpp_rate(gemma_gguf(), prompt, feed, args.repeats, 2, prompt.shape[1] + len(feed) + 16)
        cell = f"{rate:.1f}" if isinstance(rate, float) else rate
        print(f"| llama.cpp (the Q4_K_M file) | {cell} |  (load {load_average()})", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    c = sub.add_parser("convert")
    c.add_argument("--gguf", default="")
    q = sub.add_parser("quality")
    q.add_argument("--eval-windows", type=int, default=8)
    q.add_argument("--window", type=int, default=256)
    q.add_argument("--no-llama", action="store_true")
    b = sub.add_parser("build")
    b.add_argument("out")
    b.add_argument("--modes", default="dense,threshold")
    b.add_argument("--quantize", default="int4")
    b.add_argument("--tokens", type=int, default=32)
    b.add_argument("--sparsity", type=float, default=0.5)
    s = sub.add_parser("speed")
    s.add_argument("paths")
    s.add_argument("--tokens", type=int, default=32)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--no-llama", action="store_true")
    args = ap.parse_args(argv)
    if args.part == "convert":
        convert(args.gguf or gemma_gguf())
    else:
        {"quality": quality, "build": build, "speed": speed}[args.part](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
