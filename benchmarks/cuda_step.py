"""Kernel launches per decode step on CUDA for a 7B-shape decoder, counted in TVM's lowered executable (no GPU).

    python -m actsparse.benchmarks.cuda_step [--layers 32] [--mode exact]

A 32-layer Llama-2/Mistral-7B-shape model is too large to build here for a count, and the count does not depend on
the dims: every kernel of the step is one launch at any size except the MLP's (3 in exact mode at any size,
BENCHMARKS.md session 10), and dlight schedules each fused op as one kernel. So two tiny decoders of the same
architecture (Llama with a ReLU MLP and grouped-query attention) are built for CUDA with
`relax.backend.use_cuda_graph`, at 1 and 2 layers, and the step's launches are `once + per_layer * layers`, the
two terms read off the two builds (codegen/step_launches.py). Printed for the decoder's two step functions:
`step_graph` (codegen/static_step.py: one captured graph) and `step` (attention over the filled slots: several
graphs with launches between them).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

LAYERS_7B = 32


def tiny_decoder(layers: int):
    """Llama, ReLU MLP, 4 query / 2 KV heads: the architecture of the ReLU-family 7B decoders, at toy dims."""
    import torch
    import transformers

    config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=96, vocab_size=128,
                                      max_position_embeddings=64, pad_token_id=0, bos_token_id=None,
                                      eos_token_id=None, hidden_act="relu", initializer_range=0.1)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def step_counts(layers: int, mode: str) -> dict[str, tuple[int, int, int]]:
    """{step function: (capture regions, launches captured, launches outside the regions per step)}."""
    import tvm

    import actsparse
    from actsparse.codegen.step_launches import step_launches

    with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": True}):
        lm = actsparse.compile(tiny_decoder(layers), target="cuda", mode=mode, max_seq=16)
    counts = {}
    for function in ("step_graph", "step"):
        s = step_launches(lm.module.executable, function)
        counts[function] = (len(s.regions), s.captured_launches, s.outside_launches)
    return counts


def extrapolate(one: tuple[int, ...], two: tuple[int, ...], layers: int) -> tuple[int, ...]:
    """Each figure as once + per_layer * layers, from its values at 1 and 2 layers."""
    return tuple(a + (b - a) * (layers - 1) for a, b in zip(one, two, strict=True))


def report(layers: int = LAYERS_7B, mode: str = "exact") -> dict[str, tuple[int, int, int]]:
    """Prints and returns {step function: (regions, captured launches, launches outside)} at `layers` layers."""
    start = time.perf_counter()
    one, two = step_counts(1, mode), step_counts(2, mode)
    seconds = time.perf_counter() - start
    at = {f: extrapolate(one[f], two[f], layers) for f in one}
    print(f"\n**Launches per decode step, {layers}-layer 7B-shape decoder (Llama, ReLU MLP, GQA), {mode} mode, CUDA**"
          f" — counted in TVM's lowered executable (two tiny builds, {seconds:.0f} s, load avg "
          f"{os.getloadavg()[0]:.1f}); nothing timed\n")
    print("| step function | CUDA graphs replayed | launches in them | per layer | launches outside (per step) |")
    print("|---|---:|---:|---:|---:|")
    for f, (regions, captured, outside) in at.items():
        print(f"| {f} | {regions} | {captured} | {two[f][1] - one[f][1]} | {outside} |")
    return at


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=LAYERS_7B, help="layers of the decoder counted for")
    ap.add_argument("--mode", default="exact", help="compile mode (exact, dense, ...)")
    args = ap.parse_args(argv)
    if args.layers < 1:
        print(f"--layers must be at least 1, got {args.layers}", file=sys.stderr)
        return 2
    report(args.layers, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
