"""Resident memory of part (a)'s fp16 compiles, exact then bound, as benchmarks/decode.py makes them (issue 11).

    OPENBLAS_NUM_THREADS=1 python -m actsparse.benchmarks.fp16_compile_memory [--layers 1] [--no-sharing] [--small]

Builds part (a)'s synthetic Mistral-7B-dims decoder (`decode_models.build_mistral`) in fp16, converts it to float32
for the import (as decode.py does), compiles it with `quantize="fp16"` in exact mode and then with the bound
predictor, and prints the resident set after each step and the peak (ru_maxrss). `--no-sharing` turns off the
reuse of the first compile's bit-identical fp16 copies (`ir/arrays.shared_copy`) for the before/after comparison.
Peak memory: about 2.7 GB for one layer.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys


def _rss() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e9


def _peak() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--no-sharing", action="store_true", help="each compile makes its own fp16 copies")
    ap.add_argument("--small", action="store_true", help="tiny dims: a smoke test")
    args = ap.parse_args(argv)
    import actsparse
    from actsparse.benchmarks.decode_models import build_mistral

    if args.no_sharing:
        import actsparse.passes.quantize as quantize_pass

        quantize_pass.shared_copy = lambda key, array: array
    model = build_mistral(args.layers, 2048, 64, "float16", small=args.small).float()
    gc.collect()
    print(f"# {args.layers} layers, fp16 sharing {'off' if args.no_sharing else 'on'}")
    print(f"float32 model: resident {_rss():.2f} GB")
    exact = actsparse.compile(model, mode="exact", max_seq=64, quantize="fp16")
    gc.collect()
    print(f"after exact: resident {_rss():.2f} GB, peak {_peak():.2f} GB")
    bound = actsparse.compile(model, mode="predictor", predictor="bound", max_seq=64, quantize="fp16")
    gc.collect()
    print(f"after bound: resident {_rss():.2f} GB, peak {_peak():.2f} GB")
    del model
    gc.collect()
    print(f"model dropped: resident {_rss():.2f} GB, peak {_peak():.2f} GB")
    del exact, bound
    return 0


if __name__ == "__main__":
    sys.exit(main())
