"""Threshold mode's routed MoE experts: each expert's CATS threshold, calibrated on the tokens routed to it.

A routed expert (one route-moe will run on its tokens only, `route_moe.expert_routing`) takes threshold mode only as
the routed kernel does (ir/moe.py's `ROUTED_MODES`): a token keeps neuron i of expert e where |act_gate(g_i)| > t_e
(the CATS criterion, `criterion="gate"`), whatever method the other blocks take, since the routed kernel skips
neurons, not input channels. Its t_e is the `sparsity` quantile of |act_gate(g)| over the calibration tokens the
router sends to expert e: the rows whose routing weight r_e is not 0 (`collect_inputs(routing=)`, in the threshold
pass's one pass over the samples), not every token,
whose gate values the expert never sees in use. An expert the calibration routes too few tokens to for that quantile
(`input_thresholds.enough_rows`) keeps t = 0 (its own FATReLU threshold where it has one): every neuron the gate
does not zero, lossless; the report's row says why.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Node
from .base import note, record
from .calibrate import block_weights
from .input_thresholds import enough_rows
from .sparsity_methods import NeuronThreshold, method, neuron_threshold

ROUTED_METHOD = "cats"   # the routed kernel's criterion: the gate's activation against t_e
TOO_FEW_REASON = ("a routed expert the calibration routed {tokens} tokens to, too few for sparsity {sparsity:g}: "
                  "threshold 0 (lossless); give more calibration text")


def routed_reason(asked: str) -> str:
    """Why a routed expert takes ROUTED_METHOD where `asked` was named ("" when it is that method)."""
    if asked == ROUTED_METHOD:
        return ""
    return f"{ROUTED_METHOD}: a routed expert, whose kernel takes a threshold per expert, not {asked}'s"


def calibrate_routed_experts(graph: Graph, blocks: list[Node], rows: list[np.ndarray],
                             sparsity: float) -> list[NeuronThreshold]:
    """Each routed expert's NeuronThreshold (module docstring) from its rows: `collect_inputs` with the expert's
    routing weight (`route_moe.expert_routing`), so the tokens routed to it only."""
    cats = method(ROUTED_METHOD)
    plans = []
    for block, r in zip(blocks, rows):
        own = block.attrs.get("threshold", 0.0) if block.attrs["gate_act"] == "fatrelu" else 0.0
        if not enough_rows(r, sparsity):
            record("routed-expert-too-few-tokens")
            note({"kind": "kept-threshold", "location": block.loc, "mode": "threshold",
                  "reason": TOO_FEW_REASON.format(tokens=len(r), sparsity=sparsity)})
            plans.append(NeuronThreshold(own, cats.criterion, float("nan"), float("nan"), len(r)))
            continue
        plan = neuron_threshold(block_weights(block, graph.weights, ROUTED_METHOD), np.asarray(r, np.float32), cats,
                                sparsity)
        plans.append(NeuronThreshold(max(plan.threshold, own), plan.criterion, plan.sparsity, plan.effective,
                                     plan.tokens))
    return plans
