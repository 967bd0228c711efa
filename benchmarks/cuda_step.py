"""Kernel launches per decode step on CUDA for a 7B-shape decoder, counted in TVM's lowered executable (no GPU).

    python -m actsparse.benchmarks.cuda_step [--layers 32] [--mode exact] [--time]

A 32-layer Llama-2/Mistral-7B-shape model is too large to build here for a count, and the count does not depend on
the dims: every kernel of the step is one launch at any size except the MLP's (3 in exact mode at any size,
BENCHMARKS.md session 10), and dlight schedules each fused op as one kernel. So two tiny decoders of the same
architecture (Llama with a ReLU MLP and grouped-query attention) are built for CUDA with
`relax.backend.use_cuda_graph`, at 1 and 2 layers, and the step's launches are `once + per_layer * layers`, the
two terms read off the two builds (codegen/step_launches.py). Printed for the decoder's two step functions:
`step_graph` (codegen/static_step.py: one captured graph) and `step` (attention over the filled slots: several
graphs with launches between them).

`--time`, only on a machine with an NVIDIA GPU and TVM (without one it says why and exits 0; `--require-gpu`: 2):
a 4-layer decoder at hidden 1024 (Llama, ReLU MLP, GQA, fp32, exact mode, max_seq 256) built with
`use_cuda_graph`, then greedy decoding of 64 tokens through each step function on the same module, interleaved 3
times: wall microseconds per token (the logits read back each step, as `generate` does) and the same tokens
from both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

LAYERS_7B = 32
TIMED = {"layers": 4, "hidden": 1024, "max_seq": 256, "tokens": 64, "rounds": 3}  # the --time decoder and run


def tiny_decoder(layers: int, hidden: int = 64, vocab: int = 128):
    """Llama, ReLU MLP, grouped-query attention (2 query heads per KV head; heads of 64 from hidden 256 up): the
    architecture of the ReLU-family 7B decoders, at toy dims."""
    import torch
    import transformers

    heads = 4 if hidden < 256 else hidden // 64
    config = transformers.LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                      num_key_value_heads=heads // 2, intermediate_size=hidden * 3 // 2,
                                      vocab_size=vocab, max_position_embeddings=1024, pad_token_id=0,
                                      bos_token_id=None, eos_token_id=None, hidden_act="relu", initializer_range=0.1)
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


def time_steps(require_gpu: bool = False) -> int:
    """`--time` (module docstring): µs per token through `step` and `step_graph`, interleaved; exit status."""
    import numpy as np
    import tvm

    import actsparse
    from actsparse.targets.cuda import gpu_device

    if gpu_device() is None:  # what runs the module is TVM's CUDA runtime (torch is not needed here)
        print("decode step timing: SKIPPED — no GPU here: TVM's CUDA runtime finds none (or TVM has no CUDA runtime)")
        return 2 if require_gpu else 0
    t = TIMED
    with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": True}):
        lm = actsparse.compile(tiny_decoder(t["layers"], t["hidden"], 32000), target="cuda", mode="exact",
                               max_seq=t["max_seq"])
    prompt = np.arange(1, 9, dtype=np.int64).reshape(1, -1)
    times: dict[bool, list[float]] = {False: [], True: []}
    tokens: dict[bool, list] = {}
    for _ in range(t["rounds"]):
        for graph in (False, True):
            lm.graph_step = graph  # the same module: `step` (several graphs) or `step_graph` (one)
            state = lm.prefill(prompt)
            out, start = [int(np.argmax(state.logits))], time.perf_counter()
            for _ in range(t["tokens"] - 1):
                logits, state = lm.step(out[-1], state)
                out.append(int(np.argmax(logits)))
            times[graph].append((time.perf_counter() - start) / (t["tokens"] - 1) * 1e6)
            tokens[graph] = out
    step, whole = (float(np.median(times[g])) for g in (False, True))
    print(f"\n**Decode step on {tvm.cuda(0).device_name}**: {t['layers']} layers, hidden {t['hidden']}, fp32, exact, "
          f"max_seq {t['max_seq']}; median of {t['rounds']} x {t['tokens'] - 1} tokens (wall, logits read back)\n")
    print(f"| step function | us / token |\n|---|---:|\n| step | {step:.0f} |\n| step_graph | {whole:.0f} |")
    print(f"\nstep_graph vs step: {step / whole:.2f}x; same tokens: {tokens[False] == tokens[True]}")
    return 0 if tokens[False] == tokens[True] else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=LAYERS_7B, help="layers of the decoder counted for")
    ap.add_argument("--mode", default="exact", help="compile mode (exact, dense, ...)")
    ap.add_argument("--time", action="store_true", help="on a GPU: time both step functions (module docstring)")
    ap.add_argument("--require-gpu", action="store_true", help="with --time: exit 2 when no GPU is here")
    args = ap.parse_args(argv)
    if args.time:
        return time_steps(args.require_gpu)
    if args.layers < 1:
        print(f"--layers must be at least 1, got {args.layers}", file=sys.stderr)
        return 2
    report(args.layers, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
