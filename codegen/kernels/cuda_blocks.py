"""Building blocks of the CUDA kernels (`cuda_mlp.py`): the warp dot product and the down projection.

- **warp dot** (gate, up, linear): one warp per weight row. Lane l loads the row's elements
  [c * warp * V + l * V, + V) at step c: a 16-byte vector per lane (float4, or eight halves converted to
  fp32), so a warp reads warp * 16 contiguous bytes per instruction (coalesced). The per-lane fp32 partial
  sums are reduced with a butterfly of `__shfl_xor_sync` (every lane ends with the sum). V is the widest
  vector (<= `vector_bytes`) that divides d, so every row starts aligned whatever d is; the last partial
  step is taken by the lanes whose vector lies inside the row.
- **down** (all modes): a row-gather axpy over the TRANSPOSED down weight (w_down_t[j] is neuron j's
  output row). A block owns an output slice of warp * V columns and one of `splits` parts of the row list
  (split-K); each warp takes a contiguous share of the part. The list is either positions with a flag mask
  (exact, threshold, input modes: the neurons some token keeps, flagged by the first launch — no separate
  compaction kernel, no single-block phase) or an index list (indexed: every position). Per round a warp
  reads `scan` positions per lane (one coalesced load), a ballot + popcount compacts the listed ones into the
  warp's shared-memory list (row, coefficient: each index loaded once per warp, then broadcast), and the
  rows are read `rows` at a time — every load issued before the first FMA, into `accumulators` independent
  sums — so a warp keeps rows * warp * 16 bytes in flight. The warps' sums meet in shared memory and the block
  writes its partial sums; a last launch adds the parts (deterministic, no atomics). Nothing in device
  memory needs clearing between calls (the flags are written whole by the launch before), so a decode step
  is a fixed sequence of launches on scratch its caller allocated (`scratch.py`): capturable in a CUDA graph.
- **x staged once per block** (fp16 weights): every thread of a block copies its share of the token's x into
  shared memory as fp16 (a block barrier on each side), and the warps' dots read 16 bytes of x per lane from
  there — where each warp read 32 bytes of fp32 x per lane from global memory (through L1) for 16 bytes of
  weights. The products of two fp16 values are exact in fp32 and sums stay fp32: the one difference to fp32 x
  is x rounded to fp16 once (as an fp16 model rounds its activations; |x| > 65504 would overflow).
- **warp-synchronous calls** (shuffles, ballots, __syncwarp) take the full mask and every lane reaches them:
  the branches around them are warp-uniform (a row per warp; the butterfly leaves the same bits in every
  lane, so decisions on the dot product agree), and lanes without columns or rows predicate their work.
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


def stages_x(dtype: str) -> bool:
    """Whether the warp dots read x staged in shared memory as fp16 (see the module docstring): fp16 weights."""
    return dtype == "float16"


def x_stage_buffer(d: int, dtype: str):
    """(shape, dtype) of the block's shared x: the token's d values as fp16, or one unused word."""
    return ((d,), "float16") if stages_x(dtype) else ((1,), "float32")


def stage_x_macro(d: int, dtype: str, sched: GpuSchedule):
    """`stage(x, m, xs, ty, tx)`: xs[:d] = fp16(x[m, :d]), every thread of the block copying a strided share
    (coalesced), between two block barriers (the last token's reads are done, this token's writes are seen).
    Reached by every thread of the block: the calls stand outside the warps' branches. Nothing for other dtypes."""
    T_, L = sched.threads, sched.warp
    staged = stages_x(dtype)

    @T.macro
    def stage(x, m, xs, ty, tx):
        if staged:
            T.tvm_storage_sync("shared")
            for i in range((d + T_ - 1) // T_):
                e: T.let = i * T_ + ty * L + tx
                if e < d:
                    xs[e] = T.Cast("float16", x[m, e])
            T.tvm_storage_sync("shared")

    return stage


def block_any(pred):
    """A block barrier that returns nonzero in every thread when `pred` holds in some thread of the block: a
    block-uniform condition (CUDA's __syncthreads_or)."""
    return T.call_extern("int32", "__syncthreads_or", pred)


def shuffle_rounds(warp: int) -> list[int]:
    return [warp >> (i + 1) for i in range(warp.bit_length() - 1)]  # 16, 8, 4, 2, 1 for a 32-lane warp


def warp_dot_macro(d: int, dtype: str, sched: GpuSchedule):
    """`warp_dot(w, row, x, xs, m, lane, s)`: s[0] = dot(w[row, :d], x[m, :d]) in every lane of the warp (s: a
    local float32 (1,) buffer of the calling thread; the partial sums live in registers). Where `stages_x`, x[m]
    is read from xs, the block's shared fp16 copy (`stage_x_macro`)."""
    L = sched.warp
    V = vector_elems(d, dtype, sched)
    G = min(V, FP32_GROUP)
    C = L * V
    n_chunk, rem = d // C, d % C  # rem is a multiple of V
    rounds = shuffle_rounds(L)
    quantized, storage = is_quantized(dtype), weight_buffer(1, 1, dtype)[1]
    staged = stages_x(dtype)

    @T.macro
    def step(w, row, x, xs, m, k0, acc, wv, xv):
        if quantized:  # V = 1: dequantized in a register (the block's scale is one broadcast load per warp)
            acc[0] = acc[0] + value_at(dtype, w, row, k0) * x[m, k0]
        elif staged:
            for v in T.vectorized(V):
                wv[v] = w[row, k0 + v]  # 16 bytes of weights and 16 bytes of x (shared) per lane
            for v in T.vectorized(V):
                xv[v] = xs[k0 + v]
            for q in T.unroll(V // G):
                for v in T.vectorized(G):
                    acc[q * G + v] = acc[q * G + v] + (T.Cast("float32", wv[q * G + v])
                                                       * T.Cast("float32", xv[q * G + v]))
        else:
            for v in T.vectorized(V):
                wv[v] = w[row, k0 + v]  # one 4/8/16-byte load per lane
            for q in T.unroll(V // G):
                for v in T.vectorized(G):
                    acc[q * G + v] = acc[q * G + v] + T.Cast("float32", wv[q * G + v]) * x[m, k0 + q * G + v]

    @T.macro
    def warp_dot(w, row, x, xs, m, lane, s):
        acc = T.alloc_buffer((V,), "float32", scope="local")
        wv = T.alloc_buffer((V,), storage, scope="local")
        xv = T.alloc_buffer((V,), "float16", scope="local")
        for q in T.unroll(V // G):
            for v in T.vectorized(G):
                acc[q * G + v] = T.float32(0)
        for c in range(n_chunk):
            step(w, row, x, xs, m, c * C + lane * V, acc, wv, xv)
        if rem > 0:
            if lane * V < rem:
                step(w, row, x, xs, m, n_chunk * C + lane * V, acc, wv, xv)
        s[0] = acc[0]
        for v in T.unroll(1, V):
            s[0] = s[0] + acc[v]
        for r in T.unroll(len(rounds)):
            s[0] = s[0] + T.tvm_warp_shuffle_xor(full_mask(), s[0], T.shift_right(L, r + 1), L, L)

    return warp_dot


def lanes_below(lane):
    """Bit mask of the lanes below `lane` (CUDA's %lanemask_lt)."""
    return T.shift_left(T.uint32(1), T.Cast("uint32", lane)) - T.uint32(1)


def ballot(pred):
    """The warp's predicate bits (bit l: lane l's), every lane taking part (full mask). Not a pure call: TVM
    would inline a pure one into the branches it guards (and rewrite its predicate there), so bind it to a
    local buffer."""
    return T.call_extern("uint32", "__ballot_sync", full_mask(), pred)


def popcount(bits):
    return T.call_pure_extern("int32", "__popc", bits)


def by_flag(n: int):
    """(row, count, keep) of a flag mask over n rows, as `down_macros` takes them: position p is row p, listed
    when flag[p] != 0."""
    return (lambda flag, m, p: p), (lambda flag, m: n), (lambda flag, p: flag[p] != 0)


def down_macros(d: int, dtype: str, sched: GpuSchedule, row: Callable, count: Callable, splits: int,
                keep: Callable | None = None, skip_zero_h: bool = False):
    """(`down_parts`, `sum_parts`): the two launches of the down projection (see the module docstring).

    `down_parts(w_down_t, h, rows, counts, part, M)`: part[s, m, cols] = sum over the s-th part of token
    m's list of h[m, p] * w_down_t[row(rows, m, p), cols]; the list is the positions p < count(counts, m)
    with keep(rows, p) (a flag mask; every position without `keep`) and, with `skip_zero_h`, h[m, p] != 0 (a
    routed token's own inactive neurons: `cuda_routed.py`).
    `sum_parts(part, out, M)`: out = sum over s of part[s].
    """
    L, W, T_ = sched.warp, sched.warps, sched.threads
    U, A, S = sched.rows, min(sched.accumulators, sched.rows), sched.scan
    CH = L * S  # list positions a warp compacts per round
    V = vector_elems(d, dtype, sched)
    G = min(V, FP32_GROUP)
    SL = L * V  # columns per block slice
    n_slices = (d + SL - 1) // SL
    per_thread = (SL + T_ - 1) // T_  # slice columns each thread sums over the warps
    quantized, storage = is_quantized(dtype), weight_buffer(1, 1, dtype)[1]
    listed = keep or (lambda rows, p: True)

    def kept(rows, h, m, p):
        return T.And(listed(rows, p), h[m, p] != T.float32(0)) if skip_zero_h else listed(rows, p)

    @T.macro
    def down_parts(w_down_t, h, rows, counts, part, M):
        for m in T.thread_binding(M, "blockIdx.z"):
            for sp in T.thread_binding(splits, "blockIdx.y"):
                for sl in T.thread_binding(n_slices, "blockIdx.x"):
                    for ty in T.thread_binding(W, "threadIdx.y"):
                        for tx in T.thread_binding(L, "threadIdx.x"):
                            acc = T.alloc_buffer((A * V,), "float32", scope="local")
                            wv = T.alloc_buffer((U * V,), storage, scope="local")
                            hv = T.alloc_buffer((U,), "float32", scope="local")
                            c = T.alloc_buffer((1,), "int32", scope="local")
                            bits = T.alloc_buffer((1,), "uint32", scope="local")
                            red = T.alloc_buffer((W, SL), "float32", scope="shared")
                            srow = T.alloc_buffer((W, CH), "int32", scope="shared")  # a warp's compacted list
                            sh = T.alloc_buffer((W, CH), "float32", scope="shared")
                            n: T.let = count(counts, m)
                            p0: T.let = sp * n // splits
                            p1: T.let = (sp + 1) * n // splits
                            q0: T.let = p0 + ty * (p1 - p0) // W  # the warp's contiguous share of the part
                            q1: T.let = p0 + (ty + 1) * (p1 - p0) // W
                            col: T.let = sl * SL + tx * V
                            for v in T.unroll(A * V):
                                acc[v] = T.float32(0)
                            # the same number of rounds in every warp of the block: TVM puts __syncthreads
                            # between the writes and reads of the shared lists
                            for rnd in range(((p1 - p0 + W - 1) // W + CH - 1) // CH):
                                # compaction: the listed positions of the round, in order, into the warp's list
                                c[0] = 0
                                for s in T.unroll(S):
                                    p: T.let = q0 + rnd * CH + s * L + tx
                                    ok: T.let = T.And(p < q1, kept(rows, h, m, T.min(p, q1 - 1)))
                                    bits[0] = ballot(ok)
                                    if ok:
                                        srow[ty, c[0] + popcount(T.bitwise_and(bits[0], lanes_below(tx)))] = \
                                            row(rows, m, p)
                                        sh[ty, c[0] + popcount(T.bitwise_and(bits[0], lanes_below(tx)))] = h[m, p]
                                    c[0] = c[0] + popcount(bits[0])
                                T.evaluate(T.call_extern("void", "__syncwarp", full_mask()))
                                # the listed rows, U at a time: all U loads issued before the first FMA
                                for grp in range((c[0] + U - 1) // U):
                                    for u in T.unroll(U):
                                        if grp * U + u < c[0]:
                                            hv[u] = sh[ty, grp * U + u]
                                            if not quantized:
                                                if col < d:
                                                    for v in T.vectorized(V):
                                                        wv[u * V + v] = w_down_t[srow[ty, grp * U + u], col + v]
                                    for u in T.unroll(U):
                                        if grp * U + u < c[0]:
                                            if col < d:
                                                if quantized:  # V = 1
                                                    acc[u % A] = acc[u % A] + hv[u] * value_at(
                                                        dtype, w_down_t, srow[ty, grp * U + u], col)
                                                else:
                                                    for q in T.unroll(V // G):
                                                        for v in T.vectorized(G):
                                                            acc[(u % A) * V + q * G + v] = (
                                                                acc[(u % A) * V + q * G + v]
                                                                + hv[u] * T.Cast("float32", wv[u * V + q * G + v]))
                                T.evaluate(T.call_extern("void", "__syncwarp", full_mask()))
                            for a in T.unroll(1, A):
                                for v in T.unroll(V):
                                    acc[v] = acc[v] + acc[a * V + v]
                            for q in T.unroll(V // G):
                                for v in T.vectorized(G):
                                    red[ty, tx * V + q * G + v] = acc[q * G + v]
                            T.tvm_storage_sync("shared")
                            for e in T.unroll(per_thread):
                                ce: T.let = (e * W + ty) * L + tx
                                if ce < SL:
                                    if sl * SL + ce < d:
                                        acc[0] = red[0, ce]
                                        for y in range(1, W):
                                            acc[0] = acc[0] + red[y, ce]
                                        part[sp, m, sl * SL + ce] = acc[0]

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


def hidden_norm_launches(n_ff: int, d: int, sched: GpuSchedule, eps: float):
    """(`norm_sums(h, ss, M)`, `scale_out(out, ss, M)`): a block's hidden RMS norm (BitNet's ffn_sub_norm,
    `hidden_rms_eps`) on the GPU, two launches after the flagging kernels' first: ss[m] = Σ_j h[m, j]² (a warp per
    token; h holds 0 for every neuron the token dropped), then out[m] *= 1 / sqrt(ss[m] / n_ff + eps) after the parts
    are summed (1 / rms is one number per token: it commutes with the down projection, kernels/hidden_norm.py)."""
    L, T_ = sched.warp, sched.threads
    rounds = shuffle_rounds(L)

    @T.macro
    def norm_sums(h, ss, M):
        for m in T.thread_binding(M, "blockIdx.x"):
            for tx in T.thread_binding(L, "threadIdx.x"):
                s = T.alloc_buffer((1,), "float32", scope="local")
                s[0] = T.float32(0)
                for i in range((n_ff + L - 1) // L):
                    if i * L + tx < n_ff:
                        s[0] = s[0] + h[m, i * L + tx] * h[m, i * L + tx]
                for r in T.unroll(len(rounds)):
                    s[0] = s[0] + T.tvm_warp_shuffle_xor(full_mask(), s[0], T.shift_right(L, r + 1), L, L)
                if tx == 0:
                    ss[m] = s[0]

    @T.macro
    def scale_out(out, ss, M):
        for b in T.thread_binding((M * d + T_ - 1) // T_, "blockIdx.x"):
            for tx in T.thread_binding(T_, "threadIdx.x"):
                e: T.let = b * T_ + tx
                if e < M * d:
                    out[e // d, e % d] = out[e // d, e % d] / T.sqrt(ss[e // d] / T.float32(n_ff) + T.float32(eps))

    return norm_sums, scale_out


def warp_per_row(n: int, L: int, W: int, xs_shape, xs_dtype, stage, each):
    """`frame(x, M, p, q, r, t)`: the launch of a warp per row j < n (W warps of L lanes a block) that stages every
    token's x[m] (`stage`, into the block's shared xs) and runs `each(x, xs, m, j, lane, s, p, q, r, t)` for it (s:
    the lane's one-float scratch), p .. t passed through: the dense kernels' neurons and the linear kernel's rows."""
    n_blocks = (n + W - 1) // W

    @T.macro
    def frame(x, M, p, q, r, t):
        for bx in T.thread_binding(n_blocks, "blockIdx.x"):
            for ty in T.thread_binding(W, "threadIdx.y"):
                for tx in T.thread_binding(L, "threadIdx.x"):
                    s = T.alloc_buffer((1,), "float32", scope="local")
                    xs = T.alloc_buffer(xs_shape, xs_dtype, scope="shared")
                    j: T.let = bx * W + ty
                    for m in range(M):
                        stage(x, m, xs, ty, tx)
                        if j < n:
                            each(x, xs, m, j, tx, s, p, q, r, t)

    return frame


def row_dots_launch(k: int, n: int, dtype: str, sched: GpuSchedule, row: Callable, bias: bool = False):
    """`launch(x, w, b, out, M, rows)`: out[m, j] = w[row(rows, m, j)] · x[m, :k] (+ b[j] with `bias`) for j < n and
    every token m: a warp per output j, x[m] staged in shared memory where its layout wants (the linear kernel; the
    routed experts' down stack by outputs, whose row map picks the token's expert)."""
    warp_dot = warp_dot_macro(k, dtype, sched)

    @T.macro
    def each(x, xs, m, j, tx, s, w, b, out, rows):
        warp_dot(w, row(rows, m, j), x, xs, m, tx, s)
        if tx == 0:
            if bias:
                out[m, j] = s[0] + b[j]
            else:
                out[m, j] = s[0]

    frame = warp_per_row(n, sched.warp, sched.warps, *x_stage_buffer(k, dtype), stage_x_macro(k, dtype, sched), each)

    @T.macro
    def launch(x, w, b, out, M, rows):
        frame(x, M, w, b, out, rows)

    return launch
