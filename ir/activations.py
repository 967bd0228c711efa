"""Activations, each defined once: its numpy reference and whether it is exactly zero below a threshold.

`zero_below` is what exact mode needs: such an activation outputs exactly 0 for every pre-activation at or
below its threshold (0 unless the entry takes one), so a neuron there contributes nothing and its weights need
not be read. `passes/activation_analysis.py` decides which of these an arbitrary activation subgraph computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Activation:
    name: str
    reference: Callable[[np.ndarray, float], np.ndarray]  # (x, threshold) -> act(x), same dtype
    zero_below: bool  # exactly 0 for x <= threshold
    thresholded: bool = False  # takes a threshold attribute (else it is 0)
    doc: str = ""


def _relu(x, t=0.0):
    return np.maximum(x, 0).astype(x.dtype)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


ACTIVATIONS = {a.name: a for a in (
    Activation("relu", _relu, True, doc="max(x, 0)"),
    Activation("fatrelu", lambda x, t=0.0: np.where(x > t, x, 0).astype(x.dtype), True, True,
               "x if x > t else 0 (FATReLU, shifted ReLU)"),
    Activation("relu2", lambda x, t=0.0: np.square(_relu(x)).astype(x.dtype), True, doc="max(x, 0)² (Primer)"),
    Activation("relu6", lambda x, t=0.0: np.clip(x, 0, 6).astype(x.dtype), True, doc="min(max(x, 0), 6)"),
    Activation("silu", lambda x, t=0.0: (x * _sigmoid(x)).astype(x.dtype), False),
    Activation("identity", lambda x, t=0.0: x, False),
)}
ZERO_BELOW = tuple(name for name, a in ACTIVATIONS.items() if a.zero_below)  # exact mode's activations
