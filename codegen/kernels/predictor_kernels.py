"""Predictor-mode kernels: the sign-bit predictor (SparseInfer) and the compaction of predicted neurons into the
index list the indexed gated-MLP kernels take (CPU; on CUDA the scored MLP kernel, `cuda_mlp.scored_gated_mlp`,
flags the predicted neurons itself, with no single-block select launch). Same buffers in both families:

    sign_score     x [M, d] f32, bits [n, words] i32, out [M, n] f32:
                   out[m, j] = d - 2 * popcount(signbits(x[m]) XOR bits[j])  (ir/predictor.py)
    select_active  scores [M, n] f32, cutoff [1] f32, idx [M, n] i32, count [M] i32:
                   idx[m, :count[m]] = the j with scores[m, j] > cutoff, ascending (the order that reads best)

The sign bits of x are packed once per token (bit k of word w set when x[m, 32w + k] < 0; bits past d stay 0 on
both sides, so they agree and need no mask); each weight row is then `words` XORs and popcounts, d/8 bytes read
per neuron instead of 4d. The cutoff is an input, so the layers of one width share one select kernel.
"""

from __future__ import annotations

from functools import cache

from tvm.script import tirx as T

from .common import OPAQUE, symbol

WORD_BITS = 32


def _named(kernel, name: str, gpu: bool = False):
    kernel = kernel.with_attr("global_symbol", name).with_attr("op_pattern", OPAQUE)
    return kernel.with_attr("tirx.is_scheduled", True) if gpu else kernel   # dlight leaves scheduled ones alone


def _words(d: int) -> int:
    return (d + WORD_BITS - 1) // WORD_BITS


def _pack_signs_macro(d: int):
    """`pack(x, m, w, acc)`: acc[0] = word w of token m's sign bits (bit k set when x[m, 32w + k] < 0)."""

    @T.macro
    def pack(x, m, w, acc):
        acc[0] = 0
        for k in range(WORD_BITS):
            if w * WORD_BITS + k < d:
                if x[m, w * WORD_BITS + k] < T.float32(0):
                    acc[0] = T.bitwise_or(acc[0], T.shift_left(T.int32(1), T.Cast("int32", k)))

    return pack


@cache
def sign_score(d: int, n: int, *, sched):
    """CPU: (x, bits, out); tokens' sign bits packed first, then the rows split over the threads."""
    words, threads, pack = _words(d), sched.threads, _pack_signs_macro(d)
    nper = (n + threads - 1) // threads

    @T.prim_func
    def kernel(x_h: T.handle, bits: T.Buffer((n, words), "int32"), out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        M = T.int64()
        x = T.match_buffer(x_h, (M, d), "float32")
        out = T.match_buffer(out_h, (M, n), "float32")
        xb = T.alloc_buffer((M, words), "int32")
        for m in range(M):
            for w in range(words):
                acc = T.alloc_buffer((1,), "int32", scope="global")
                pack(x, m, w, acc)
                xb[m, w] = acc[0]
        for t in T.parallel(threads):
            for jj in range(T.max(T.min(nper, n - t * nper), 0)):
                for m in range(M):
                    cnt = T.alloc_buffer((1,), "int32", scope="global")
                    cnt[0] = 0
                    for w in range(words):
                        cnt[0] = cnt[0] + T.popcount(T.bitwise_xor(xb[m, w], bits[t * nper + jj, w]))
                    out[m, t * nper + jj] = T.Cast("float32", d - 2 * cnt[0])

    return _named(kernel, symbol("signscore", f"d{d}", f"n{n}", sched.tag))


@cache
def select_active(n: int, *, sched):
    """CPU: (scores, cutoff, idx, count); tokens in parallel, each scanned in order."""

    @T.prim_func
    def kernel(s_h: T.handle, cutoff: T.Buffer((1,), "float32"), idx_h: T.handle, count_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        M = T.int64()
        s = T.match_buffer(s_h, (M, n), "float32")
        idx = T.match_buffer(idx_h, (M, n), "int32")
        count = T.match_buffer(count_h, (M,), "int32")
        for m in T.parallel(M):
            c = T.alloc_buffer((1,), "int32", scope="global")
            c[0] = 0
            for j in range(n):
                if s[m, j] > cutoff[0]:
                    idx[m, c[0]] = j
                    c[0] = c[0] + 1
            count[m] = c[0]

    return _named(kernel, symbol("select", f"n{n}", sched.tag))


@cache
def sign_score_cuda(d: int, n: int, *, sched):
    """CUDA: (x, bits, out); one thread per (token, row), the token's sign bits packed by each thread on the fly."""
    words, T_, pack = _words(d), sched.threads, _pack_signs_macro(d)

    @T.prim_func
    def kernel(x_h: T.handle, bits: T.Buffer((n, words), "int32"), out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        M = T.int64()
        x = T.match_buffer(x_h, (M, d), "float32")
        out = T.match_buffer(out_h, (M, n), "float32")
        for m in T.thread_binding(M, "blockIdx.y"):
            for bx in T.thread_binding((n + T_ - 1) // T_, "blockIdx.x"):
                for tx in T.thread_binding(T_, "threadIdx.x"):
                    cnt = T.alloc_buffer((1,), "int32", scope="local")
                    acc = T.alloc_buffer((1,), "int32", scope="local")
                    j: T.let = bx * T_ + tx
                    if j < n:
                        cnt[0] = 0
                        for w in range(words):
                            pack(x, m, w, acc)
                            # TVM's CUDA codegen has no popcount lowering: CUDA's own intrinsic
                            cnt[0] = cnt[0] + T.call_pure_extern("int32", "__popc",
                                                                 T.bitwise_xor(acc[0], bits[j, w]))
                        out[m, j] = T.Cast("float32", d - 2 * cnt[0])

    return _named(kernel, symbol("signscore", f"d{d}", f"n{n}", sched.tag), gpu=True)
