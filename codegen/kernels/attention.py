"""Attention for CPUs, one kernel per layer shape: out = softmax(mask(cap(scale * q k^T))) v, grouped-query.

Buffers (destination passing), all float32: q [B, H, S, D] and out [B, H, S, D] with S symbolic; k, v
[B, Hk, cap, D] — the runtime-owned cache itself (cap its slot count) or its filled prefix; mask [B, Hm, S, kv]
(Hm 1 or H; 'select': nonzero keeps a score, else it becomes `fill'; 'add': added). kv, the slots read, is
the mask's last dim, so the filled prefix of the cache is read in place, never copied.

Each task is one (batch, query head, query position): a decode step (S = 1) runs its heads in parallel. Query
head h reads KV head h // G, so no repeated copy of K or V exists. Scores go to a [B*H*S, kv] workspace (exact
max-subtracted softmax in float32, as the graph's softmax); dot products and the weighted sum of V are
vectorized over head_dim D. Per-task scratch is stack memory (scope "global" under 1 KiB, see common.py): a
workspace allocation per head made a decode-step call 1.4-1.8x slower.
"""

from __future__ import annotations

import math
from functools import cache

from tvm.script import tirx as T

from .common import symbol
from .rows import hsum_macro
from .schedule import CpuSchedule


@cache
def attention(batch: int, heads: int, kv_heads: int, head_dim: int, mask_heads: int, *, scale: float, softcap: float,
              mask_kind: str, fill: float, sched: CpuSchedule):
    """PrimFunc (q, k, v, mask, out); global_symbol encodes all parameters."""
    if heads % kv_heads or mask_heads not in (1, heads) or mask_kind not in ("select", "add"):
        raise ValueError(f"attention: heads {heads}, kv_heads {kv_heads}, mask_heads {mask_heads}, "
                         f"mask_kind {mask_kind!r} do not fit")
    B, H, Hk, D, Hm, G = batch, heads, kv_heads, head_dim, mask_heads, heads // kv_heads
    L = math.gcd(D, sched.lanes)
    hsum = hsum_macro(L)
    select, capped = mask_kind == "select", softcap > 0
    name = symbol("attention", f"b{B}h{H}k{Hk}d{D}m{Hm}", f"s{scale:.6g}c{softcap:g}", mask_kind, f"f{fill:.3g}",
                  sched.tag).replace(".", "p").replace("-", "n").replace("+", "")

    @T.prim_func
    def kernel(q_h: T.handle, k_h: T.handle, v_h: T.handle, m_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        S, kv, kcap, vcap = T.int64(), T.int64(), T.int64(), T.int64()
        q = T.match_buffer(q_h, (B, H, S, D), "float32")
        k = T.match_buffer(k_h, (B, Hk, kcap, D), "float32")
        v = T.match_buffer(v_h, (B, Hk, vcap, D), "float32")
        m = T.match_buffer(m_h, (B, Hm, S, kv), "float32")
        out = T.match_buffer(out_h, (B, H, S, D), "float32")
        scores = T.alloc_buffer((B * H * S, kv), "float32")
        for t in T.parallel(B * H * S):
            b: T.let = t // (H * S)
            h: T.let = t // S % H
            i: T.let = t % S
            hk: T.let = h // G
            hm: T.let = h if Hm > 1 else 0
            part = T.alloc_buffer((L,), "float32", scope="global")  # per-task stack (under 1 KiB, see common.py)
            acc = T.alloc_buffer((D,), "float32", scope="global")
            run = T.alloc_buffer((2,), "float32", scope="global")  # running max, then the sum of exponentials
            run[0] = T.min_value("float32")
            for j in range(kv):
                for lane in T.vectorized(L):
                    part[lane] = T.float32(0)
                for d0 in range(D // L):
                    for lane in T.vectorized(L):
                        part[lane] = part[lane] + q[b, h, i, d0 * L + lane] * k[b, hk, j, d0 * L + lane]
                hsum(part, 0)
                x: T.let = part[0] * T.float32(scale)
                y: T.let = T.tanh(x / T.float32(softcap)) * T.float32(softcap) if capped else x
                z: T.let = (T.if_then_else(m[b, hm, i, j] != T.float32(0), y, T.float32(fill)) if select
                            else y + m[b, hm, i, j])
                scores[t, j] = z
                run[0] = T.max(run[0], z)
            run[1] = T.float32(0)
            for j in range(kv):
                scores[t, j] = T.exp(scores[t, j] - run[0])
                run[1] = run[1] + scores[t, j]
            for d in T.vectorized(D):
                acc[d] = T.float32(0)
            for j in range(kv):
                for d in T.vectorized(D):
                    acc[d] = acc[d] + scores[t, j] * v[b, hk, j, d]
            for d in T.vectorized(D):
                out[b, h, i, d] = acc[d] / run[1]

    return kernel.with_attr("global_symbol", name)
