"""Mixture-of-experts modules, made exportable with one gated MLP per expert.

transformers 5 stores a layer's experts as batched weights (`gate_up_proj[E, 2n, d]`, `down_proj[E, d, n]`)
and runs them through an `experts_implementation` (`grouped_mm`, `batched_mm`, an eager loop over the experts
that tokens hit). None of those leaves the per-expert blocks visible to a compiler: `grouped_mm` sorts the
tokens and calls an opaque grouped GEMM, `batched_mm` gathers a weight per token, and the eager loop has
data-dependent shapes (`nonzero`) that `torch.export` cannot give static sizes.

While a model is exported, `per_expert_routing` swaps each such experts module's forward for an equivalent
one written per expert, with the routing as weights:

    out = Σ_e  w_e · expert_e(x),    w_e[t] = Σ_k top_k_weights[t, k] · (top_k_index[t, k] == e)

where expert_e reads its weights as `W[e]` (a constant expert id: `canonicalize` turns that slice into a named
weight `W.e<id>`, so each expert is an ordinary gated MLP to detection). The result equals the model's own
forward up to float summation order: a token's non-selected experts get weight 0. Every expert runs on every
token (E/k times the expert FLOPs of the routed forward); the router itself stays dense.

A module is recognised by its shape, not its class: 3-D `down_proj` and `gate_up_proj` (or `up_proj` without
a gate) parameters, and the flags transformers' `use_experts_implementation` sets (`has_gate`, `has_bias`,
`is_transposed`) or, undecorated, the experts interface itself (a `forward(hidden_states, top_k_index,
top_k_weights)` and an `act_fn`; the flags' defaults then hold). Its own `_apply_gate` / `act_fn` /
`post_expert_norm` are called, so custom gating is kept. Expert ids past the last expert's weights, up to its
`total_experts`, are identity experts (LongCat-Flash's "zero" experts): one term, x times their summed weights.
"""

from __future__ import annotations

import contextlib
import inspect
import types

import torch
from torch import nn
from torch.nn import functional as F


def is_batched_experts(module: nn.Module) -> bool:
    down = getattr(module, "down_proj", None)
    first = getattr(module, "gate_up_proj" if getattr(module, "has_gate", True) else "up_proj", None)
    interface = (hasattr(module, "is_transposed") and hasattr(module, "has_gate")) or (
        "top_k_index" in inspect.signature(module.forward).parameters and isinstance(
            getattr(module, "act_fn", None), nn.Module))  # the experts interface, undecorated (LongCat-Flash)
    return (isinstance(down, nn.Parameter) and down.ndim == 3 and isinstance(first, nn.Parameter)
            and first.ndim == 3 and interface)


def _project(module, x, weight, bias):
    y = x @ weight if getattr(module, "is_transposed", False) else F.linear(x, weight)
    return y if bias is None else y + bias


def _gate(module, h):
    """The module's own gating, or transformers' default one: act(gate) * up of the halves of gate_up."""
    if hasattr(module, "_apply_gate"):
        return module._apply_gate(h)
    gate, up = h.chunk(2, dim=-1)
    return module.act_fn(gate) * up


def per_expert_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
    """The experts of one layer, one block per expert, each weighted by its routing weight (0 if not chosen).
    Expert ids past the last weight (`total_experts`: LongCat-Flash's "zero" experts) are identities."""
    has_gate, has_bias = getattr(self, "has_gate", True), getattr(self, "has_bias", False)
    first = "gate_up_proj" if has_gate else "up_proj"
    out, experts = None, self.down_proj.shape[0]
    for e in range(experts):
        weight = (top_k_weights * (top_k_index == e).to(top_k_weights.dtype)).sum(-1, keepdim=True)  # [T, 1]
        h = _project(self, hidden_states, getattr(self, first)[e],
                     getattr(self, f"{first}_bias")[e] if has_bias else None)
        h = _gate(self, h) if has_gate else self.act_fn(h)
        y = _project(self, h, self.down_proj[e], self.down_proj_bias[e] if has_bias else None)
        if getattr(self, "has_post_expert_norm", False):
            y = self.post_expert_norm(y)
        out = y * weight.to(y.dtype) if out is None else out + y * weight.to(y.dtype)
    if getattr(self, "total_experts", experts) > experts:  # identity experts: one term, x times their weights' sum
        weight = (top_k_weights * (top_k_index >= experts).to(top_k_weights.dtype)).sum(-1, keepdim=True)
        out = out + hidden_states * weight.to(hidden_states.dtype)
    return out.to(hidden_states.dtype)


@contextlib.contextmanager
def per_expert_routing(model: nn.Module):
    """Within the block, every batched-experts module of `model` runs `per_expert_forward` (restored after)."""
    patched = [(m, m.__dict__.get("forward")) for m in model.modules() if is_batched_experts(m)]
    for module, _ in patched:
        module.forward = types.MethodType(per_expert_forward, module)
    try:
        yield len(patched)
    finally:
        for module, own in patched:  # an instance-level forward (e.g. a hook's wrapper) is put back
            if own is None:
                del module.forward
            else:
                module.forward = own
