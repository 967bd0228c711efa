"""One gated block's weights as calibration reads them ([out, in], as the model holds them) and WINA's column norms:
the common input of the sparsity methods (sparsity_methods.py) and the block rotation (rotation.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
    # (F_gate [d_ff], F_up [d_ff], F_down [d_out]): the loss's diagonal Fisher E[g²] of each matrix's output
    # channels; given, the column norms are Fisher-weighted, sqrt(Σ_c F_c W[c, i]²) (loss_sensitivity.channel_fisher)
    channel_fisher: tuple | None = field(default=None, repr=False)

    def __post_init__(self):
        f_gate, f_up, f_down = self.channel_fisher or (None, None, None)
        norm = np.sqrt(_column_energy(self.w_gate, f_gate) + _column_energy(self.w_up, f_up))
        object.__setattr__(self, "x_norm", np.maximum(norm, 1e-12).astype(np.float32))
        object.__setattr__(self, "h_norm", np.maximum(np.sqrt(_column_energy(self.w_down, f_down)), 1e-12)
                           .astype(np.float32))

    @property
    def attrs(self) -> dict:
        return {"gate_act": self.gate_act, "up_act": self.up_act}

    def byte_shares(self) -> tuple[float, float]:
        """Fractions of the block's weight bytes behind x (gate + up) and behind h (down)."""
        xb, hb = self.w_gate.size + self.w_up.size, self.w_down.size
        return xb / (xb + hb), hb / (xb + hb)


def _column_energy(w: np.ndarray, fisher: np.ndarray | None) -> np.ndarray:
    """Σ_c F_c W[c, i]² per column (F = 1 without Fisher weights)."""
    squared = np.square(w, dtype=np.float32)
    return squared.sum(0) if fisher is None else (fisher.astype(np.float32)[:, None] * squared).sum(0)
