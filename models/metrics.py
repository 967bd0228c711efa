"""Held-out quality and activation sparsity of a tiny model.

Sparsity here is the quantity the compiler's exact mode exploits: the fraction of (token, neuron) entries of
the MLP intermediate `act_gate(gate) * act_up(up)` that are exactly 0.0, so the matching down_proj column
can be skipped with no change to the output. Near-zeros do not count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .tiny import TinyLlama


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean next-byte cross-entropy, nats
    sparsity_per_layer: list[float]

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        # One token is one byte, so nats/token / ln 2 is bits per byte.
        return self.loss / math.log(2)

    @property
    def sparsity_mean(self) -> float:
        return sum(self.sparsity_per_layer) / len(self.sparsity_per_layer)

    def to_dict(self) -> dict[str, object]:
        return {
            "val_loss": round(self.loss, 5),
            "val_perplexity": round(self.perplexity, 4),
            "val_bits_per_byte": round(self.bits_per_byte, 5),
            "sparsity_per_layer": [round(s, 5) for s in self.sparsity_per_layer],
            "sparsity_mean": round(self.sparsity_mean, 5),
        }


def zero_fraction(acts: torch.Tensor) -> float:
    """Fraction of entries that are exactly zero."""
    return (acts == 0).sum().item() / acts.numel()


@torch.no_grad()
def mlp_sparsity(model: TinyLlama, input_ids: torch.Tensor) -> list[float]:
    """Per-layer exact-zero fraction of the MLP intermediate on `input_ids` [B, T]."""
    _, acts = model(input_ids, return_mlp_acts=True)
    return [zero_fraction(a) for a in acts]


@torch.no_grad()
def evaluate(model: TinyLlama, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 16) -> EvalResult:
    """Loss and per-layer sparsity over fixed windows, in float32, batch by batch to bound memory."""
    was_training = model.training
    model.eval()
    loss_sum = 0.0
    zeros = [0] * model.config.n_layers
    entries = 0
    for start in range(0, inputs.shape[0], batch_size):
        ids, tgt = inputs[start : start + batch_size], targets[start : start + batch_size]
        logits, acts = model(ids, return_mlp_acts=True)
        loss_sum += F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="sum").item()
        entries += acts[0].numel()
        for layer, a in enumerate(acts):
            zeros[layer] += int((a == 0).sum().item())
    model.train(was_training)
    return EvalResult(loss=loss_sum / targets.numel(), sparsity_per_layer=[z / entries for z in zeros])


def unigram_bits_per_byte(train: torch.Tensor, val: torch.Tensor) -> float:
    """Baseline: cross-entropy of val bytes under train's add-one-smoothed byte frequencies."""
    counts = torch.bincount(train.long(), minlength=256).double() + 1.0
    log_probs = (counts / counts.sum()).log2()
    return float(-log_probs[val.long()].mean())
