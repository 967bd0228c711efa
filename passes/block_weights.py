"""One gated block's weights as calibration reads them ([out, in], as the model holds them) and WINA's column norms:
the common input of the sparsity methods (sparsity_methods.py) and the block rotation (rotation.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ir.activations import reads_input


@dataclass(frozen=True)
class BlockWeights:
    """One block's weights as the model holds them ([out, in]) plus WINA's column norms."""
    w_gate: np.ndarray
    w_up: np.ndarray
    w_down: np.ndarray
    gate_act: str
    up_act: str = "identity"
    x_norm: np.ndarray = field(default=None, repr=False)   # ‖[Wg; Wu][:, i]‖₂
    h_norm: np.ndarray = field(default=None, repr=False)   # ‖Wd[:, j]‖₂

    def __post_init__(self):
        up = np.square(self.w_up, dtype=np.float32).sum(0) if self.reads_up else 0.0
        norm = np.sqrt(np.square(self.w_gate, dtype=np.float32).sum(0) + up)
        object.__setattr__(self, "x_norm", np.maximum(norm, 1e-12).astype(np.float32))
        object.__setattr__(self, "h_norm", np.maximum(np.linalg.norm(self.w_down, axis=0), 1e-12).astype(np.float32))

    @property
    def attrs(self) -> dict:
        return {"gate_act": self.gate_act, "up_act": self.up_act}

    @property
    def reads_up(self) -> bool:
        """False for a non-gated MLP's `unit` up factor: no up rows are stored or read."""
        return reads_input(self.up_act)

    def byte_shares(self) -> tuple[float, float]:
        """Fractions of the block's weight bytes behind x (gate, and up where it is read) and behind h (down)."""
        xb, hb = self.w_gate.size + (self.w_up.size if self.reads_up else 0), self.w_down.size
        return xb / (xb + hb), hb / (xb + hb)
