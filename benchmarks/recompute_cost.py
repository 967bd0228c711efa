"""What decoding by recomputation costs: the same tiny Llama (scripts/arch_table.py's tiny config) decoded with its
KV cache and forced onto the fallback that runs the whole sequence each step (every cached export refused, as
frontends/decoder_export.py falls back for ProphetNet), greedy steps/s after an 8-token prompt at a few generation
lengths, interleaved A/B, median of `--repeats`; the load average printed with each line.

    python -m actsparse.benchmarks.recompute_cost [--steps 16,64,112] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import warnings
from unittest import mock


def decoders(max_seq: int):
    """(the tiny Llama with its cache, the same model recomputing) as compiled decoders, dense mode."""
    import actsparse
    from actsparse.frontends import decoder_export
    from actsparse.frontends.errors import FrontendError
    from actsparse.scripts.arch_table import build_tiny

    def refused(*args, **kwargs):
        raise FrontendError("refused for this measurement")

    model = build_tiny("llama")
    cached = actsparse.compile(model, mode="dense", max_seq=max_seq)
    with mock.patch.object(decoder_export, "_export", refused):
        recomputing = actsparse.compile(model, mode="dense", max_seq=max_seq)
    return cached, recomputing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="16,64,112", help="generation lengths, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import numpy as np
    import torch

    from actsparse.runtime.bench import _decode_rate  # what `actsparse bench` times: steps/s after a prefill

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    lengths = [int(s) for s in args.steps.split(",")]
    prompt = np.arange(1, 9, dtype=np.int64).reshape(1, -1)
    cached, recomputing = decoders(prompt.shape[1] + max(lengths) + 1)
    print(f"{cached.decoding} vs {recomputing.decoding}: {recomputing.decoding_note}")
    for steps in lengths:
        rates = {"kv-cache": [], "recompute": []}
        for _ in range(args.repeats):  # interleaved: both see the same load
            rates["kv-cache"].append(_decode_rate(cached, prompt, steps, 1))
            rates["recompute"].append(_decode_rate(recomputing, prompt, steps, 1))
        kv, re = (statistics.median(rates[k]) for k in ("kv-cache", "recompute"))
        print(f"{steps:4d} steps after an 8-token prompt: kv-cache {kv:8.1f} steps/s, recompute {re:8.1f} steps/s, "
              f"kv-cache {kv / re:.2f}x (load average {os.getloadavg()[0]:.1f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
