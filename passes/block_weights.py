"""One gated block's weights as calibration reads them ([out, in], as the model holds them) and WINA's column norms:
the common input of the sparsity methods (sparsity_methods.py) and the block rotation (rotation.py).

The column norms measure an input channel by what its weights put into the gate / up pre-activations, all rows
alike. With an output metric (`with_output_metric`, the methods whose entry asks for it) they measure it by what an
error in it does to the block's output, to first order through the activations: an error e on x moves neuron j's
h = act(g_j)·u_j by p_j·(Wg_j·e) + q_j·(Wu_j·e) (p = act'(g)·u, q = act(g) at the calibration rows), and the
output by that times ‖Wd[:, j]‖; so a channel's norm² is Σ_j ‖Wd_j‖²·(E[p²]·Wg[j,i]² + 2E[pq]·Wg[j,i]·Wu[j,i] +
E[q²]·Wu[j,i]²), and the metric basis (rotation.metric_rotation) turns the input in the same quadratic form. On a
GeGLU model WᵀW weighs gate and up rows alike where the activation does not (BENCHMARKS.md, session 50).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..ir.activations import apply, reads_input

OUTPUT_METRIC_ROWS = 4096   # calibration rows the output metric's expectations are taken over
# a method's `output_metric` -> with_output_metric's cross term. At asked 0.5 (BENCHMARKS.md, session 50; Gemma 3 270M
# / SmolLM2-135M): "full" in the metric basis +6.7% / +5.5% (the weights' metric: +14.4% / +5.4%; the principal
# axes, the default: +9.5% / +3.9%); "diagonal" in the principal axes +9.1% / +5.9%; "full" there was far worse
OUTPUT_METRICS = {"diagonal": False, "full": True}


@dataclass(frozen=True)
class BlockWeights:
    """One block's weights as the model holds them ([out, in]) plus WINA's column norms."""
    w_gate: np.ndarray
    w_up: np.ndarray
    w_down: np.ndarray
    gate_act: str
    up_act: str = "identity"
    # per neuron (E[p²], E[q²], E[pq]) times ‖Wd_j‖² (the module docstring), or None: every row alike
    neuron_metric: tuple | None = field(default=None, repr=False)
    x_norm: np.ndarray = field(default=None, repr=False)   # ‖[Wg; Wu][:, i]‖₂, in the output metric where given
    h_norm: np.ndarray = field(default=None, repr=False)   # ‖Wd[:, j]‖₂

    def __post_init__(self):
        if self.neuron_metric is None:
            up = np.square(self.w_up, dtype=np.float32).sum(0) if self.reads_up else 0.0
            norm_sq = np.square(self.w_gate, dtype=np.float32).sum(0) + up
        else:
            a, b, c = self.neuron_metric
            norm_sq = (a[:, None] * np.square(self.w_gate)).sum(0)
            if self.reads_up:
                norm_sq = norm_sq + (b[:, None] * np.square(self.w_up)
                                     + 2 * c[:, None] * self.w_gate * self.w_up).sum(0)
        norm = np.sqrt(np.maximum(norm_sq, 0))
        object.__setattr__(self, "x_norm", np.maximum(norm, 1e-12).astype(np.float32))
        object.__setattr__(self, "h_norm", np.maximum(np.linalg.norm(self.w_down, axis=0), 1e-12).astype(np.float32))

    @property
    def attrs(self) -> dict:
        return {"gate_act": self.gate_act, "up_act": self.up_act}

    @property
    def reads_up(self) -> bool:
        """False for a non-gated MLP's `unit` up factor: no up rows are stored or read."""
        return reads_input(self.up_act)

    def input_metric(self, dims: int) -> np.ndarray:
        """M [dims, dims] (float64) of the first `dims` input columns: WᵀW (W = [W_gate; W_up]), or the output
        metric's quadratic form where the block has one; x_norm² is its diagonal."""
        wg = self.w_gate[:, :dims].astype(np.float64)
        if self.neuron_metric is None:
            w = np.concatenate([wg, self.w_up[:, :dims].astype(np.float64)])
            return w.T @ w
        a, b, c = (v.astype(np.float64) for v in self.neuron_metric)
        m = wg.T @ (a[:, None] * wg)
        if self.reads_up:
            wu = self.w_up[:, :dims].astype(np.float64)
            cross = wg.T @ (c[:, None] * wu)
            m = m + wu.T @ (b[:, None] * wu) + cross + cross.T
        return m

    def with_output_metric(self, rows: np.ndarray, cross: bool = True) -> BlockWeights:
        """This block with the output metric taken on calibration rows [tokens, d] (the first OUTPUT_METRIC_ROWS);
        cross=False leaves E[pq] out (each neuron's gate and up errors counted apart: `OUTPUT_METRICS`)."""
        x = rows[:OUTPUT_METRIC_ROWS].astype(np.float32)
        g = x @ self.w_gate.T
        q = apply(self.gate_act, g)
        step = 1e-3   # act' by central differences: any table activation, kinks included
        slope = (apply(self.gate_act, g + step) - apply(self.gate_act, g - step)) / (2 * step)
        p = slope * apply(self.up_act, x @ self.w_up.T) if self.reads_up else slope
        if not self.reads_up:   # no up factor: h = act(g), only the gate's rows move it
            q = np.zeros_like(q)
        down = np.square(self.w_down.astype(np.float64)).sum(0)
        metric = [(np.mean(v.astype(np.float64), 0) * down).astype(np.float32) for v in (p * p, q * q, p * q)]
        if not cross:
            metric[2] = np.zeros_like(metric[2])
        return replace(self, neuron_metric=tuple(metric))

    def byte_shares(self) -> tuple[float, float]:
        """Fractions of the block's weight bytes behind x (gate, and up where it is read) and behind h (down)."""
        xb, hb = self.w_gate.size + (self.w_up.size if self.reads_up else 0), self.w_down.size
        return xb / (xb + hb), hb / (xb + hb)
