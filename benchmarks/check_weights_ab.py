"""Load-time cost of hf_source's non-finite weight check: the old `isfinite().all()` per state_dict entry against
the current one (a sum per distinct tensor, the elementwise look only when the sum is not finite), interleaved in
one process on a tiny-config Llama written to a temporary folder.

    python -m actsparse.benchmarks.check_weights_ab [--layers 6] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def old_check(model, info, what):
    """The check as it was before session 17 (every state_dict entry, tied ones twice, a bool mask each)."""
    for _, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise AssertionError("the benchmark's weights are finite")


def main() -> None:
    import torch
    import transformers

    from actsparse.frontends import hf_source

    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    config = transformers.LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=args.layers,
                                      num_attention_heads=16, num_key_value_heads=4, vocab_size=32000)
    new_check = hf_source._check_weights
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        transformers.LlamaForCausalLM(config).save_pretrained(folder)
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        model, _ = hf_source.load_causal_lm(folder)
        print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, {size / 2**20:.0f} MiB "
              f"on disk; load average {os.getloadavg()[0]:.2f}")
        checks, loads = {"old": [], "new": []}, {"old": [], "new": []}
        for _ in range(args.rounds):
            for name, check in (("old", old_check), ("new", new_check)):
                start = time.perf_counter()
                check(model, {}, "bench")
                checks[name].append(time.perf_counter() - start)
                hf_source._check_weights = check
                start = time.perf_counter()
                hf_source.load_causal_lm(folder)
                loads[name].append(time.perf_counter() - start)
                hf_source._check_weights = new_check
        for name in checks:
            print(f"{name}: check min {min(checks[name]) * 1e3:.0f} ms (median "
                  f"{sorted(checks[name])[len(checks[name]) // 2] * 1e3:.0f}); load_causal_lm min "
                  f"{min(loads[name]):.2f} s (median {sorted(loads[name])[len(loads[name]) // 2]:.2f})")
        print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
