"""Kernel launches per decode step on CUDA for a 7B-shape decoder, counted in TVM's lowered executable (no GPU).

    python -m actsparse.benchmarks.cuda_step [--layers 32] [--mode exact] [--bytes] [--time]

A 32-layer Llama-2/Mistral-7B-shape model is too large to build here for a count, and the count does not depend on
the dims: every kernel of the step is one launch at any size except the MLP's (3 in exact mode at any size,
BENCHMARKS.md session 10), and dlight schedules each fused op as one kernel. So two tiny decoders of the same
architecture (Llama with a ReLU MLP and grouped-query attention) are built for CUDA with
`relax.backend.use_cuda_graph`, at 1 and 2 layers, and the step's launches are `once + per_layer * layers`, the
two terms read off the two builds (codegen/step_launches.py). Printed for the decoder's two step functions:
`step_graph` (codegen/static_step.py: one captured graph) and `step` (attention over the filled slots: several
graphs with launches between them).

`--bytes`: the bytes per token attention moves at Mistral-7B's attention dims (32 query heads of 128, 8 KV heads,
32 layers, fp32 cache, max_seq 2048) for a token at position 100 and at 2000, read from the Relax module the CUDA
build compiles (after TVM's pipeline: fused kernels, their argument tensors) for a 1-layer decoder of those dims:
each step function over S slots (codegen/static_step.py's buckets) launches some kernels no other bucket has — the
attention over its slots — and their arguments' bytes are counted, a cache argument as the S slots its slice reads.

`--time`, only on a machine with an NVIDIA GPU and TVM (without one it says why and exits 0; `--require-gpu`: 2):
a 4-layer decoder at hidden 1024 (Llama, ReLU MLP, GQA, fp32, exact mode, max_seq 256) built with
`use_cuda_graph`, then greedy decoding of 64 tokens (positions 8-70: buckets of 16 to 128 slots) on the same module
through `step`, through `step_graph` in its buckets and through `step_graph` over all max_seq slots, interleaved 3
times: wall microseconds per token (the logits read back each step, as `generate` does) and the same tokens
from all three.
"""

from __future__ import annotations

import argparse
import math
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


ATTENTION_7B = {"hidden": 4096, "heads": 32, "kv_heads": 8, "layers": 32, "max_seq": 2048}  # Mistral-7B's attention
POSITIONS = (100, 2000)  # the tokens --bytes reports


def bucket_attention_bytes(max_seq: int = ATTENTION_7B["max_seq"]) -> dict[str, tuple[int, int]]:
    """{step function: (slots, bytes per layer of the kernels only it launches)} for a 1-layer CUDA decoder of
    Mistral-7B's attention dims (module docstring: `--bytes`); no GPU, no nvcc (the Relax pipeline only)."""
    import transformers
    import tvm

    from actsparse import targets
    from actsparse.codegen.build import relax_module
    from actsparse.codegen.cuda_pipeline import cuda_pipeline
    from actsparse.codegen.static_step import bucket_function, bucket_slots
    from actsparse.frontends.decoder_export import import_decoder
    from actsparse.passes import pipeline_for, run_pipeline

    a = ATTENTION_7B
    config = transformers.LlamaConfig(hidden_size=a["hidden"], num_hidden_layers=1, num_attention_heads=a["heads"],
                                      num_key_value_heads=a["kv_heads"], intermediate_size=128, vocab_size=128,
                                      max_position_embeddings=max_seq, pad_token_id=0, bos_token_id=None,
                                      eos_token_id=None, hidden_act="relu")
    graph, _, _ = import_decoder(transformers.LlamaForCausalLM(config).eval(), max_seq)
    target = targets.get("cuda")
    graph = run_pipeline(graph, pipeline_for("exact", target)).graph  # as compile() builds it (fuse-attention, ...)
    mod, _, _ = relax_module(graph, target)
    with target.tvm_target(), tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": False}):
        mod = cuda_pipeline(target.tvm_target())(mod)
    functions = {bucket_function(s, max_seq): s for s in bucket_slots(max_seq)}
    calls = {f: kernel_calls(mod, f) for f in functions}
    shared = set.intersection(*({name for name, _ in c} for c in calls.values()))
    return {f: (s, sum(_bytes(t, s, max_seq) for name, args in calls[f] if name not in shared for t in args))
            for f, s in functions.items()}


def kernel_calls(mod, function: str) -> list[tuple[str, list]]:
    """(PrimFunc name, argument types) of every kernel call of a Relax function after TVM's pipeline, in order."""
    import tvm
    from tvm import relax

    return [(b.value.op.name_hint, [arg.ty for arg in b.value.args]) for block in mod[function].body.blocks
            for b in block.bindings if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.GlobalVar)
            and isinstance(mod[b.value.op], tvm.tirx.PrimFunc)]


def _bytes(ty, slots: int, max_seq: int) -> int:
    """A tensor argument's bytes; a cache (a dim of max_seq: [1, kv_heads, max_seq, head_dim] or a view of it) counts
    the `slots` its slice reads."""
    import tvm
    from tvm import relax

    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return 0
    dims = [int(d) for d in ty.shape.values]
    count = math.prod(dims) // max_seq * slots if max_seq in dims else math.prod(dims)
    return count * tvm.DataType(ty.dtype).bits // 8


