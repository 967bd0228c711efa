"""Threshold-mode gated-MLP kernel for CPUs: the exact kernel (`sparse_mlp.compacting_gated_mlp`), any activation.

Training-free sparsity (CATS, TEAL, TurboSparse's top-k%) calls a neuron inactive for a token when its
activation is small rather than zero. Buffers are those of the exact kernel (x [M, d], w_gate / w_up /
w_down_t [n_ff, d], out [M, d]); per token m:

    criterion "gate"     (CATS)       a = act_g(w_gate[j]·x[m]);  a = a if |a| > t else 0;  h = a · act_u(w_up[j]·x[m])
    criterion "product"  (top-k%, TEAL) h = act_g(w_gate[j]·x[m]) · act_u(w_up[j]·x[m]);  h = h if |h| > t else 0
    out[m] = Σ_j h[m, j] · w_down_t[j]

act_g is any of relu / fatrelu / silu / gelu (erf) / gelu_tanh / identity (fatrelu uses the same t, which is
what the pass gives it: a ReLU-family block in threshold mode is FATReLU at t). Structure, as in the exact
kernel: in one parallel region each task streams its contiguous gate rows (dense), masks the activations, and
lists the neurons some token keeps; "gate" then gathers only the listed up rows, "product" needs every up row
(the criterion reads u) and compacts the kept h in place. A second region splits the output columns over the
tasks and streams the listed down rows. So "gate" reads gate + (1 - s)·(up + down), "product" gate + up +
(1 - s)·down bytes, at sparsity s. The result equals numpy's masked computation up to float32 summation order
(an activation within rounding of t may fall on either side).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from tvm.script import tirx as T

from ...ir.activations import reads_input
from .common import GATE_ACTS, activation, skipping_value, symbol, threshold_tag
from .schedule import CpuSchedule
from .sparse_mlp import check_mlp, compacting_gated_mlp, weights_tag

THRESHOLD_GATE_ACTS = GATE_ACTS
CRITERIA = ("gate", "product")


def check_threshold(d: int, n_ff: int, gate_act: str, up_act: str, dtype: str, criterion: str,
                    down_dtype: str | None = None) -> None:
    """One clear error for a threshold kernel request no kernel can serve (shared with the CUDA kernel)."""
    check_mlp(d, n_ff, gate_act, up_act, dtype, THRESHOLD_GATE_ACTS, down_dtype)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


@dataclass(frozen=True)
class ThresholdRule:
    """The per-neuron decisions of threshold mode as PrimExpr -> PrimExpr maps, shared by the CPU and CUDA kernels.

    act_g        the gate activation (the activation table's form for the kernel family)
    masked_gate  criterion "gate": act_g(g) where |act_g(g)| > t, else 0
    kept         criterion "product": |h| > t
    """

    act_g: Callable
    masked_gate: Callable
    kept: Callable


def threshold_rule(gate_act: str, threshold: float, family: str = "cpu") -> ThresholdRule:
    """NaN counts as kept (it must reach the output); masked_gate is a `skipping_value` (Inf/NaN inputs list every
    neuron)."""
    thr, zero = T.float32(float(threshold)), T.float32(0)
    act_g = activation(gate_act, threshold, family)
    masked = skipping_value(lambda v: T.if_then_else(T.Or(T.isnan(act_g(v)), T.abs(act_g(v)) > thr),
                                                     act_g(v), zero))
    return ThresholdRule(act_g, masked, lambda v: T.Or(T.isnan(v), T.abs(v) > thr))


@cache
def threshold_gated_mlp(d: int, n_ff: int, *, gate_act: str = "silu", up_act: str = "identity",
                        threshold: float = 0.0, criterion: str = "gate", dtype: str = "float32",
                        down_dtype: str | None = None, sched: CpuSchedule):
    """Threshold-mode gated MLP: (x, w_gate, w_up, w_down_t, out), see the module docstring; `down_dtype`:
    w_down_t's layout where it is not `dtype`'s."""
    check_threshold(d, n_ff, gate_act, up_act, dtype, criterion, down_dtype)
    down = down_dtype or dtype
    sched = sched.fitted(d, dtype, down)
    rule, act_u = threshold_rule(gate_act, threshold), activation(up_act)
    name = symbol("gmlp", "thr", criterion, f"d{d}", f"f{n_ff}", gate_act.replace("_", ""), up_act,
                  f"t{threshold_tag(threshold)}", weights_tag(dtype, down), sched.tag)
    reads_up = reads_input(up_act)   # `unit` (a non-gated MLP): no up row is read
    if criterion == "product":
        return compacting_gated_mlp(d, n_ff, dtype, sched, name, gate_value=rule.act_g, act_u=act_u,
                                    keep_product=rule.kept, kernel="threshold", reads_up=reads_up, down_dtype=down)
    return compacting_gated_mlp(d, n_ff, dtype, sched, name, gate_value=rule.masked_gate, act_u=act_u,
                                kernel="threshold", reads_up=reads_up, down_dtype=down)
