"""Semantics of `attention`: scaled dot-product attention with grouped-query heads, one op (passes/fuse_attention.py).

    attention(q[B, H, S, D], k[B, Hk, T, D], v[B, Hk, T, D], mask[.., S, kv]){scale, softcap, mask_kind, fill}
        s[b, h, i, j] = scale * q[b, h, i] . k[b, h // (H / Hk), j]     (query head h reads KV head h // group)
        s             = softcap * tanh(s / softcap)                       (softcap > 0 only: Gemma 2)
        s             = where(mask, s, fill)  (mask_kind 'select', mask bool)  |  s + mask  ('add', mask float)
        out[b, h, i]  = softmax_j(s) @ v[b, h // group]                   (max-subtracted)
s and softmax in float32 for float16 and float32 q (the op accumulates: types.summing_dtype), float64 in float64.

Only the first kv slots of k and v are read (kv: the mask's last dim; T >= kv), so k and v may be a KV cache
whose filled prefix is kv slots: it is read in place. The mask (causal, sliding window, padding) stays an input:
it is whatever the model computed, so every window rule the architecture has is kept without the op knowing it.
"""

from __future__ import annotations

import numpy as np

from .types import TensorType, broadcast_shapes, dtype_of, np_dtype, summing_dtype

ATTENTION_ATTRS = {"scale": 1.0, "softcap": 0.0, "mask_kind": "select", "fill": float(np.finfo(np.float32).min)}
MASK_KINDS = ("select", "add")


def attention_type(types, attrs) -> TensorType:
    q, k, v, mask = types
    if attrs.get("mask_kind") not in MASK_KINDS:
        raise TypeError(f"attention mask_kind must be one of {MASK_KINDS}, got {attrs.get('mask_kind')!r}")
    if q.rank != 4 or k.rank != 4 or v.rank != 4:
        raise TypeError(f"attention takes q, k, v of rank 4 ([batch, heads, seq, head_dim]), got {q}, {k}, {v}")
    heads, kv_heads = q.shape[1], k.shape[1]
    if not (isinstance(heads, int) and isinstance(kv_heads, int) and heads % kv_heads == 0):
        raise TypeError(f"attention: {kv_heads} KV heads must divide {heads} query heads")
    if k.shape != v.shape or k.shape[3] != q.shape[3] or k.shape[0] != q.shape[0]:
        raise TypeError(f"attention: k {k} and v {v} do not match q {q}")
    if (mask.dtype == "bool") != (attrs["mask_kind"] == "select"):
        raise TypeError(f"attention: a {attrs['mask_kind']!r} mask cannot be {mask.dtype}")
    kv, slots = (mask.shape[-1] if mask.rank else None), k.shape[2]
    if kv is None or (isinstance(kv, int) and isinstance(slots, int) and kv > slots):
        raise TypeError(f"attention: the mask {mask} reads more slots than k {k} holds")
    broadcast_shapes(mask.shape, (q.shape[0], heads, q.shape[2], mask.shape[-1]))
    return TensorType(q.shape, q.dtype)


def attention_ref(q, k, v, mask, attrs, env):
    kv = np.shape(mask)[-1]
    k, v = k[:, :, :kv], v[:, :, :kv]
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    s = np.matmul(q, np.swapaxes(k, -1, -2)).astype(np_dtype(summing_dtype(dtype_of(q)))) * np.float32(attrs["scale"])
    if attrs["softcap"] > 0:
        cap = np.float32(attrs["softcap"])
        s = np.tanh(s / cap) * cap
    s = np.where(mask, s, np.float32(attrs["fill"])) if attrs["mask_kind"] == "select" else s + mask
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return np.matmul(p.astype(q.dtype), v)
