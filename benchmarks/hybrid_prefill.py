"""A hybrid's prompt in one `prefill` call against the same prompt fed token by token through its one-token step
(what every hybrid decoder did before frontends/prefill.py), in one process, interleaved.

    python -m actsparse.benchmarks.hybrid_prefill [--arch mamba2] [--prompt 64] [--repeats 5]

The model is the architecture's tiny config (scripts/tiny_config.py) compiled in dense mode; both paths run the
same compiled module (`prefill` vs `main`) on the same prompt, alternating, and must give the same last logits.
Printed: median ms of each path, their ratio, the module calls each made, and the load average.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mamba2", help="a hybrid architecture of transformers (tiny config)")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    import actsparse
    from actsparse.scripts.arch_table import build_tiny

    torch.set_num_threads(1)
    model = build_tiny(args.arch)
    lm = actsparse.compile(model, mode="dense", max_seq=args.prompt + 1)
    if not lm.spec.prefill_tokens:
        print(f"{args.arch}: no prefill function (the prompt goes token by token)")
        return 1
    ids = np.random.default_rng(0).integers(0, lm.spec.vocab_size, (1, args.prompt), dtype=np.int64)
    whole_tokens = lm._prefill_tokens
    times: dict[str, list[float]] = {"prefill": [], "token by token": []}
    logits = {}
    for _ in range(args.repeats):
        for name, tokens in (("prefill", whole_tokens), ("token by token", 0)):
            lm._prefill_tokens = tokens  # 0: the decoder's path without a prefill function
            start = time.perf_counter()
            logits[name] = lm.prefill(ids).logits
            times[name].append(time.perf_counter() - start)
    lm._prefill_tokens = whole_tokens
    np.testing.assert_allclose(logits["prefill"], logits["token by token"], rtol=1e-4, atol=1e-5)
    ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
    calls = -(-args.prompt // whole_tokens)
    print(f"{args.arch}, {args.prompt}-token prompt, dense, tiny config; load avg {os.getloadavg()}")
    print(f"  prefill: {ms['prefill']:.2f} ms ({calls} call(s)); token by token: {ms['token by token']:.2f} ms "
          f"({args.prompt} calls); token by token / prefill = {ms['token by token'] / ms['prefill']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
