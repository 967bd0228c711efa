"""Decoding with a KV cache: one token per call, the form in which batch-1 LLM inference is memory-bound.

`TinyLlamaStep(model)` wraps a `TinyLlama` (same weights, nothing copied) as one decoding step:

    logits [1, 1, V], k_new, v_new = step(ids [1, 1] int64, pos [1] int64, k_cache, v_cache)
    k_cache, v_cache: [n_layers, 1, n_heads, max_seq, head_dim] float32, slot p holding position p < pos
    k_new, v_new:     [n_layers, 1, n_heads, 1, head_dim], this position's keys and values

The caller owns the cache and writes k_new / v_new into slot `pos` (`decode` does), as serving runtimes do:
the step reads the cache but never copies it. Every shape is static (the cache has `max_seq` slots), so the
compiled graph needs no symbolic dims: attention scores all slots, masks the ones at or after `pos`, and
takes the current token's own key and value as one more column. `decode` runs greedy generation with any step
function (torch, a compiled module), so the two are compared on the same loop.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from .tiny import TinyLlama, rotate_half


class TinyLlamaStep(nn.Module):
    """One KV-cached decoding step of a TinyLlama (see the module docstring)."""

    def __init__(self, model: TinyLlama) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def cache_shape(self) -> tuple[int, ...]:
        c = self.config
        return (c.n_layers, 1, c.n_heads, c.max_seq, c.head_dim)

    def empty_cache(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(self.cache_shape(), np.float32), np.zeros(self.cache_shape(), np.float32)

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor):
        m, c = self.model, self.config
        future = (torch.arange(c.max_seq) >= pos).reshape(1, 1, 1, c.max_seq)  # slots not written yet
        cos, sin = m.rope_cos.index_select(0, pos), m.rope_sin.index_select(0, pos)  # [1, head_dim]
        scale = 1.0 / math.sqrt(c.head_dim)
        x = m.embed_tokens(ids)
        keys, values = [], []
        for i, layer in enumerate(m.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            split = (1, 1, c.n_heads, c.head_dim)
            q = attn.q_proj(h).reshape(split).transpose(1, 2)  # [1, H, 1, hd]
            k = attn.k_proj(h).reshape(split).transpose(1, 2)
            v = attn.v_proj(h).reshape(split).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            cached = torch.matmul(q, k_cache[i].transpose(-2, -1)).masked_fill(future, float("-inf"))
            scores = torch.cat([cached, (q * k).sum(-1, keepdim=True)], dim=-1) * scale  # [1, H, 1, S + 1]
            p = torch.softmax(scores, dim=-1)
            attended = torch.matmul(p[..., : c.max_seq], v_cache[i]) + p[..., c.max_seq :] * v
            x = x + attn.o_proj(attended.transpose(1, 2).reshape(1, 1, c.d_model))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            keys.append(k)
            values.append(v)
        logits = m.lm_head(m.norm(x))
        return logits, torch.stack(keys), torch.stack(values)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        k, v = self.empty_cache()
        return (torch.zeros(1, 1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), torch.from_numpy(k),
                torch.from_numpy(v))


def decode(step, prompt: np.ndarray, tokens: int, cache: tuple[np.ndarray, np.ndarray]):
    """Greedy decoding with a step function (ids, pos, k_cache, v_cache) -> (logits, k_new, v_new) on numpy
    arrays; `cache` (k, v) is written in place, slot p after step p. The prompt is fed one token at a time
    (prefill as decoding), then `tokens` new ids. Returns (new ids, logits of each step, seconds spent
    generating the new ids)."""
    k, v = cache
    ids, all_logits = [int(t) for t in prompt.reshape(-1)], []
    n_prompt = len(ids)
    start = time.perf_counter()
    for p in range(n_prompt + tokens - 1):
        if p == n_prompt - 1:
            start = time.perf_counter()  # the timed part: one step per generated token
        logits, k_new, v_new = step(np.array([[ids[p]]], np.int64), np.array([p], np.int64), k, v)
        k[:, :, :, p], v[:, :, :, p] = np.asarray(k_new)[:, :, :, 0], np.asarray(v_new)[:, :, :, 0]
        logits = np.asarray(logits)
        all_logits.append(logits[0, -1])
        if p >= n_prompt - 1:
            ids.append(int(logits[0, -1].argmax()))
    return ids[n_prompt:], np.stack(all_logits), time.perf_counter() - start
