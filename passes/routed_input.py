"""Threshold mode's routed MoE experts under an input method (TEAL / WINA; the default, rotated-wina-greedy): input
sparsity per expert, calibrated on the tokens routed to it, a rotated-* method's basis fitted once per MoE layer and
shared by its experts.

A routed expert takes an input method where the target's routed kernel runs input-sparse experts (ir/moe.py's
`ROUTED_MODES["input"]`, `routed_moe{mode=input}`) and the method counts no fixed number per token (top-k has no
routed kernel); elsewhere it takes the per-neuron cuts of routed_thresholds.py. Why: those cuts read every gate row
of a routed expert (the gate decides), so at `sparsity=0.5` a token skipped 33% of its experts' bytes, at +9.16%
perplexity on SmolLM2-135M split into 8 experts (benchmarks/moe_quality.py, BENCHMARKS.md session 40); input sparsity
skips gate and up rows as well. Measured as torch replacements on the same twin (every token to all 8 experts with
equal weights, so its logits are SmolLM2's; 4 held-out windows of 256): the experts at 50% effective sparsity, one
shared rotation per layer and wina-greedy per expert, +5.38% (BENCHMARKS.md session 41); without the rotation
(magnitudes in x's own basis, uniform 50% on x and h) +21%.

How, per MoE layer:
1. the rotated-* methods: its experts' calibration rows pooled (each expert's: the tokens routed to it) and their
   principal axes Q fitted (`rotation.pca_rotation`, whatever basis the method names: a weight-metric basis is one
   block's, not the layer's; where the layer pools fewer than ROTATION_TOKENS_PER_CHANNEL rows per channel, no Q:
   `routed-layer-unrotated`); every expert reads x·Q (the layer's router still reads x) and its gate / up rows are
   turned by Q. Q costs d² weights per token for the k experts a token reads: its share of their bytes
   (`rotation.rotation_share` / k) is added to each expert's budget, as the rotated-* methods pay for it in a dense
   block, and taken off its effective sparsity;
2. each expert calibrated by the method without its rotation (`sparsity_methods.calibrate_input_blocks`: wina-greedy
   allocates its budget between x and h at the least output error) on its (turned) rows.
An expert with too few routed calibration tokens for its quantiles (`input_thresholds.enough_rows`) keeps thresholds
0 (every nonzero x and h: lossless, still turned), and its report row says so.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..ir import Graph, Node
from .base import note, record
from .calibrate import block_weights
from .greedy_allocation import MAX_LEVEL
from .input_thresholds import InputThresholds, enough_rows
from .rotation import pca_rotation, rotated, rotation_share
from .routed_thresholds import TOO_FEW_REASON
from .sparsity_methods import ROTATION_TOKENS_PER_CHANNEL, calibrate_input_blocks, method

POOLED_ROWS = 8192   # a layer's rows its rotation is fitted on at most (evenly spaced over the experts' rows)
# (a layer rotates where at least ROTATION_TOKENS_PER_CHANNEL rows per channel are pooled, as a dense block does)


def takes_input_method(name: str) -> bool:
    """Whether routed experts calibrate by method `name` here (an input method without a fixed count per token)."""
    m = method(name)
    return m.mode == "input" and not m.fixed_count


def unrotated(name: str) -> str:
    """The method a rotated-* method calibrates each (already turned) expert with."""
    return name.removeprefix("rotated-").removeprefix("metric-")


def calibrate_routed_input(graph: Graph, blocks: list[Node], rows: list[np.ndarray], layers: list[int],
                           slots: list[int], name: str, sparsity: float, storage: str = "fp32",
                           progress: bool = False) -> list[InputThresholds]:
    """Each routed expert's InputThresholds (module docstring) from its rows (the tokens routed to it), its MoE
    layer's number and the router's slots k of that layer; a rotated layer's experts share one Q array (the
    threshold pass builds one `linear` per Q)."""
    from tqdm.auto import tqdm

    m, base = method(name), unrotated(name)
    weights = [block_weights(b, graph.weights, base) for b in blocks]
    plans: dict[int, InputThresholds] = {}
    for layer in tqdm(sorted(set(layers)), desc="calibrate experts", unit="layer", disable=not progress or None):
        own = [i for i in range(len(blocks)) if layers[i] == layer]
        q, share = None, 0.0
        pooled = _pooled(rows[i] for i in own)
        if m.rotate and len(pooled) >= ROTATION_TOKENS_PER_CHANNEL * pooled.shape[1]:
            q = pca_rotation(pooled, pooled.shape[1]).astype(np.float32)
            share = rotation_share(len(q), weights[own[0]], storage) / max(slots[own[0]], 1)
            turned = {i: rotated(weights[i], rows[i], q, q) for i in own}
        else:   # (a rotated method with too few rows for the layer's basis: its experts as they are)
            turned = {i: (weights[i], rows[i]) for i in own}
            if m.rotate:
                record("routed-layer-unrotated")
        fit = [i for i in own if enough_rows(rows[i], sparsity)]
        found = calibrate_input_blocks([turned[i][0] for i in fit], [turned[i][1] for i in fit], base,
                                       min(sparsity + share, MAX_LEVEL), progress=False) if fit else []
        plans.update((i, replace(p, rotation=q, turn=q, rotation_share=share, effective=p.effective - share))
                     for i, p in zip(fit, found))
        for i in sorted(set(own) - set(fit)):
            record("routed-expert-too-few-tokens")
            note({"kind": "kept-threshold", "location": blocks[i].loc, "mode": "input",
                  "reason": TOO_FEW_REASON.format(tokens=len(rows[i]), sparsity=sparsity)})
            plans[i] = _lossless(turned[i][0], len(rows[i]), q, share, m.criterion)
    return [plans[i] for i in range(len(blocks))]


def _pooled(parts) -> np.ndarray:
    """The layer's experts' rows, at most POOLED_ROWS of them, evenly spaced."""
    rows = np.concatenate([np.asarray(p, np.float32) for p in parts])
    step = max(1, len(rows) // POOLED_ROWS)
    return rows[::step]


def _lossless(bw, tokens: int, q: np.ndarray | None, share: float, criterion: str) -> InputThresholds:
    """Thresholds 0 for an expert too few calibration tokens reach: every nonzero x and h kept (its method's
    criterion, as its layer's other experts: route-moe stacks experts of one kind)."""
    d, n = bw.w_gate.shape[1], bw.w_gate.shape[0]
    return InputThresholds(np.zeros(d, np.float32), np.zeros(n, np.float32), 0, 0, criterion, float("nan"),
                           float("nan"), -share, tokens, rotation=q, turn=q, rotation_share=share)
