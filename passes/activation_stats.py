"""Activation statistics from calibration data: which neurons of each gated MLP fire, and how often.

The calibration inputs run through the reference interpreter once (`calibrate.collect_inputs`, with its progress
bar); for each block its input rows x give the activation labels

    active[t, j] = h[t, j] != 0,   h = act_g(x·Wgᵀ) ⊙ act_u(x·Wuᵀ)

from which: the per-neuron firing frequency (share of tokens where neuron j fires), the block's sparsity, and the
neuron CDF (as in the Bamboo-7B card): the share of all activations covered by the top x% most frequent neurons.
A flat CDF (top 20% of neurons covering 20%) means no hot set; a steep one means a hot/cold split pays.

The predictors train on the same rows and labels (`predictors.py`), so they are kept in `BlockActivations`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Node
from ..ir.mlp import unpack_gated_inputs
from ..ir.sparse_variants import dense_intermediate
from .calibrate import collect_inputs

CDF_POINTS = 21   # coverage at 0%, 5%, ..., 100% of the neurons


@dataclass(frozen=True)
class BlockActivations:
    location: str
    rows: np.ndarray          # [tokens, d] the block's calibration inputs
    active: np.ndarray        # [tokens, n_ff] bool, h != 0

    @property
    def frequency(self) -> np.ndarray:
        """Per-neuron firing frequency, [n_ff]."""
        return self.active.mean(0)

    @property
    def sparsity(self) -> float:
        return 1.0 - float(self.active.mean())

    def neuron_cdf(self, points: int = CDF_POINTS) -> list[float]:
        """Share of all activations covered by the top x of neurons, x = 0, 1/(points-1), ..., 1."""
        return neuron_cdf(self.frequency, points)


def neuron_cdf(frequency: np.ndarray, points: int = CDF_POINTS) -> list[float]:
    ordered = np.sort(np.asarray(frequency, np.float64))[::-1]
    total = ordered.sum()
    covered = np.concatenate([[0.0], np.cumsum(ordered)]) / (total if total > 0 else 1.0)
    at = np.round(np.linspace(0, len(ordered), points)).astype(int)
    return [float(v) for v in covered[at]]


def block_weights(block: Node, weights: dict[str, np.ndarray]):
    """(w_gate, w_up, b_gate, b_up) of a gated_mlp node."""
    attrs = {"fused": False, "gate_first": True, **block.attrs}
    arrays = [None, *(weights[w.attrs["name"]] for w in block.inputs[1:])]
    _, w_gate, w_up, _, b_gate, b_up = unpack_gated_inputs(arrays, attrs)
    return w_gate, w_up, b_gate, b_up


def activation_labels(block: Node, weights: dict[str, np.ndarray], rows: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """[tokens, n_ff] bool: which neurons fire (h != 0) on these input rows."""
    w_gate, w_up, b_gate, b_up = block_weights(block, weights)
    attrs = {"threshold": 0.0, **block.attrs}
    return np.concatenate([dense_intermediate(rows[i:i + chunk], w_gate, w_up, attrs, b_gate, b_up) != 0
                           for i in range(0, max(len(rows), 1), chunk)])


def collect_activations(graph: Graph, blocks: list[Node], samples, max_tokens: int = 8192,
                        progress: bool = True) -> list[BlockActivations]:
    """Run the calibration samples once; per block its input rows and activation labels."""
    rows = collect_inputs(graph, blocks, samples, max_tokens, progress=progress)
    return [BlockActivations(b.loc or f"block{i}", r, activation_labels(b, graph.weights, r))
            for i, (b, r) in enumerate(zip(blocks, rows))]
