"""A hybrid's prompt in one `prefill` call against the same prompt fed token by token through its one-token step
(what every hybrid decoder did before frontends/prefill.py), in one process, interleaved.

    python -m actsparse.benchmarks.hybrid_prefill [--arch mamba2] [--prompt 64] [--repeats 5]
        [--hidden 768 --layers 2 --state 128 --head-dim 64 --vocab 2048] [--before]

The model is the architecture's tiny config (scripts/tiny_config.py), widened where asked (`--hidden` etc. set
every spelling of that size the config has, as the shrinker does; the heads follow hidden x expand / head dim),
compiled in dense mode; both paths run the same compiled module (`prefill` vs `main`) on the same prompt,
alternating, and must give the same last logits. `--before` also builds the module with TVM's legalized matmuls
left unscheduled (as before codegen/cpu_matmul.py) and times it the same way, interleaved with the scheduled one.
Printed per module: median ms of each path, their ratio, the module calls each made, the piece length from which
the decoder takes `prefill` (measured at compile time: runtime/prefill_rule.py), and the load average. `--profile N`
also prints the N callees (kernels, legalized ops, VM builtins) where one prefill call spends most, timed around
each call through a VM instrument (the Python callback between calls adds a little to each; shares, not totals).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time
from collections import defaultdict

# option -> the config attributes it sets (the names the shrinker uses for that size, scripts/tiny_config.py)
WIDENED = {"hidden": ("hidden_size",), "layers": ("num_hidden_layers",), "state": ("state_size", "mamba_d_state"),
           "head_dim": ("head_dim", "mamba_headdim", "mamba_d_head"), "vocab": ("vocab_size",)}


def build_model(arch: str, sizes: dict):
    """The tiny `arch`, with the sizes given (None: the tiny one) set on its config; SSM heads follow."""
    import torch
    from transformers import AutoModelForCausalLM

    from actsparse.scripts.tiny_config import SSM_HEADS, build_tiny, causal_lm_part, tiny_config

    if not any(v is not None for v in sizes.values()):
        return build_tiny(arch)
    config = tiny_config(arch)
    for option, value in sizes.items():
        for name in WIDENED[option] if value is not None else ():
            if hasattr(config, name):
                setattr(config, name, value)
    for expand, heads, head_dim in SSM_HEADS:  # the SSM heads that fill hidden x expand at that head dim
        if all(hasattr(config, name) for name in (expand, heads, head_dim)):
            setattr(config, heads, config.hidden_size * getattr(config, expand) // getattr(config, head_dim))
    if hasattr(config, "n_groups"):
        config.n_groups = 1
    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    torch.manual_seed(0)
    return model_class._from_config(causal_lm_part(config, model_class)).float().eval()


def profile_prefill(decoder, ids, top: int) -> list[str]:
    """The `top` callees of one prefill of `ids` by `decoder` (time around each call, see the module docstring)."""
    spent, calls, started = defaultdict(float), defaultdict(int), {}

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run:
            started[symbol] = time.perf_counter()
        else:
            spent[symbol] += time.perf_counter() - started[symbol]
            calls[symbol] += 1
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    decoder.spec = dataclasses.replace(decoder.spec, prefill_from=2)
    decoder.module._vm.set_instrument(instrument)
    try:
        start = time.perf_counter()
        decoder.prefill(ids)
        total = time.perf_counter() - start
    finally:
        decoder.module._vm.set_instrument(None)
    ranked = sorted(spent.items(), key=lambda item: -item[1])[:top]
    return [f"    {1e3 * t:8.2f} ms {100 * t / total:5.1f}%  x{calls[name]:<3} {name[:100]}" for name, t in ranked]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mamba2", help="a hybrid architecture of transformers (tiny config)")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--repeats", type=int, default=5)
    for option in WIDENED:
        parser.add_argument("--" + option.replace("_", "-"), type=int, help=f"set {', '.join(WIDENED[option])}")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print one prefill's N costliest callees")
    parser.add_argument("--before", action="store_true",
                        help="also time a build with TVM's legalized matmuls unscheduled (before cpu_matmul.py)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    import actsparse
    from actsparse.codegen.cpu_matmul import left_plain

    torch.set_num_threads(1)
    model = build_model(args.arch, {option: getattr(args, option) for option in WIDENED})
    builds = {"scheduled": contextlib.nullcontext}
    if args.before:
        builds["plain (before)"] = left_plain
    decoders = {}
    for label, building in builds.items():
        start = time.perf_counter()
        with building():
            decoders[label] = actsparse.compile(model, mode="dense", max_seq=args.prompt + 1)
        print(f"{label}: compiled in {time.perf_counter() - start:.0f} s; load avg {os.getloadavg()}", flush=True)
    lm = next(iter(decoders.values()))
    if not lm.spec.prefill_tokens:
        print(f"{args.arch}: no prefill function (the prompt goes token by token)")
        return 1
    ids = np.random.default_rng(0).integers(0, lm.spec.vocab_size, (1, args.prompt), dtype=np.int64)
    paths = {"prefill": 2, "token by token": lm.spec.prefill_tokens + 1}  # spec.prefill_from: pieces from 2 tokens
    measured = {label: decoder.spec.prefill_from for label, decoder in decoders.items()}
    times = {(label, path): [] for label in decoders for path in paths}
    logits = {}
    for _ in range(args.repeats + 1):  # the first round warms up and is dropped
        for label, decoder in decoders.items():
            for path, start_at in paths.items():
                decoder.spec = dataclasses.replace(decoder.spec, prefill_from=start_at)
                start = time.perf_counter()
                logits[label, path] = decoder.prefill(ids).logits
                times[label, path].append(time.perf_counter() - start)
    for key, value in logits.items():
        np.testing.assert_allclose(value, logits[next(iter(logits))], rtol=1e-4, atol=1e-5, err_msg=str(key))
    ms = {key: 1e3 * float(np.median(t[1:])) for key, t in times.items()}
    calls = -(-args.prompt // lm.spec.prefill_tokens)
    config = model.config
    print(f"{args.arch}, {args.prompt}-token prompt, dense; hidden {config.hidden_size}, layers "
          f"{config.num_hidden_layers}, chunk {getattr(config, 'chunk_size', '-')}; load avg {os.getloadavg()}")
    for label, decoder in decoders.items():
        whole, steps = ms[label, "prefill"], ms[label, "token by token"]
        print(f"  {label}: prefill {whole:.2f} ms ({calls} call(s)); token by token {steps:.2f} ms "
              f"({args.prompt} calls); token by token / prefill = {steps / whole:.2f}x; the decoder takes prefill "
              + (f"from {measured[label]} tokens" if measured[label] <= decoder.spec.prefill_tokens else "never")
              + f" (measured at compile time; at most {decoder.spec.prefill_tokens} tokens a call)")
        if args.profile:
            print("\n".join(profile_prefill(decoder, ids, args.profile)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
