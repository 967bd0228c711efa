"""The state one generation decodes in (runtime/decoder.py): its caches, position, last logits and the ids fed."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class DecodeState:
    """The KV cache (device tensors, written in place) and the next position to write."""

    caches: list
    position: int = 0
    logits: np.ndarray | None = field(default=None, repr=False)  # of the last token fed
    tokens: list = field(default_factory=list, repr=False)  # the ids fed (a module without a cache runs them all)
    owned: bool = field(default=False, repr=False)  # caches are the decoder's own (the captured step's) buffers
