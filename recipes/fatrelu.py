"""FATReLU threshold shifting: after recovery, zero the small positive gate activations too.

ProSparse's last step replaces relu(g) by FATReLU, where(g > t, g, 0) with a small t > 0: many live neurons
have tiny activations that contribute almost nothing, and zeroing them raises sparsity at a small loss cost.
`ReluGatedMLP.threshold` is that t; the compiler's detector recognizes where(g > t, g, 0) as `fatrelu` and the
exact-mode kernels skip those neurons losslessly (the model *is* the thresholded one).

Choosing t per layer, from data (`shift_thresholds`):

1. On held-out batches, every (token, neuron) entry of a layer gets a key: its gate pre-activation g if the
   entry is live now (h != 0), else -inf (dead whatever t is). At threshold τ >= the current t the entry is
   zero iff key <= τ, so the layer's sparsity at τ is the fraction of keys <= τ, and the τ that gives a
   target sparsity s is the s-quantile of the keys (never below the current t).
2. One target s for all layers is searched by bisection: the largest s (up to `sparsity`, or 0.995) whose
   held-out perplexity stays within `max_ppl_increase` of the unshifted model. Layers already sparser than s
   keep their threshold.

The result is applied to the model in place and returned (thresholds, per-layer sparsity before/after, losses).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..relufication import RelufyError, relu_mlps
from .prosparse import lm_loss


@dataclass
class ThresholdShift:
    thresholds: dict[str, float]
    sparsity_before: dict[str, float]
    sparsity_after: dict[str, float]
    loss_before: float
    loss_after: float
    target: float          # the common sparsity target the search settled on

    @property
    def ppl_increase(self) -> float:
        """Relative perplexity increase on the batches the thresholds were chosen on."""
        return math.exp(self.loss_after - self.loss_before) - 1

    @property
    def mean_sparsity_before(self) -> float:
        return float(np.mean(list(self.sparsity_before.values())))

    @property
    def mean_sparsity_after(self) -> float:
        return float(np.mean(list(self.sparsity_after.values())))

    def to_dict(self) -> dict:
        return {**asdict(self), "ppl_increase": self.ppl_increase}


@torch.no_grad()
def shift_thresholds(model: nn.Module, batches: Iterable, *, sparsity: float | None = None,
                     max_ppl_increase: float = 0.01, loss_fn: Callable = lm_loss, max_keys: int = 1 << 21,
                     search_steps: int = 8, progress: bool = True, seed: int = 0) -> ThresholdShift:
    """Raise each `ReluGatedMLP`'s FATReLU threshold to reach `sparsity` (or as sparse as the bound allows) while
    perplexity on `batches` (held-out `(inputs, targets)` pairs) rises by at most `max_ppl_increase`."""
    from tqdm.auto import tqdm

    batches = list(batches)
    if not batches:
        raise ValueError("shift_thresholds needs held-out batches to choose thresholds on")
    if sparsity is not None and not 0 < sparsity < 1:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    mlps = relu_mlps(model)
    if not mlps:
        raise RelufyError(f"{type(model).__name__} has no ReluGatedMLP: run actsparse.relufy(model) first")
    was_training = model.training
    model.eval()
    current = {name: mlp.threshold for name, mlp in mlps}
    keys = _collect_keys(model, mlps, batches, max_keys, seed)
    loss0, sparsity0 = _loss_and_sparsity(model, mlps, batches, loss_fn)
    bound = math.log1p(max_ppl_increase)

    def apply(target: float) -> dict[str, float]:
        chosen = {}
        for name, mlp in mlps:
            k = keys[name]
            index = min(len(k) - 1, max(0, math.ceil(target * len(k)) - 1))
            chosen[name] = max(current[name], float(k[index]))
            mlp.threshold = chosen[name]
        return chosen

    lo, hi = min(sparsity0.values()), (sparsity if sparsity is not None else 0.995)
    best = (lo, dict(current), loss0, sparsity0)
    bar = tqdm(range(search_steps + 1), desc="fatrelu thresholds", disable=not progress, dynamic_ncols=True)
    for step in bar:
        target = hi if step == 0 else 0.5 * (lo + hi)
        chosen = apply(target)
        loss, measured = _loss_and_sparsity(model, mlps, batches, loss_fn)
        ok = loss - loss0 <= bound
        bar.set_postfix(target=f"{target:.3f}", ppl_increase=f"{math.expm1(loss - loss0):+.2%}",
                        sparsity=f"{np.mean(list(measured.values())):.3f}")
        if ok and target >= best[0]:
            best = (target, chosen, loss, measured)
        if step == 0 and ok:
            break
        if step > 0:
            lo, hi = (target, hi) if ok else (lo, target)
    target, chosen, loss, measured = best
    for name, mlp in mlps:
        mlp.threshold = chosen[name]
    model.train(was_training)
    return ThresholdShift(chosen, sparsity0, measured, loss0, loss, target)


def _collect_keys(model, mlps, batches, max_keys: int, seed: int) -> dict[str, np.ndarray]:
    """Per layer, sorted keys (g where the entry is live, -inf where it is zero anyway), subsampled to max_keys."""
    rng = np.random.default_rng(seed)
    per_call = max(1, max_keys // len(batches))
    gates: dict[str, torch.Tensor] = {}
    keys: dict[str, list[np.ndarray]] = {name: [] for name, _ in mlps}
    hooks = []

    def on_gate(name):
        def hook(module, args, out):
            gates[name] = out.float()
        return hook

    def on_up(name, mlp):
        def hook(module, args, out):
            g, u = gates.pop(name), out.float()
            live = (g > mlp.threshold) & ((u > 0) if mlp.kind == "drelu" else (u != 0))
            k = torch.where(live, g, -math.inf).flatten().numpy()
            if k.size > per_call:
                k = rng.choice(k, per_call, replace=False)
            keys[name].append(k)
        return hook

    try:
        for name, mlp in mlps:
            hooks.append(mlp.gate.register_forward_hook(on_gate(name)))
            hooks.append(mlp.up.register_forward_hook(on_up(name, mlp)))
        for inputs, _ in batches:
            model(inputs)
    finally:
        for h in hooks:
            h.remove()
    return {name: np.sort(np.concatenate(parts)) for name, parts in keys.items()}


def _loss_and_sparsity(model, mlps, batches, loss_fn) -> tuple[float, dict[str, float]]:
    zeros = {name: 0.0 for name, _ in mlps}
    counts = {name: 0 for name, _ in mlps}
    hooks = []

    def counter(name):
        def hook(module, args):
            zeros[name] += float((args[0] == 0).sum())
            counts[name] += args[0].numel()
        return hook

    total, n = 0.0, 0
    try:
        for name, mlp in mlps:
            hooks.append(mlp.down.register_forward_pre_hook(counter(name)))
        for batch in batches:
            weight = batch[1].numel()
            total += float(loss_fn(model, batch)) * weight
            n += weight
    finally:
        for h in hooks:
            h.remove()
    return total / n, {name: zeros[name] / max(1, counts[name]) for name in zeros}
