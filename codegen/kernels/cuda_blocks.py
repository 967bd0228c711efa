"""Building blocks of the CUDA kernels (`cuda_mlp.py`): the warp dot product and the down projection.

- **warp dot** (gate, up, linear): one warp per weight row. Lane l loads the row's elements
  [c * warp * V + l * V, + V) at step c: a 16-byte vector per lane (float4, or eight halves converted to
  fp32), so a warp reads warp * 16 contiguous bytes per instruction (coalesced). The per-lane fp32 partial
  sums are reduced with a butterfly of `__shfl_xor_sync` (every lane ends with the sum). V is the widest
  vector (<= `vector_bytes`) that divides d, so every row starts aligned whatever d is; the last partial
  step is taken by the lanes whose vector lies inside the row.
- **down** (all modes): a row-gather axpy over the TRANSPOSED down weight (w_down_t[j] is neuron j's
  output row). A block owns an output slice of warp * V columns and one of `splits` parts of the row list;
  its warps take every warps-th row of the part, each lane accumulating V columns (coalesced reads of the
  slice of each gathered row); the warps' sums meet in shared memory and the block writes its partial
  sums. `splits` is chosen so that slices * splits fill the multiprocessors (`blocks_per_sm` each); a last
  kernel adds the parts (deterministic, no atomics).
- **compaction** (exact, threshold, input modes): the kept entries of a flag array listed in one block, in
  ascending order: each thread counts the flags of its contiguous chunk, a warp-shuffle inclusive scan plus the
  preceding warps' totals (shared memory) gives its offset, then it writes its chunk's indices. Deterministic
  order (no atomics), so results do not vary from run to run and gathered rows are read in address order.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm.script import tirx as T

from .common import dtype_bytes
from .quant_blocks import is_quantized, value_at, weight_buffer
from .schedule import GpuSchedule

FP32_GROUP = 4  # fp32 lanes per vector instruction (float4): wider fp32 vectors have no CUDA type


def full_mask():
    """The member mask of every warp-synchronous call: all 32 lanes. Never `__activemask()`: after a branch the
    lanes of a warp need not have reconverged (Volta's independent thread scheduling), so it may name only some
    of them and the shuffle then reads undefined values. Every lane of a warp reaches each shuffle (the guards
    in front of them are warp-uniform); lanes without work contribute 0, they do not skip the call."""
    return T.uint32(0xFFFFFFFF)


def vector_elems(d: int, dtype: str, sched: GpuSchedule) -> int:
    """Elements one lane loads at once: the widest power of two <= vector_bytes / element size dividing d.
    Quantized rows: 1 (lane l reads column l of a group: a warp reads one whole block, coalesced)."""
    if is_quantized(dtype):
        return 1
    v = sched.vector_bytes // dtype_bytes(dtype)
    while v > 1 and d % v:
        v //= 2
    return v


def shuffle_rounds(warp: int) -> list[int]:
    return [warp >> (i + 1) for i in range(warp.bit_length() - 1)]  # 16, 8, 4, 2, 1 for a 32-lane warp


def warp_dot_macro(d: int, dtype: str, sched: GpuSchedule):
    """`warp_dot(w, row, x, m, lane, s)`: s[0] = dot(w[row, :d], x[m, :d]) in every lane of the warp
    (s: a local float32 (1,) buffer of the calling thread; the partial sums live in registers)."""
    L = sched.warp
    V = vector_elems(d, dtype, sched)
    G = min(V, FP32_GROUP)
    C = L * V
    n_chunk, rem = d // C, d % C  # rem is a multiple of V
    rounds = shuffle_rounds(L)
    quantized, storage = is_quantized(dtype), weight_buffer(1, 1, dtype)[1]

    @T.macro
    def step(w, row, x, m, k0, acc, wv):
        if quantized:  # V = 1: dequantized in a register (the block's scale is one broadcast load per warp)
            acc[0] = acc[0] + value_at(dtype, w, row, k0) * x[m, k0]
        else:
            for v in T.vectorized(V):
                wv[v] = w[row, k0 + v]  # one 4/8/16-byte load per lane
            for q in T.unroll(V // G):
                for v in T.vectorized(G):
                    acc[q * G + v] = acc[q * G + v] + T.Cast("float32", wv[q * G + v]) * x[m, k0 + q * G + v]

    @T.macro
    def warp_dot(w, row, x, m, lane, s):
        acc = T.alloc_buffer((V,), "float32", scope="local")
        wv = T.alloc_buffer((V,), storage, scope="local")
        for q in T.unroll(V // G):
            for v in T.vectorized(G):
                acc[q * G + v] = T.float32(0)
        for c in range(n_chunk):
            step(w, row, x, m, c * C + lane * V, acc, wv)
        if rem > 0:
            if lane * V < rem:
                step(w, row, x, m, n_chunk * C + lane * V, acc, wv)
        s[0] = acc[0]
        for v in T.unroll(1, V):
            s[0] = s[0] + acc[v]
        for r in T.unroll(len(rounds)):
            s[0] = s[0] + T.tvm_warp_shuffle_xor(full_mask(), s[0], T.shift_right(L, r + 1), L, L)

    return warp_dot


def down_macros(d: int, dtype: str, sched: GpuSchedule, row: Callable, count: Callable, splits: int):
    """(`down_parts`, `sum_parts`): the two launches of the down projection (see the module docstring).

    `down_parts(w_down_t, h, rows, counts, part, M)`: part[s, m, cols] = sum over the s-th part of token
    m's row list of h[m, p] * w_down_t[row(rows, m, p), cols]; the list is positions p < count(counts, m).
    `sum_parts(part, out, M)`: out = sum over s of part[s].
    """
    L, W, T_ = sched.warp, sched.warps, sched.threads
    V = vector_elems(d, dtype, sched)
    G = min(V, FP32_GROUP)
    SL = L * V  # columns per block slice
    n_slices = (d + SL - 1) // SL
    per_thread = (SL + T_ - 1) // T_  # slice columns each thread sums over the warps
    quantized, storage = is_quantized(dtype), weight_buffer(1, 1, dtype)[1]

    @T.macro
    def down_parts(w_down_t, h, rows, counts, part, M):
        for m in T.thread_binding(M, "blockIdx.z"):
            for sp in T.thread_binding(splits, "blockIdx.y"):
                for sl in T.thread_binding(n_slices, "blockIdx.x"):
                    for ty in T.thread_binding(W, "threadIdx.y"):
                        for tx in T.thread_binding(L, "threadIdx.x"):
                            acc = T.alloc_buffer((V,), "float32", scope="local")
                            wv = T.alloc_buffer((V,), storage, scope="local")
                            red = T.alloc_buffer((W, SL), "float32", scope="shared")
                            n: T.let = count(counts, m)
                            p0: T.let = sp * n // splits
                            p1: T.let = (sp + 1) * n // splits
                            col: T.let = sl * SL + tx * V
                            for q in T.unroll(V // G):
                                for v in T.vectorized(G):
                                    acc[q * G + v] = T.float32(0)
                            if col < d:
                                for i in range((p1 - p0 - ty + W - 1) // W):
                                    p: T.let = p0 + ty + i * W
                                    hv: T.let = h[m, p]
                                    if quantized:  # V = 1
                                        acc[0] = acc[0] + hv * value_at(dtype, w_down_t, row(rows, m, p), col)
                                    else:
                                        for v in T.vectorized(V):
                                            wv[v] = w_down_t[row(rows, m, p), col + v]
                                        for q in T.unroll(V // G):
                                            for v in T.vectorized(G):
                                                acc[q * G + v] = acc[q * G + v] + hv * T.Cast("float32",
                                                                                              wv[q * G + v])
                            for q in T.unroll(V // G):
                                for v in T.vectorized(G):
                                    red[ty, tx * V + q * G + v] = acc[q * G + v]
                            T.tvm_storage_sync("shared")
                            for e in T.unroll(per_thread):
                                c: T.let = (e * W + ty) * L + tx
                                if c < SL:
                                    if sl * SL + c < d:
                                        acc[0] = red[0, c]
                                        for y in range(1, W):
                                            acc[0] = acc[0] + red[y, c]
                                        part[sp, m, sl * SL + c] = acc[0]

    @T.macro
    def sum_parts(part, out, M):
        for b in T.thread_binding((M * d + T_ - 1) // T_, "blockIdx.x"):
            for tx in T.thread_binding(T_, "threadIdx.x"):
                s = T.alloc_buffer((1,), "float32", scope="local")
                e: T.let = b * T_ + tx
                if e < M * d:
                    s[0] = part[0, e // d, e % d]
                    for sp in range(1, splits):
                        s[0] = s[0] + part[sp, e // d, e % d]
                    out[e // d, e % d] = s[0]

    return down_parts, sum_parts


def down_splits(d: int, dtype: str, sched: GpuSchedule, n_rows: int) -> int:
    """Parts the row list of the down projection is split into: enough blocks for every multiprocessor."""
    SL = sched.warp * vector_elems(d, dtype, sched)
    n_slices = (d + SL - 1) // SL
    want = (sched.multiprocessors * sched.blocks_per_sm + n_slices - 1) // n_slices
    return max(1, min(want, (n_rows + sched.warps - 1) // sched.warps))


def compact_macro(n: int, sched: GpuSchedule):
    """`compact(flag, idx, cnt)`: idx[:cnt[0]] = the j < n with flag[j] != 0, ascending (one block launch)."""
    L, W, T_ = sched.warp, sched.warps, sched.threads
    chunk = (n + T_ - 1) // T_  # flags per thread
    scan_rounds = shuffle_rounds(L)[::-1]  # 1, 2, 4, 8, 16

    @T.macro
    def compact(flag, idx, cnt):
        for _ in T.thread_binding(1, "blockIdx.x"):
            for tx in T.thread_binding(T_, "threadIdx.x"):
                c = T.alloc_buffer((1,), "int32", scope="local")
                sc = T.alloc_buffer((1,), "int32", scope="local")
                base = T.alloc_buffer((1,), "int32", scope="local")
                wsum = T.alloc_buffer((W,), "int32", scope="shared")
                j0: T.let = tx * chunk
                c[0] = 0
                for i in range(chunk):
                    if j0 + i < n:
                        c[0] = c[0] + flag[j0 + i]
                sc[0] = c[0]
                for r in T.unroll(len(scan_rounds)):
                    base[0] = T.tvm_warp_shuffle_up(full_mask(), sc[0], T.shift_left(1, r), L, L)
                    if tx % L >= T.shift_left(1, r):
                        sc[0] = sc[0] + base[0]
                if tx % L == L - 1:
                    wsum[tx // L] = sc[0]
                T.tvm_storage_sync("shared")
                base[0] = sc[0] - c[0]
                for w2 in range(tx // L):
                    base[0] = base[0] + wsum[w2]
                for i in range(chunk):
                    if j0 + i < n:
                        if flag[j0 + i] != 0:
                            idx[base[0]] = j0 + i
                            base[0] = base[0] + 1
                if tx == T_ - 1:
                    cnt[0] = base[0]

    return compact