def bytes_report(max_seq: int = ATTENTION_7B["max_seq"]) -> dict[int, float]:
    """Prints and returns {position: attention MB per token at 32 layers} (module docstring: `--bytes`)."""
    start = time.perf_counter()
    per_bucket = bucket_attention_bytes(max_seq)
    seconds = time.perf_counter() - start
    layers = ATTENTION_7B["layers"]
    print(f"\n**Attention bytes per token at Mistral-7B dims** (32 heads of 128, 8 KV heads, {layers} layers, fp32 "
          f"cache, max_seq {max_seq}) — the bucket's own kernels in the lowered CUDA step ({seconds:.0f} s, load avg "
          f"{os.getloadavg()[0]:.1f}); nothing timed\n")
    print("| step function | slots | attention MB per layer | MB per token | positions |")
    print("|---|---:|---:|---:|---|")
    smaller = 0
    for function, (slots, per_layer) in sorted(per_bucket.items(), key=lambda kv: kv[1][0]):
        print(f"| {function} | {slots} | {per_layer / 1e6:.1f} | {per_layer * layers / 1e6:.0f} | "
              f"{smaller}–{slots - 1} |")
        smaller = slots
    at = {}
    for position in POSITIONS:
        slots, per_layer = min((v for v in per_bucket.values() if v[0] > position), key=lambda v: v[0])
        at[position] = per_layer * layers / 1e6
        print(f"\nposition {position}: {slots} slots, {at[position]:.0f} MB per token", end="")
    full = per_bucket["step_graph"][1] * layers / 1e6
    print(f"\n\nevery step over all {max_seq} slots (before buckets): {full:.0f} MB per token")
    return at


def decode_variants(lm, prompt, tokens: int, rounds: int) -> tuple[dict[str, float], dict[str, list[int]]]:
    """({variant: median µs per token}, {variant: the ids it decoded}): greedy decoding of `tokens` ids after `prompt`
    on one decoder three ways, interleaved `rounds` times: `step` (several graphs per step), `step_graph` in the
    bucket holding the position (one graph) and `step_graph` over every max_seq slot (one graph; the buckets' gain
    is the difference). The decoder is left as it was."""
    import numpy as np

    graph_step, buckets = lm.graph_step, list(lm._buckets)
    variants = {"step": (False, buckets), "step_graph (buckets)": (True, buckets),
                "step_graph (max_seq only)": (True, buckets[-1:])}
    times: dict[str, list[float]] = {v: [] for v in variants}
    decoded: dict[str, list[int]] = {}
    try:
        for _ in range(rounds):
            for name, (graph, usable) in variants.items():
                lm.graph_step, lm._buckets = graph, usable
                state = lm.prefill(prompt)
                out, start = [int(np.argmax(state.logits))], time.perf_counter()
                for _ in range(tokens - 1):
                    logits, state = lm.step(out[-1], state)
                    out.append(int(np.argmax(logits)))
                times[name].append((time.perf_counter() - start) / (tokens - 1) * 1e6)
                decoded[name] = out
    finally:
        lm.graph_step, lm._buckets = graph_step, buckets
    return {v: float(np.median(times[v])) for v in variants}, decoded


def time_steps(require_gpu: bool = False) -> int:
    """`--time` (module docstring): µs per token through `step`, `step_graph` with its buckets and `step_graph` over
    max_seq only, interleaved; exit status."""
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
    buckets = list(lm._buckets)
    median, tokens = decode_variants(lm, prompt, t["tokens"], t["rounds"])
    print(f"\n**Decode step on {tvm.cuda(0).device_name}**: {t['layers']} layers, hidden {t['hidden']}, fp32, exact, "
          f"max_seq {t['max_seq']} (buckets {', '.join(str(b) for b, _ in buckets)} slots), positions "
          f"{prompt.shape[1]}–{prompt.shape[1] + t['tokens'] - 2}; median of {t['rounds']} x {t['tokens'] - 1} tokens "
          "(wall, logits read back)\n")
    print("| step function | us / token | vs step |\n|---|---:|---:|")
    for v, us in median.items():
        print(f"| {v} | {us:.0f} | {median['step'] / us:.2f}x |")
    same = all(out == tokens["step"] for out in tokens.values())
    print(f"\nsame tokens from all three: {same}")
    return 0 if same else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=LAYERS_7B, help="layers of the decoder counted for")
    ap.add_argument("--mode", default="exact", help="compile mode (exact, dense, ...)")
    ap.add_argument("--time", action="store_true", help="on a GPU: time both step functions (module docstring)")
    ap.add_argument("--require-gpu", action="store_true", help="with --time: exit 2 when no GPU is here")
    ap.add_argument("--bytes", action="store_true", help="attention bytes per token per bucket (module docstring)")
    args = ap.parse_args(argv)
    if args.time:
        return time_steps(args.require_gpu)
    if args.bytes:
        bytes_report()
        return 0
    if args.layers < 1:
        print(f"--layers must be at least 1, got {args.layers}", file=sys.stderr)
        return 2
    report(args.layers, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
