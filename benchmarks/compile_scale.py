"""Compile time and peak memory of a Llama-2-7B-shape model (fp16 weights) for x86, by layer count.

    python -m actsparse.benchmarks.compile_scale [--layers 2,4,8] [--dtype float16] [--act relu] [--mode exact]
    python -m actsparse.benchmarks.compile_scale --layers 32        # the full model: needs ~15 GB of RAM
    python -m actsparse.benchmarks.compile_scale --layers 2,8 --exact-gate certified   # or dense; default: the host's

Each size runs in a fresh subprocess: the model (transformers LlamaForCausalLM, Llama-2-7B dims, random weights,
`--act relu` as ReluLLaMA / ProSparse so exact mode applies) is built first, then `actsparse.compile()` is timed
— import, passes, build, report, what a user waits for. Memory: the process's peak RSS (getrusage) above its RSS
before the model was built, as a multiple of the weights' bytes (1.0 = the weights themselves, nothing more).
With several sizes, a least-squares line per layer gives the cost of one more layer and extrapolates to 32
layers, so the full size can be judged without running it (goals: under 60 s and under 1.5x the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace

from ..targets.base import EXACT_GATES

# Llama-2-7B: d 4096, n_ff 11008, 32 heads (no GQA), vocab 32000
LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
             "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}
SMALL = {"hidden_size": 256, "intermediate_size": 688, "num_attention_heads": 4, "num_key_value_heads": 4,
         "vocab_size": 2000, "max_position_embeddings": 256, "rms_norm_eps": 1e-5}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_model(layers: int, dtype: str, act: str, small: bool, vocab: int = 0):
    """A LlamaForCausalLM of the given depth with random weights, built without a float32 copy: allocated on the
    meta device, materialized in `dtype`, filled in place."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    dims = {**(SMALL if small else LLAMA2_7B), **({"vocab_size": vocab} if vocab else {})}
    config = LlamaConfig(**dims, num_hidden_layers=layers, hidden_act=act)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(getattr(torch, dtype))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(0.02)) if p.numel() < (1 << 24) \
                    else _fill_rows(p, gen)
    model.model.rotary_emb = LlamaRotaryEmbedding(config)  # its inv_freq buffer was left empty by to_empty
    return model.eval()


def _fill_rows(p, gen, rows: int = 256) -> None:
    import torch

    for start in range(0, p.shape[0], rows):  # a float32 slice at a time: no full-size float32 copy
        block = p[start:start + rows]
        block.copy_(torch.randn(block.shape, generator=gen, dtype=torch.float32).mul_(0.02))


def child(layers: int, dtype: str, act: str, mode: str, small: bool, vocab: int = 0, exact_gate: str = "") -> dict:
    import torch
    import transformers  # noqa: F401  (the libraries' own memory is not the weights': count from after them)
    import tvm  # noqa: F401

    import actsparse
    from actsparse.frontends.hf import CausalLMLogits
    from actsparse.targets import x86

    target = x86.host() if not exact_gate else replace(x86.host(), exact_gate=exact_gate)
    base_rss = _rss_bytes()
    model = build_model(layers, dtype, act, small, vocab)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ids = torch.randint(0, 1000, (1, 8), generator=torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    cm = actsparse.compile(CausalLMLogits(model), (ids,), target=target, mode=mode)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"layers": layers, "weight_bytes": weight_bytes, "compile_s": seconds,
            "peak_over_base_bytes": peak - base_rss,
            "ratio": (peak - base_rss) / weight_bytes, "blocks": len(cm.report.blocks),
            "sparsity": cm.report.mean_sparsity, "exact_gate": target.exact_gate}


def fit(rows: list[dict], key: str, layers: int) -> tuple[float, float, float]:
    """(intercept, per-layer slope, value at `layers`) of the least-squares line through rows[key]."""
    import numpy as np

    x = np.array([r["layers"] for r in rows], float)
    y = np.array([r[key] for r in rows], float)
    slope, intercept = np.polyfit(x, y, 1) if len(rows) > 1 else (y[0] / x[0], 0.0)
    return float(intercept), float(slope), float(intercept + slope * layers)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="2,4,8", help="comma-separated layer counts (32: the full model)")
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--act", default="relu", help="hidden_act of the MLPs (relu: exact mode applies; silu: Llama-2)")
    ap.add_argument("--mode", default="exact", help="compile mode (exact needs --act relu)")
    ap.add_argument("--extrapolate", type=int, default=32, help="layer count to extrapolate to (default 32)")
    ap.add_argument("--small", action="store_true", help="tiny dims, for a smoke test")
    ap.add_argument("--vocab", type=int, default=0, help="vocabulary size (default: the model's, 32000)")
    ap.add_argument("--exact-gate", default="", choices=["", *EXACT_GATES],
                    help="how exact mode finds active neurons (Target.exact_gate; default: the host target's)")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        row = child(args.child, args.dtype, args.act, args.mode, args.small, args.vocab, args.exact_gate)
        print("RESULT " + json.dumps(row), flush=True)
        return 0

    print(f"load avg before: {os.getloadavg()[0]:.2f} | {args.dtype} weights, hidden_act {args.act}, mode {args.mode}"
          f"{' (small dims)' if args.small else ', Llama-2-7B dims'}", flush=True)
    rows = []
    for layers in [int(n) for n in args.layers.split(",")]:
        cmd = [sys.executable, "-m", "actsparse.benchmarks.compile_scale", "--child", str(layers), "--dtype",
               args.dtype, "--act", args.act, "--mode", args.mode, "--vocab", str(args.vocab),
               "--exact-gate", args.exact_gate, *(["--small"] if args.small else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{layers} layers failed:\n{proc.stderr[-3000:]}")
            return 1
        row = json.loads(lines[-1][len("RESULT "):])
        rows.append(row)
        print(f"{layers:3d} layers: weights {row['weight_bytes'] / 1e9:6.2f} GB | compile {row['compile_s']:6.1f} s "
              f"| peak RSS over base {row['peak_over_base_bytes'] / 1e9:6.2f} GB = {row['ratio']:.2f}x the "
              f"weights | exact_gate {row['exact_gate']} | load avg {os.getloadavg()[0]:.2f}", flush=True)
    n = args.extrapolate
    t0, t_per, t_n = fit(rows, "compile_s", n)
    m0, m_per, m_n = fit(rows, "peak_over_base_bytes", n)
    w0, w_per, w_n = fit(rows, "weight_bytes", n)
    print(f"\nper layer: +{t_per:.2f} s compile, +{m_per / 1e9:.3f} GB peak, +{w_per / 1e9:.3f} GB weights "
          f"(fixed: {t0:.1f} s, {m0 / 1e9:.2f} GB, {w0 / 1e9:.2f} GB)")
    print(f"extrapolated to {n} layers: compile {t_n:.0f} s (goal < 60 s), peak {m_n / 1e9:.1f} GB = "
          f"{m_n / w_n:.2f}x the weights' {w_n / 1e9:.1f} GB (goal < 1.5x) | load avg after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
