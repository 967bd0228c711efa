"""A small Llama-architecture decoder in plain torch: the model actsparse compiles in its demo and tests.

Why it exists: the compiler needs a real gated-MLP language model whose activations are genuinely sparse,
that ships with the repo (no downloads, a few MB of weights) and that `torch.export` traces without help.
So the forward is written with plain tensor ops only:

- no data-dependent Python control flow, no in-place ops on inputs;
- attention is explicit `q @ k^T` + causal mask + softmax + `@ v` (not `F.scaled_dot_product_attention`,
  which exporters lower into opaque kernels);
- the causal mask is built from the sequence length with an `arange` comparison, and the rotary tables are
  non-persistent buffers sliced to the sequence length, so a dynamic sequence dimension stays symbolic.

Parameter names follow Hugging Face Llama (`layers.0.mlp.gate_proj.weight`, ...) without the `model.` prefix,
so the compiler's pattern detector sees the same structure it will see on real checkpoints.

The gated MLP is `down_proj(act_gate(gate_proj(x)) * act_up(up_proj(x)))` with `mlp_act` choosing the pair:

| mlp_act  | act_gate | act_up   | name in the literature |
|----------|----------|----------|------------------------|
| "drelu"  | relu     | relu     | dReLU (TurboSparse)    |
| "relu"   | relu     | identity | ReGLU                  |
| "swiglu" | silu     | identity | SwiGLU (Llama)         |
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

MLP_ACTIVATIONS = ("drelu", "relu", "swiglu")


@dataclass(frozen=True)
class TinyConfig:
    """Shape of the tiny model; defaults are the committed checkpoint's shape."""

    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_ff: int = 1024
    max_seq: int = 256
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    mlp_act: str = "drelu"

    def __post_init__(self) -> None:
        if self.mlp_act not in MLP_ACTIVATIONS:
            raise ValueError(f"mlp_act={self.mlp_act!r} is not one of {MLP_ACTIVATIONS}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model={self.d_model} must split into {self.n_heads} heads of even size")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TinyConfig:
        """Build from a dict, ignoring unknown keys so older/newer JSON files still load."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class RMSNorm(nn.Module):
    """x / rms(x) * weight (Llama's norm: no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


def rotary_tables(head_dim: int, max_seq: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [max_seq, head_dim] in Llama's half-split layout (frequencies repeated twice)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] on the last dim (Llama's rotary convention)."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with rotary positions, written as explicit matmuls for clean export."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        d = config.d_model
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, d_model = x.shape
        split = (batch, seq, self.n_heads, self.head_dim)
        q = self.q_proj(x).reshape(split).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(x).reshape(split).transpose(1, 2)
        v = self.v_proj(x).reshape(split).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        positions = torch.arange(seq, device=x.device)
        future = positions.unsqueeze(0) > positions.unsqueeze(1)  # [T, T], True above the diagonal
        scores = scores.masked_fill(future, float("-inf"))
        attended = torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, H, T, hd]
        return self.o_proj(attended.transpose(1, 2).reshape(batch, seq, d_model))


class GatedMLP(nn.Module):
    """down_proj(act_gate(gate_proj(x)) * act_up(up_proj(x))); the product is the sparse intermediate."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.mlp_act = config.mlp_act
        self.gate_proj = nn.Linear(config.d_model, config.n_ff, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.n_ff, bias=False)
        self.down_proj = nn.Linear(config.n_ff, config.d_model, bias=False)

    def intermediate(self, x: torch.Tensor) -> torch.Tensor:
        """The [.., n_ff] activations fed to down_proj: the tensor whose zeros the compiler exploits."""
        gate, up = self.gate_proj(x), self.up_proj(x)
        if self.mlp_act == "drelu":
            return F.relu(gate) * F.relu(up)
        if self.mlp_act == "relu":
            return F.relu(gate) * up
        return F.silu(gate) * up

    def forward(
        self, x: torch.Tensor, return_intermediate: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        acts = self.intermediate(x)
        out = self.down_proj(acts)
        return (out, acts) if return_intermediate else out


class DecoderBlock(nn.Module):
    """Pre-norm Llama block: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.d_model, config.rms_eps)
        self.self_attn = CausalSelfAttention(config)
        self.post_attention_layernorm = RMSNorm(config.d_model, config.rms_eps)
        self.mlp = GatedMLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (block output, MLP intermediate) so callers can collect activations without hooks."""
        h = x + self.self_attn(self.input_layernorm(x), cos, sin)
        # Called through the module (not its parts) so hooks and export's module stack see `layers.i.mlp`.
        mlp_out, acts = self.mlp(self.post_attention_layernorm(h), return_intermediate=True)
        return h + mlp_out, acts


class TinyLlama(nn.Module):
    """Byte-level Llama decoder. `forward(ids)` -> logits; `forward(ids, return_mlp_acts=True)` -> (logits, acts)."""

    def __init__(self, config: TinyConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TinyConfig()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.rms_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        # Derived from the config, so kept out of the state dict (the safetensors file holds weights only).
        cos, sin = rotary_tables(config.head_dim, config.max_seq, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style init: N(0, 0.02), residual-output projections scaled down by depth."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(param)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(param, std=residual_std)
            else:
                nn.init.normal_(param, std=0.02)

    def forward(
        self, input_ids: torch.Tensor, return_mlp_acts: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        seq = input_ids.shape[1]
        cos = self.rope_cos[:seq]
        sin = self.rope_sin[:seq]
        x = self.embed_tokens(input_ids)
        mlp_acts: list[torch.Tensor] = []
        for layer in self.layers:
            x, acts = layer(x, cos, sin)
            mlp_acts.append(acts)
        logits = self.lm_head(self.norm(x))
        if return_mlp_acts:
            return logits, mlp_acts
        return logits

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.8,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample continuations by re-running the full window (no KV cache: the model is for compiling)."""
        ids = input_ids
        for _ in range(max_new_tokens):
            logits = self(ids[:, -self.config.max_seq :])[:, -1, :]
            if temperature <= 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                next_id = torch.multinomial(probs, 1, generator=generator)
            ids = torch.cat([ids, next_id], dim=1)
        return ids
