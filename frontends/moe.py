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
`post_expert_norm` are called, so custom gating is kept (a norm that takes expert ids, Ergo's, gets expert e's).
Expert ids past the last expert's weights, up to its `total_experts`, are identity experts (LongCat-Flash's "zero"
experts): one term, x times their summed weights.

Other layouts are entries of one table (`LAYOUTS`: recogniser, methods replaced): DBRX keeps each projection of
all experts in one [E·n, d] matrix and loops over the experts hit (`nonzero`); expert e is rows e·n .. (e+1)·n.
JetMoE sorts tokens by expert and splits them by per-expert counts (`expert_size.tolist()`), in its MLP experts
and in its mixture-of-attention (`map`: each token's k query projections, `reduce`: their output projections
summed by routing weight); both are written per expert with the router's top-k as weights, as above.
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
        y = _post_expert_norm(self, y, e)
        out = y * weight.to(y.dtype) if out is None else out + y * weight.to(y.dtype)
    if getattr(self, "total_experts", experts) > experts:  # identity experts: one term, x times their weights' sum
        weight = (top_k_weights * (top_k_index >= experts).to(top_k_weights.dtype)).sum(-1, keepdim=True)
        out = out + hidden_states * weight.to(hidden_states.dtype)
    return out.to(hidden_states.dtype)


def _post_expert_norm(self, y: torch.Tensor, e: int) -> torch.Tensor:
    """Expert e's own norm of its output where the module has one: flagged by `has_post_expert_norm` (MuseSpark:
    `norm(y)`), or one that takes the expert ids (Ergo's learned scale per expert, `norm(y, ids)`, applied by the
    subclass's forward this one replaces)."""
    norm = getattr(self, "post_expert_norm", None)
    if norm is None:
        return y
    if len(inspect.signature(norm.forward).parameters) >= 2:
        return norm(y, torch.full(y.shape[:-1], e, dtype=torch.long, device=y.device))
    return norm(y) if getattr(self, "has_post_expert_norm", False) else y


def _expert_weight(weights: torch.Tensor, top_k_weights: torch.Tensor, top_k_index: torch.Tensor, e: int):
    """[..., 1]: a token's routing weight for expert e (0 where e is none of its top-k)."""
    return (top_k_weights * (top_k_index == e).to(top_k_weights.dtype)).sum(-1, keepdim=True).to(weights.dtype)


# --- DBRX: each projection of all experts in one [E·n, d] matrix, a Python loop over the experts hit ------------
def is_dbrx_experts(module: nn.Module) -> bool:
    mlp = getattr(module, "mlp", None)
    stacked = all(isinstance(getattr(mlp, w, None), nn.Parameter) and getattr(mlp, w).ndim == 2
                  for w in ("w1", "v1", "w2"))
    return stacked and isinstance(getattr(module, "num_experts", None), int) and \
        "top_k_index" in inspect.signature(module.forward).parameters


def dbrx_per_expert_forward(self, hidden_states, top_k_index, top_k_weights):
    """DbrxExperts: expert e owns rows e·n .. (e+1)·n of w1 (gate), v1 (up) and w2 (down, [n, d]): a row slice of
    a weight, which canonicalize names as the expert's own weight."""
    shape, n = hidden_states.shape, self.ffn_hidden_size
    x, out = hidden_states.reshape(-1, self.hidden_size), None
    for e in range(self.num_experts):
        rows = slice(e * n, (e + 1) * n)
        y = self.mlp(x, self.mlp.w1[rows], self.mlp.v1[rows], self.mlp.w2[rows])
        y = y * _expert_weight(y, top_k_weights, top_k_index, e)
        out = y if out is None else out + y
    return out.view(shape)


# --- JetMoE: tokens sorted by expert and split by per-expert counts (`expert_size.tolist()`) ----------------------
def is_jetmoe_experts(module: nn.Module) -> bool:
    """JetMoE's MoE (`forward`) and mixture-of-attention (`map` / `reduce`): a top-k router `router.layer` and
    [E, out, in] expert weights `input_linear.weight`, `output_linear.weight`."""
    return all(isinstance(getattr(getattr(module, w, None), "weight", None), nn.Parameter)
               and getattr(module, w).weight.ndim == 3 for w in ("input_linear", "output_linear")) \
        and isinstance(getattr(getattr(module, "router", None), "layer", None), nn.Linear)


