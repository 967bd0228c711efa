"""Calibration for threshold mode: per-block activation statistics from sample inputs, and the thresholds.

The graph (after `detect-gated-mlp`) runs on each calibration input in the numpy reference interpreter, keeping
the input x of every `gated_mlp`; up to `max_tokens` rows of x per block are kept (a uniform sample: each row
draws a random key and the smallest keys stay). From those rows each method of `sparsity_methods.METHODS`
chooses its thresholds (per-neuron for cats / product, per input channel of every projection for the TEAL /
WINA / top-k family, with TEAL's greedy allocation for the `*-greedy` ones).

Calibration runs the dense model, so errors do not compound across layers while calibrating (as in CATS and
TEAL). Empty calibration data, inputs that do not match the graph, too few tokens for the asked sparsity, and
NaN/inf inputs or activations are errors that say which sample or block.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import ActsparseError
from ..ir import Graph, Node, evaluate
from ..ir.decoding import TokenSteps
from ..ir.mlp import unpack_gated_inputs
from .base import record
from .block_weights import BlockWeights
from .input_thresholds import enough_rows
from .sparsity_methods import (
    METHODS,
    CalibrationError,
    InputThresholds,
    NeuronThreshold,
    calibrate_blocks,
    method,
)

__all__ = ["METHODS", "CalibrationError", "InputThresholds", "NeuronThreshold", "calibrate", "calibration_samples",
           "collect_inputs", "threshold_attrs"]


def calibration_samples(calibration, n_inputs: int | None = None) -> list[tuple[np.ndarray, ...]]:
    """Iterable of input tuples (torch or numpy; a bare array is a 1-tuple) -> list of numpy tuples, checked."""
    if calibration is None:
        raise CalibrationError("mode='threshold' needs calibration data: pass calibration=[(input_ids,), ...], an "
                               "iterable of input tuples like example_inputs (a few hundred tokens or more)")
    if isinstance(calibration, (str, os.PathLike)) or (isinstance(calibration, (list, tuple)) and calibration
                                                         and isinstance(calibration[0], (str, os.PathLike))):
        raise CalibrationError("calibration given as text files is read with a decoder's tokenizer (compile a "
                               "Hugging Face folder, .gguf or causal LM without example inputs); for this model pass "
                               "input tuples like example_inputs")
    if isinstance(calibration, np.ndarray) or type(calibration).__module__.startswith("torch"):
        raise CalibrationError("calibration must be an iterable of input tuples, e.g. [(ids0,), (ids1,)], not one "
                               "array")
    samples = []
    for i, sample in enumerate(calibration):
        kind = TokenSteps if isinstance(sample, TokenSteps) else tuple   # a prompt fed token by token stays one
        arrays = kind(_to_numpy(a) for a in (sample if isinstance(sample, (tuple, list)) else (sample,)))
        if n_inputs is not None and len(arrays) != n_inputs:
            raise CalibrationError(f"calibration sample {i} has {len(arrays)} inputs, the model takes {n_inputs}")
        for a in arrays:
            if a.size == 0:
                raise CalibrationError(f"calibration sample {i} has an empty input of shape {a.shape}")
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                raise CalibrationError(f"calibration sample {i} contains NaN or inf; calibration data must be finite")
        samples.append(arrays)
    if not samples:
        raise CalibrationError("calibration data is empty: pass at least one input tuple (a few hundred tokens or "
                               "more give stable thresholds)")
    return samples


def _to_numpy(x) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# a decoder's calibration: the first position of every sample is left out of the rows thresholds are fitted on. A
# window's first token is the attention sink (a BOS or not), its MLP input unlike any later token's, and a decode step
# never is one; its rows still pull the rotation's principal axes and the quantiles. At 0.5, rotated-wina-greedy,
# 16 windows of 256 (BENCHMARKS.md session 36), none / the first / the first 4 left out: threshold_frontier SmolLM2-135M
# +6.33 / +5.34 / +2.89%, Gemma 3 270M +9.38 / +8.26 / +8.71%; through compile() (`actsparse perplexity`) SmolLM2
# +7.85 / +4.75 / +5.38%, Gemma +8.56 / +5.02 / +14.54%: one is better on both paths and both models
SINK_POSITIONS = 1


@dataclass(frozen=True)
class RoutedRows:
    """A routed block's calibration rows' routing weights (aligned with its rows) and how many of the samples'
    tokens were routed to it (its rows before the max_tokens sample): its share of its layer's reads."""
    weights: np.ndarray
    tokens: int


