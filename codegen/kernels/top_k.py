"""Per-token top-k for the CPU input-sparse kernel (ir/input_sparse.py's `x_keep` / `h_keep`: a fixed count per
token, stable latency): the k-th largest ratio r_i = |v_i| / max(thr_i, 1e-30) of a row, by a radix select.

A non-negative float32's bits, read as int32, order as the floats do, so the k-th largest ratio is found a byte at a
time from the top: RADIX_PASSES passes over the row, each a 256-bucket histogram of one byte of the entries whose
higher bytes equal the prefix found so far, then a scan from the top bucket for the one that holds the k-th entry.
Four passes over n entries and 4 x 256 bucket steps, no sort and no scratch beyond the histogram: at Mistral-7B's
n_ff (14336) about 60k simple steps a token, a few percent of the block's weight reads at half of them skipped.

A ratio is NaN -> 0 (`ratio`): NaN is no number to rank, and an entry of ratio 0 adds nothing, so `kept` never keeps
it; every entry whose ratio equals the k-th value is kept (the reference's tie rule).
"""

from __future__ import annotations

from tvm.script import tirx as T

# (shift of the byte a pass buckets, mask of the bytes above it as int32): the float bits' top byte first
RADIX_PASSES = ((24, 0), (16, -(1 << 24)), (8, -(1 << 16)), (0, -(1 << 8)))


def ratio(value, thr):
    """|value| / max(thr, 1e-30) as float32, NaN -> 0 (PrimExpr)."""
    r = T.abs(value) / T.max(thr, T.float32(1e-30))
    return T.if_then_else(T.isnan(r), T.float32(0), r)


def kept(r, kth_bits):
    """Whether ratio `r` (float32, >= 0) is kept at the k-th largest ratio whose bits are `kth_bits` (PrimExpr)."""
    return T.And(T.reinterpret("int32", r) >= kth_bits, r > T.float32(0))


def kth_largest_macro(n: int, k: int):
    """`kth(ratios, row, hist, sel)`: sel[0] = the int32 bits of the k-th largest of ratios[row, 0:n] (float32,
    >= 0; k clamped to n); hist: int32[256] and sel: int32[4] scratch."""
    k = max(1, min(k, n))

    @T.macro
    def radix_pass(ratios, row, hist, sel, shift, above):
        for b in range(256):
            hist[b] = 0
        for i in range(n):
            bits: T.let = T.reinterpret("int32", ratios[row, i])
            if T.bitwise_and(bits, above) == sel[0]:
                hist[T.bitwise_and(T.shift_right(bits, shift), 255)] += 1
        # from the top bucket down: the first whose running count reaches the rank still sought
        sel[2] = 0
        sel[3] = -1
        for bb in range(256):
            if sel[3] < 0:
                if sel[2] + hist[255 - bb] >= sel[1]:
                    sel[3] = 255 - bb
                else:
                    sel[2] = sel[2] + hist[255 - bb]
        sel[1] = sel[1] - sel[2]
        sel[0] = T.bitwise_or(sel[0], T.shift_left(sel[3], shift))

    @T.macro
    def kth(ratios, row, hist, sel):
        sel[0] = 0   # the bytes found so far
        sel[1] = k   # the rank sought among the entries that share them
        radix_pass(ratios, row, hist, sel, RADIX_PASSES[0][0], RADIX_PASSES[0][1])
        radix_pass(ratios, row, hist, sel, RADIX_PASSES[1][0], RADIX_PASSES[1][1])
        radix_pass(ratios, row, hist, sel, RADIX_PASSES[2][0], RADIX_PASSES[2][1])
        radix_pass(ratios, row, hist, sel, RADIX_PASSES[3][0], RADIX_PASSES[3][1])

    return kth
