"""Torch modules holding a benchmark's numpy weights: the one place the benchmarks copy weights into torch layers."""

from __future__ import annotations

from collections.abc import Iterable


def with_weights(model, layers_and_weights: Iterable[tuple[object, object]], dtype: str):
    """`model` in eval mode and `dtype`, each layer's `weight` first overwritten (in torch's own memory, as a user's
    model holds it) by its numpy array [out, in]."""
    import torch

    with torch.no_grad():
        for layer, w in layers_and_weights:
            layer.weight.copy_(torch.from_numpy(w))
    return model.to(getattr(torch, dtype)).eval()