def collect_inputs(graph: Graph, blocks: list[Node], samples, max_tokens: int = 4096, seed: int = 0,
                   progress: bool = True, with_index: bool = False, skip_positions: int = 0,
                   routing: list[Node | None] | None = None):
    """Rows of each block's input x ([tokens, d], at most max_tokens, uniformly sampled) over the samples;
    `with_index`: also, per block, each kept row's position among all the samples' rows (sample by sample);
    `skip_positions`: rows of a sample's first positions (along its sequence axis, or its first calls where it is
    fed token by token) left out, the index still counting them; `routing`: per block a node or None, whose value
    ([..., 1] over x's tokens: a MoE expert's routing weight) is 0 on the rows that are not the block's own, which
    are then left out too (a routed expert calibrates on the tokens routed to it); given, a third list follows the
    rows (and index): per block its RoutedRows, or None where its routing is None."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    # per block (keys, rows, index, routing weights)
    kept: list[tuple[np.ndarray, ...] | None] = [None] * len(blocks)
    seen, routed_tokens = [0] * len(blocks), [0] * len(blocks)
    for i, arrays in enumerate(tqdm(samples, desc="calibrate", unit="sample", disable=not progress or None)):
        first, keep = len(graph.outputs), [b.inputs[0] for b in blocks]
        gates = [r for r in routing or () if r is not None]
        keep = keep + gates
        try:   # a prompt fed token by token (TokenSteps) is one call per token; keep only the blocks' inputs of each
            calls = [c[first:] for c in (arrays.calls(lambda a: evaluate(graph, a, keep=keep))
                                         if isinstance(arrays, TokenSteps) else [evaluate(graph, arrays, keep=keep)])]
        except ValueError as err:
            raise CalibrationError(f"calibration sample {i} does not fit the model: {err}") from None
        values = [np.concatenate([np.asarray(c[b]).reshape(-1, np.shape(c[b])[-1]) for c in calls])
                  for b in range(len(blocks))]
        routed = iter(np.concatenate([np.asarray(c[len(blocks) + k], np.float32).reshape(-1) for c in calls])
                      for k in range(len(gates)))
        weight = [next(routed) if r is not None else None for r in routing or [None] * len(blocks)]
        for b, (block, x) in enumerate(zip(blocks, values)):
            rows = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
            if not np.isfinite(rows).all():
                raise CalibrationError(f"calibration sample {i} gives NaN/inf activations at the input of "
                                       f"{block.loc or 'a gated MLP'}; check the model and the calibration data")
            index = np.arange(seen[b], seen[b] + len(rows))
            seen[b] += len(rows)
            w = np.ones(len(rows), np.float32) if weight[b] is None else weight[b]
            keep_rows = w != 0
            if skip_positions:
                keep_rows = keep_rows & (_positions([c[b] for c in calls], isinstance(arrays, TokenSteps))
                                         >= skip_positions)
            if skip_positions or weight[b] is not None:
                rows, index, w = rows[keep_rows], index[keep_rows], w[keep_rows]
            routed_tokens[b] += len(rows)
            keys = rng.random(len(rows))
            if kept[b] is not None:
                keys, rows, index, w = (np.concatenate([old, new]) for old, new in zip(kept[b], (keys, rows, index, w)))
            if len(rows) > max_tokens:
                keep = np.sort(np.argpartition(keys, max_tokens)[:max_tokens])   # sorted: rows stay in text order
                keys, rows, index, w = keys[keep], rows[keep], index[keep], w[keep]
            kept[b] = (keys, rows, index, w)
    found = [[k[1] for k in kept]] + ([[k[2] for k in kept]] if with_index else [])
    if routing is not None:
        found.append([RoutedRows(k[3], n) if r is not None else None for k, n, r in zip(kept, routed_tokens, routing)])
    return tuple(found) if len(found) > 1 else found[0]


def pooled_rows(blocks: list[Node], rows: list[np.ndarray]) -> list[np.ndarray]:
    """Blocks that share their weights (one module called at several places: XLNet's two attention streams) each
    calibrate on the rows of all their call sites, so they get one plan from all of them, not one per site from a
    site's few rows."""
    def weights_of(block: Node) -> tuple:
        return tuple(i.attrs.get("name") for i in block.inputs[1:])

    sites: dict[tuple, list[np.ndarray]] = {}
    for block, r in zip(blocks, rows):
        sites.setdefault(weights_of(block), []).append(r)
    return [np.concatenate(sites[weights_of(b)]) if len(sites[weights_of(b)]) > 1 else r for b, r in zip(blocks, rows)]


def refused(block: Node, name: str) -> str:
    """What of this gated_mlp method `name` cannot calibrate ("" when it can): input-sparsity methods take neither
    gate/up biases nor FATReLU (a threshold of its own)."""
    if method(name).mode != "input":
        return ""
    return "gate/up biases" if block.attrs.get("bias") else "FATReLU" if block.attrs["gate_act"] == "fatrelu" else ""


def block_weights(block: Node, weights: dict[str, np.ndarray], name: str) -> BlockWeights:
    """A gated_mlp's weights as the methods take them; input-sparsity methods refuse biases and FATReLU."""
    attrs = {"threshold": 0.0, "fused": False, "gate_first": True, **block.attrs}
    arrays = [None, *(weights[w.attrs["name"]] for w in block.inputs[1:])]
    _, w_gate, w_up, w_down, b_gate, b_up = unpack_gated_inputs(arrays, attrs)
    why, where = refused(block, name), block.loc or "a gated MLP"
    if why == "FATReLU":
        raise ActsparseError(f"{where} is FATReLU (a threshold of its own), which input-sparsity method {name!r} does "
                             "not calibrate; calibrate it with method='cats', or compile it in mode='exact'")
    if why:
        raise ActsparseError(f"{where} has gate/up biases, which input-sparsity method {name!r} does not take; use "
                             "method='cats' or 'product' for it, or leave method out (the default takes another "
                             "method where its own cannot)")
    if b_gate is not None:   # per-neuron scores: biases inside the activations, as homogeneous coordinates
        w_gate, w_up = (np.concatenate([w, b[:, None]], 1) for w, b in ((w_gate, b_gate), (w_up, b_up)))
        w_down = np.concatenate([w_down, np.zeros((w_down.shape[0], 1), w_down.dtype)], 1)
    return BlockWeights(w_gate.astype(np.float32), w_up.astype(np.float32), w_down.astype(np.float32),
                        attrs["gate_act"], attrs["up_act"])


def threshold_attrs(attrs: dict, threshold: float, criterion: str) -> dict:
    """The sparse_gated_mlp attrs of a block in threshold mode (a ReLU-family gate becomes FATReLU at t)."""
    gate_act = attrs["gate_act"]
    if gate_act == "fatrelu" and criterion == "product" and attrs.get("threshold", 0.0) != 0.0:
        raise ActsparseError("a FATReLU block has its own threshold; calibrate it with method='cats' "
                             "(criterion 'gate'), or compile it in mode='exact'")
    if gate_act in ("relu", "fatrelu") and criterion == "gate":
        gate_act = "fatrelu"
    return {"gate_act": gate_act, "up_act": attrs["up_act"], "mode": "threshold", "threshold": float(threshold),
            "criterion": criterion}


def _positions(calls: list, token_steps: bool) -> np.ndarray:
    """Each row's position in its sample: the call's number where the sample is fed token by token, else its index
    along the sequence axis (the one before the features)."""
    if token_steps:
        return np.concatenate([np.full(int(np.prod(np.shape(v)[:-1])), k) for k, v in enumerate(calls)])
    return np.concatenate([np.broadcast_to(np.arange(np.shape(v)[-2]), np.shape(v)[:-1]).reshape(-1)
                           if np.ndim(v) >= 2 else np.zeros(1, int) for v in calls])


def calibrate(graph: Graph, blocks: list[Node], collected: tuple[list, list], name: str, sparsity: float,
              progress: bool = True, storage: str = "fp32", sensitivity=None,
              loss_guard=None) -> list[NeuronThreshold | InputThresholds | None]:
    """Thresholds for every block from its calibration rows (see the module docstring): `collected` is (rows, index)
    per block as `collect_inputs(..., with_index=True)` gives them (the threshold pass collects every calibrating
    block's in one pass over the samples); `storage`: how the weights will be stored (prices a rotated method's Q
    against the block); `sensitivity` (greedy methods): per block g² of the loss ([rows of all the samples, d_out],
    sample by sample, passes/loss_sensitivity.py), which pools the budget across blocks (sensitivity_allocation.py);
    `loss_guard` (quality_guard.LossGuard, plans of every block of the torch model): the sparsity lowered until the
    held-out loss holds; dropped where a block's weights fold a bias (the torch MLP's own weights are not the
    plan's)."""
    method(name)
    rows, index = (list(part) for part in collected)
    if sensitivity is not None:
        sensitivity = list(sensitivity)
        counted = max((i[-1] + 1 for i in index if len(i)), default=0)   # the rows the samples gave, skipped too
        if len(sensitivity) != len(blocks) or any(len(i) and len(g) <= i[-1] for g, i in zip(sensitivity, index)):
            raise CalibrationError(f"sensitivity has {len(sensitivity)} blocks of {[len(g) for g in sensitivity][:3]}"
                                   f" rows; calibration has {len(blocks)} blocks of {counted} rows: compute "
                                   "it on the same calibration samples")
        sensitivity = [np.asarray(g, np.float32)[i] for g, i in zip(sensitivity, index)]
    if sensitivity is None:
        rows = pooled_rows(blocks, rows)
    # a non-gated MLP (taken as a block by threshold mode itself) whose call site sees too few tokens to calibrate
    # (XLNet's last layer runs its MLP on one position a call) stays dense: None; a gated block is an error then
    thin = [b.attrs["up_act"] == "unit" and not enough_rows(r, sparsity) for b, r in zip(blocks, rows)]
    if any(thin):
        record("plain-mlp-too-few-tokens", sum(thin))
        kept = [i for i, t in enumerate(thin) if not t]
        found = iter(calibrate_rows(graph, [blocks[i] for i in kept], [rows[i] for i in kept], name, sparsity,
                                    progress, storage, None if sensitivity is None else [sensitivity[i] for i in kept],
                                    None) if kept else [])
        return [None if t else next(found) for t in thin]
    return calibrate_rows(graph, blocks, rows, name, sparsity, progress, storage, sensitivity, loss_guard)


def calibrate_rows(graph: Graph, blocks: list[Node], rows: list[np.ndarray], name: str, sparsity: float,
                   progress: bool, storage: str, sensitivity, loss_guard) -> list[NeuronThreshold | InputThresholds]:
    """`calibrate` on the blocks' collected input rows."""
    weights = [block_weights(b, graph.weights, name) for b in blocks]
    dims = [r.shape[1] for r in rows]
    # a bias folded into the weights: the rows get their ones column
    rows = [np.concatenate([r, np.ones((len(r), 1), np.float32)], 1) if bw.w_gate.shape[1] > r.shape[1] else r
            for r, bw in zip(rows, weights)]
    if loss_guard is not None and any(bw.w_gate.shape[1] > k for bw, k in zip(weights, dims)):
        record("quality-guard-unmatched")
        loss_guard = None
    plans = calibrate_blocks(weights, rows, name, sparsity, progress, [b.loc or f"block {i}" for i, b in
                                                                        enumerate(blocks)], input_dims=dims,
                           storage=storage, sensitivity=sensitivity, loss_guard=loss_guard)
    fixed = []
    for b, plan in zip(blocks, plans):
        if isinstance(plan, NeuronThreshold) and b.attrs["gate_act"] == "fatrelu":
            # FATReLU already zeroes g <= its own threshold
            plan = NeuronThreshold(max(plan.threshold, b.attrs.get("threshold", 0.0)), plan.criterion, plan.sparsity,
                                   plan.effective, plan.tokens)
        fixed.append(plan)
    return fixed