def _jetmoe_routing(self, x):
    """The router's choice as JetMoeTopKGating makes it, before it sorts tokens: (weights, indices [T, k], logits)."""
    logits = self.router.layer(x).float()
    values, index = logits.topk(self.router.top_k, dim=1)
    return torch.softmax(values, dim=1).type_as(x), index, logits


def jetmoe_moe_forward(self, layer_input):
    """JetMoeMoE: Σ_e w_e · down_e(act(gate_e(x)) · up_e(x)) + bias, gate and up the halves of input_linear[e]."""
    bsz, length, d = layer_input.shape
    x = layer_input.reshape(-1, d)
    weights, index, _ = _jetmoe_routing(self, x)
    out = None
    for e in range(self.input_linear.num_experts):
        gate, up = F.linear(x, self.input_linear.weight[e]).chunk(2, dim=-1)
        y = F.linear(self.activation(gate) * up, self.output_linear.weight[e])
        y = y * _expert_weight(y, weights, index, e)
        out = y if out is None else out + y
    return out.view(bsz, length, d) + self.bias


def jetmoe_moa_map(self, layer_input):
    """JetMoeMoA.map: query slot j of a token is its j-th expert's projection, Σ_e [index_j = e] · W_e x (every
    expert's projection computed, the one chosen kept: attention experts are one linear each)."""
    bsz, length, d = layer_input.shape
    x = layer_input.reshape(-1, d)
    weights, index, logits = _jetmoe_routing(self, x)
    out = None
    for e in range(self.num_experts):
        y = F.linear(x, self.input_linear.weight[e])[:, None, :] * (index == e).to(x.dtype)[..., None]
        out = y if out is None else out + y
    return out.view(bsz, length, self.top_k, -1), logits, (weights, index)


def jetmoe_moa_reduce(self, layer_input, topo_info):
    """JetMoeMoA.reduce: Σ_j w_j · Wo_{index_j} · slot_j + bias, with the routing `map` returned."""
    weights, index = topo_info
    bsz, length, k, hidden = layer_input.shape
    slots, out = layer_input.reshape(-1, k, hidden), None
    for e in range(self.num_experts):
        y = (F.linear(slots, self.output_linear.weight[e]) * (weights * (index == e).to(weights.dtype))[..., None])
        out = y.sum(1) if out is None else out + y.sum(1)
    return out.view(bsz, length, self.input_size) + self.bias


# expert layouts: (recognise the module, {method: export-friendly replacement}); the first that matches is used
LAYOUTS = [
    (is_batched_experts, {"forward": per_expert_forward}),  # transformers 5's batched experts
    (is_dbrx_experts, {"forward": dbrx_per_expert_forward}),  # DBRX: [E·n, d] weights
    (lambda m: is_jetmoe_experts(m) and hasattr(m, "map"), {"map": jetmoe_moa_map, "reduce": jetmoe_moa_reduce}),
    (lambda m: is_jetmoe_experts(m) and not hasattr(m, "map"), {"forward": jetmoe_moe_forward}),
]


def _layout(module: nn.Module) -> dict | None:
    return next((methods for recognise, methods in LAYOUTS if recognise(module)), None)


@contextlib.contextmanager
def per_expert_routing(model: nn.Module):
    """Within the block, every experts module of `model` of a known layout (LAYOUTS) runs its per-expert form
    (restored after); yields how many modules were patched."""
    patched = [(m, methods) for m in model.modules() if (methods := _layout(m)) is not None]
    saved = [(m, {name: m.__dict__.get(name) for name in methods}) for m, methods in patched]
    for module, methods in patched:
        for name, replacement in methods.items():
            setattr(module, name, types.MethodType(replacement, module))
    try:
        yield len(patched)
    finally:
        for module, own in saved:  # an instance-level method (e.g. a hook's wrapper) is put back
            for name, method in own.items():
                if method is None:
                    delattr(module, name)
                else:
                    setattr(module, name, method)
