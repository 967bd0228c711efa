"""Hugging Face causal LMs: a one-input, logits-only view of the model, and `import_hf`.

transformers models take several inputs and return a `ModelOutput` with a KV cache; exporting them cleanly needs
`use_cache=False` and an explicit `attention_mask` (see TVM-NOTES "Frontend quirks"). `CausalLMLogits` fixes
both, so the graph has one input (`input_ids`) and one output (the logits). Its `actsparse_prefix` makes the
importer name weights and modules as the wrapped model does (`model.layers.0.mlp.gate_proj.weight`).
Mixture-of-experts layers are exported one gated MLP per expert, the router kept dense (see `moe.py`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..ir import Graph


class CausalLMLogits(nn.Module):
    """`ids -> model(input_ids=ids, attention_mask=ones, use_cache=False).logits`."""

    actsparse_prefix = "model"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits


def import_hf(model: nn.Module, seq_len: int = 8, *, dynamic_seq: bool = True, batch: int = 1) -> Graph:
    """Import a transformers causal LM as `graph(input_ids: i64[batch, seq]) -> logits`."""
    from .torch_export import import_torch

    vocab = getattr(getattr(model, "config", None), "vocab_size", 2) or 2
    ids = torch.arange(batch * seq_len, dtype=torch.long).reshape(batch, seq_len) % vocab
    return import_torch(CausalLMLogits(model), (ids,), dynamic_seq=dynamic_seq)
