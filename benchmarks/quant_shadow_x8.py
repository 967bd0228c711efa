"""The quant predictor's recall with x rounded to 8-bit groups (what its shadow linear computes on an int8-dot
target, `ir.quant.round_x8`) against float x, at the same cutoffs, per layer on held-out text. One table on stdout.

    python -m actsparse.benchmarks.quant_shadow_x8 [--model tiny|smollm2] [--recall 0.99] [--calib-windows 32]
        [--layers 6] [--checkpoint out/smollm2_drelu_recovered.safetensors]

Models, calibration and held-out windows as in `predictor_quality` (its loaders); each layer's predictor is fitted
by `predictors.fit_block` on the calibration rows (cutoff placed on float dots, as compile() does).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--recall", type=float, default=0.99)
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--heldout-windows", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--layers", type=int, default=0)
    parser.add_argument("--checkpoint", default="")
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy as np

    from actsparse.api import import_model
    from actsparse.benchmarks.predictor_quality import MODELS
    from actsparse.benchmarks.tables import markdown_table
    from actsparse.ir.quant import round_x8
    from actsparse.passes import run_pipeline
    from actsparse.passes.activation_stats import block_weights, collect_activations
    from actsparse.passes.calibrate import calibration_samples
    from actsparse.passes.canonicalize import Canonicalize
    from actsparse.passes.detect_gated_mlp import DetectGatedMLP
    from actsparse.passes.predictors import fit_block

    model, calibration, held = MODELS[args.model](args)
    load_before = os.getloadavg()[0]
    graph = run_pipeline(import_model(model, held), [Canonicalize(), DetectGatedMLP()]).graph
    blocks = [n for n in graph.nodes if n.op == "gated_mlp"]
    calib = collect_activations(graph, blocks, calibration_samples(calibration, len(graph.inputs)))
    test = collect_activations(graph, blocks, [tuple(np.asarray(h) for h in held)], progress=False)
    rows = []
    for block, c, t in zip(blocks, calib, test):
        w_gate, w_up = block_weights(block, graph.weights)[:2]
        p = fit_block("quant", c.location, w_gate, c.rows, c.active, 0, args.recall,
                      w_up=w_up if block.attrs["up_act"] == "relu" else None)
        row = [c.location]
        for x in (t.rows, round_x8(t.rows)):
            predicted = p.scores(x) > p.cutoff
            row += [f"{(predicted & t.active).sum() / t.active.sum():.2%}",
                    f"{predicted.sum() / t.active.sum():.3f}x"]
        rows.append(row)
    print(f"\n**quant shadow, float x vs 8-bit x, {args.model}** (target recall {args.recall:.0%}; load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after)\n")
    print(markdown_table(["layer", "recall, float x", "predicted / active, float x", "recall, 8-bit x",
                          "predicted / active, 8-bit x"], rows, right_from=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
