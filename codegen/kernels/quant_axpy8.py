"""The row axpy of quantized rows (the down projection of every gated-MLP kernel) as integer dot products: x86 VNNI
`vpdpbusd`, aarch64 `sdot`, AVX2's `vpmaddubsw` (the schedule's `int8_dot`); the layouts it serves are its table
entry's `axpy` (`int8_dots.INT8_DOTS`: q4_0 and q4_1; q8_0 on AVX2 only, on `vpmaddwd` with int16 coefficients,
quant_axpy16.py: its entry's `int16_axpy`; on VNNI q8_0's float axpy was as fast), for the kernels the schedule names
(`CpuSchedule.int8_axpy`: the target's `int8_axpy_kernels`, by default the dense kernel only).

A step of the axpy adds R rows j, each times its coefficient h_j, to a task's output columns:
out[c] += Σ_j h_j · w_{j,c}, with w_{j,c} = s_{j,g} · (u_{j,c} - z) (+ o_{j,g} + 8 s_{j,g} for q4_1) in group
g = c // 32, u the stored unsigned code (q4_0 / q4_1: the nibble, z = 8 — q4_1 centred as well, so the rounding
meets codes of magnitude <= 8 as q4_0's do; q8_0: the code + 128 on a u8 x s8 dot, z = 128, or the signed code itself
on an s8 x s8 dot, z = 0). Per step and group the weight scale folds into the coefficient,
c_j = h_j · s_{j,g}, and the R coefficients are rounded to int8 with one float scale t:

    t = max_j |c_j| / 127,   a_j = round(c_j / t) (half to even),   out[c] += t · Σ_j a_j (u_{j,c} - z)

The integer sum runs on the 4-way dot: one 32-bit lane per output column holds 4 rows' code bytes (4 rows' 16 code
bytes loaded and interleaved by one byte shuffle; the rows are any 4 active neurons, so the interleave happens in
registers, per step), against the 4 rows' a_j repeated in every lane; the accumulator starts at -z · Σ_j a_j, formed
by the same dot on bytes of z (every lane at once, no horizontal sum), t scales it once per step and group, and
q4_1's offsets add Σ_j h_j · (o_{j,g} + 8 s_{j,g}) in fp32.

On a pair-sum dot (AVX2 `vpmaddubsw`, u8 x s8 -> int16 sums of byte pairs) whose entry says
`axpy_interleave = 2`, one int16 lane per output column holds 2 rows' code bytes (two rows' 16 code bytes
interleaved: an in-lane unpack, where 4 rows per 32-bit lane take ~13 shuffles per 8 columns without a cross-lane
byte shuffle), against the pair's (a_j, a_j+1) in every lane; the pairs' int16 sums add up (q4 codes <= 15,
|a_j| <= 127: a pair <= 3810, `SETS_PER_WIDENING` pairs at most) and are sign-extended to int32 once per 16 columns,
where -z · Σ_j a_j is added (from the table, or summed from the a_j). The same integers, so the same rounding.
Session 18, Zen 3, q4_0 at Mistral-7B dims, 1 thread, under load: 102 instead of 131 instructions per 8 rows x 32
columns; hot 0.93-0.98x the 4-row form's time, from DRAM within the noise (BENCHMARKS.md). Over split q4 rows with the
coefficient table that form takes two groups per iteration (quant_axpy_twin.py).

Rounding: |c_j - t a_j| <= t / 2, so each output column is off by at most Σ_steps (t / 2) Σ_{j in step} |u_{j,c} - z|,
i.e. at most (max_j |h_j s_{j,g}| / 254) · Σ_j |q_{j,c}| over the whole list (q the centred code): a relative
error of half an 8-bit step of the largest coefficient, as x's rounding in the row dots. Which rows share a t
depends on the step (the kernel's row list, cut into runs of R): `tests/test_kernels_axpy8.py` rebuilds the steps.

On split rows (q4_0, q4_1) where the dot's table entry says so (`Int8Dot.coefficient_table`: AVX-512, AVX2) the a_j,
t and -z · Σ_j a_j of every group the task owns are computed before the group loop, 16 groups per vector (a row's 16
scales one load; the max over rows, the division and the rounding lane by lane, the same operations as per group, so
the same values) and stored transposed (a group's 4 rows one int32); the group loop then reads them with three
broadcasts and holds no scale gather, horizontal max, division or z dots: 44 instead of 82 instructions per 8 rows x
32 columns on znver4 (dense q4_0, 1 thread: 0.79x the time; BENCHMARKS.md, session 11). q4_1's per-group constant
Σ_j h_j · (o_{j,g} + 8 s_{j,g}) goes into the table the same way (a row's 16 offsets one load, summed over the rows
lane by lane), one more broadcast per group: added once per group's columns, not gathered per group. A task's groups
past its whole vectors take one more vector ending at its last group (8-group vectors below 16 groups; q8_0's int16
form runs the columns of its new groups only; session 43: the routed input kernel's gate / up rows of 768, 24 groups,
q4_0 0.77-0.86x, q8_0 0.70-0.72x the time hot).

The column split over the tasks is the float path's (`quant_axpy.group_split`); the last partial group of a row
(its codes are zero-padded in the blob) runs the same integer code and stores only its valid columns.
A non-finite h makes t NaN (the step's flag hv[NV]), so the step's columns become NaN as on the float path.
"""

from __future__ import annotations

from tvm.script import tirx as T
from tvm.tirx import Shuffle

from ...ir.quant import GROUP, LAYOUTS
from .int8_dots import INT8_DOTS
from .quant_axpy import axpy_macros, group_split
from .quant_axpy16 import MAX_ROWS, coefficient_levels, interleaved_pair, row_scales, word_macros
from .quant_axpy_twin import SETS_PER_WIDENING, twin_macros, widened
from .quant_blocks import flat_rows, group_prefetch_macro, offset, row_offsets_macro, scale, split_scales
from .schedule import CpuSchedule

HALF = GROUP // 2


def uses_int8_axpy(dtype: str, sched: CpuSchedule, kernel: str) -> bool:
    """Whether the down projection (row axpy) of `kernel` (a name of `schedule.AXPY_KERNELS`) over `dtype` rows takes
    the integer path on `sched`: its int8 dot serves that layout's axpys (`INT8_DOTS[...].axpy`) and the schedule
    gives that kernel the integer axpy (`CpuSchedule.int8_axpy`, from the target's table)."""
    return bool(sched.int8_dot) and sched.integer_axpy(kernel) and dtype in INT8_DOTS[sched.int8_dot].axpy


def int8_axpy_macro(d: int, dtype: str, sched: CpuSchedule, *, gathered: bool, prefetch=None):
    """`axpy.axpy_macro` on the integer path: (`axpy_all`, `axpy`) with the same arguments and results."""
    lay = LAYOUTS[dtype]
    ins = INT8_DOTS[sched.int8_dot]
    L, R, threads = ins.lanes, sched.rows, sched.threads
    NV = max(4, 1 << (R - 1).bit_length())  # coefficient lanes: R rounded up to a power of two (rows past R: 0)
    S = NV // 4  # sets of 4 rows per step
    q8, off = lay.bits == 8, lay.offset
    paired = ins.axpy_interleave == 2 and not q8  # 2 rows per int16 lane (module docstring; q4 codes only)
    word = dtype in ins.int16_axpy  # int16 codes and coefficients on `pair_sum` alone (quant_axpy16.py)
    levels = coefficient_levels(ins, dtype)  # the largest |a_j|: 127, or 32767 on the int16 form
    coef = "int16" if word else "int8"
    if word and (L != 8 or NV > MAX_ROWS):
        raise ValueError(f"the int16 q8_0 axpy takes 8 int32 lanes and at most {MAX_ROWS} rows per step, got "
                         f"{L} lanes and {R} rows: give {sched.int8_dot!r} no int16_axpy, or fewer rows")
    W = 2 * L if paired else L  # columns per vector: one per int16 lane, else one per int32 lane
    V = HALF // W  # W-column vectors per half group
    flip = q8 and not ins.signed_a and not word  # q8_0 on a u8 operand: code + 128 (xor 0x80)
    z = 128 if flip else 0 if q8 else 8  # q4_1 centred too: s * nib + o = s * (nib - 8) + (o + 8 s)
    prefetch = sched.prefetch if prefetch is None else bool(prefetch)
    n_full, first, last = group_split(d, threads)
    tail = d - n_full * GROUP
    row_bytes, stored = lay.row_bytes(d), lay.stored_groups(d)
    row_offsets = row_offsets_macro(gathered, R, row_bytes)
    # split rows hold a row's scales contiguously: the step's coefficients rounded TV groups per vector into a table
    # before the group loop (`coefficient_table`), so the loop holds no scale gather, reduction, division or z dots
    tabled = (lay.split or word) and ins.coefficient_table  # (q8_0 on VNNI / sdot: its float axpy, no table)
    TV, NG = 16, -(-n_full // threads)  # NG: the most groups a task owns
    # paired and tabled with a vector of two groups' code bytes (AVX2: 32 = 2 x 16): two groups per iteration, their
    # bytes interleaved by in-lane unpacks of whole-vector loads (`twin_codes`), no cross-lane shuffle
    twin = paired and tabled and W == HALF
    pf_group, pf_scales = group_prefetch_macro(lay, stored, R)

    def rr(ro, r):  # byte offset of the row at step position r (past R or the list: a row read anyway)
        return ro[min(r, R - 1)]

    def codes(w, ro, s, grp, hf, v, k=4):
        """uint8 x kW: lane c's k bytes are the codes of column grp*32 + hf*16 + v*W + c in rows k*s.. k*s+k-1."""
        start = lay.codes_byte(grp, stored) + (hf * HALF if q8 else 0) + v * W
        loads = [w[T.ramp(rr(ro, k * s + p) + T.Cast("int64", start), T.int64(1), W)] for p in range(k)]
        raw = Shuffle(loads, [p * W + c for c in range(W) for p in range(k)])
        if q8:
            return T.bitwise_xor(raw, T.Broadcast(T.uint8(128), k * W)) if flip else raw
        # hf is a loop variable: the low nibbles (hf 0) or the high ones (LLVM drops the shift by 0 and the mask)
        return T.bitwise_and(T.shift_right(raw, T.Broadcast(T.Cast("uint8", hf * 4), k * W)),
                             T.Broadcast(T.uint8(15), k * W))

    def paired_sum(w, ro, ab, grp, hf, v, at, zsum):
        """int32 x W: `int_sum` with 2 rows per int16 lane: per row pair the pair-sum intrinsic (vpmaddubsw) of
        the codes and (a_j, a_j+1), summed in int16 (SETS_PER_WIDENING pairs at most), then sign-extended."""
        zsum = T.int32(-z) * sum_rows(ab, 1) if zsum is None else zsum
        acc = T.Broadcast(zsum, W)
        sums = [T.call_llvm_pure_intrin(
            f"int16x{W}", ins.intrinsic, codes(w, ro, p, grp, hf, v, 2),
            T.reinterpret(f"int8x{2 * W}", T.Broadcast(T.reinterpret("int16", ab[T.ramp(at + 2 * p, 1, 2)]), W)))
            for p in range(NV // 2)]
        return widened(acc, sums, W)

    def int_sum(w, ro, ab, grp, hf, v, at=0, zsum=None):
        """int32 x L: Σ_j a_j (u_{j,c} - z) for the L columns; a_j at ab[at + j]; zsum: -z Σ_j a_j (else computed)."""
        coefs = [T.reinterpret(f"int8x{4 * L}", T.Broadcast(T.reinterpret("int32", ab[T.ramp(at + 4 * s, 1, 4)]), L))
                 for s in range(S)]
        acc = T.Broadcast(T.int32(0), L) if zsum is None else T.Broadcast(zsum, L)
        if z and zsum is None:  # z * Σ a_j in every lane, by the same dot on z bytes (no horizontal sum; shared by
            # the group's vectors)
            acc = set_dots(acc, [(T.Broadcast(T.uint8(z), 4 * L), coefs[s]) for s in range(S)])
            acc = T.Broadcast(T.int32(0), L) - acc
        return set_dots(acc, [(codes(w, ro, s, grp, hf, v), coefs[s]) for s in range(S)])

    def set_dots(acc, operands):
        """acc + the dots of the sets' (codes, coefficients); on a pair-sum dot the sets' int16 pair sums add up
        before one widening, SETS_PER_WIDENING sets at most (q4 codes <= 15, |a_j| <= 127: a set's pair <= 3810)."""
        for at in range(0, len(operands), SETS_PER_WIDENING):
            acc = ins.dots(acc, *operands[at:at + SETS_PER_WIDENING])
        return acc

    word_sum, word_columns = word_macros(ins, lay, stored, R, NV, NG)
    twin_columns = twin_macros(ins, lay, stored, R, NV, NG, W)

    def columns(w, ro, ab, tt, ofs, grp, hf, v, at=0, zsum=None):
        """float32 x W: the step's contribution to the W columns."""
        total = word_sum(w, ro, ab, grp, hf, v, at) if word else (paired_sum if paired else int_sum)(
            w, ro, ab, grp, hf, v, at, zsum)
        e = T.Cast(f"float32x{W}", total) * T.Broadcast(tt, W)
        return e + T.Broadcast(ofs, W) if off else e

    def lane_reduce(buf, op):
        """buf[0] = op over buf[0:NV] by vector halving (NV a power of two)."""

        @T.macro
        def red():
            if NV >= 16:
                buf[T.ramp(0, 1, 8)] = op(buf[T.ramp(0, 1, 8)], buf[T.ramp(8, 1, 8)])
            if NV >= 8:
                buf[T.ramp(0, 1, 4)] = op(buf[T.ramp(0, 1, 4)], buf[T.ramp(4, 1, 4)])
            buf[T.ramp(0, 1, 2)] = op(buf[T.ramp(0, 1, 2)], buf[T.ramp(2, 1, 2)])
            buf[0] = op(buf[0], buf[1])

        return red

    def scales(w, ro, grp):
        """float32 x NV: the step's rows' scales of group grp (widened as one vector)."""
        halves = [scale(lay, w, rr(ro, r), grp, widen=False, stored=stored) for r in range(NV)]
        return T.Cast(f"float32x{NV}", Shuffle(halves, list(range(NV))))

    def offsets(w, ro, grp):
        halves = [offset(lay, w, rr(ro, r), grp, widen=False, stored=stored) for r in range(NV)]
        return T.Cast(f"float32x{NV}", Shuffle(halves, list(range(NV))))

    @T.macro
    def coefficients(w, ro, hv, grp, ab, sc):
        # ab = round(h * scale / t) as int8; sc = [t (+ the step's NaN flag), Σ h * (o + 8 s)]
        cf = T.alloc_buffer((NV,), "float32", scope="global")
        mx = T.alloc_buffer((NV,), "float32", scope="global")
        q = T.alloc_buffer((NV,), "int32", scope="global")
        cf[T.ramp(0, 1, NV)] = hv[T.ramp(0, 1, NV)] * scales(w, ro, grp)
        mx[T.ramp(0, 1, NV)] = T.abs(cf[T.ramp(0, 1, NV)])
        lane_reduce(mx, T.max)()
        inv: T.let = T.if_then_else(mx[0] > T.float32(0), T.float32(levels) / mx[0], T.float32(0))
        q[T.ramp(0, 1, NV)] = T.Cast(f"int32x{NV}", T.nearbyint(cf[T.ramp(0, 1, NV)] * T.Broadcast(inv, NV)))
        ab[T.ramp(0, 1, NV)] = T.Cast(f"{coef}x{NV}", q[T.ramp(0, 1, NV)])
        sc[0] = mx[0] / T.float32(levels) + hv[NV]
        if off:  # Σ h (o + 8 s), in fp32
            mx[T.ramp(0, 1, NV)] = hv[T.ramp(0, 1, NV)] * offsets(w, ro, grp) + cf[
                T.ramp(0, 1, NV)] * T.Broadcast(T.float32(8), NV)
            lane_reduce(mx, lambda a, b: a + b)()
            sc[1] = mx[0]

    def sum_rows(q, lanes=TV):
        """int32 x lanes: Σ_j q[j * lanes : (j + 1) * lanes] (lanes 1: a scalar, the int8 a_j widened)."""
        e = None
        for r in range(NV):
            term = q[T.ramp(r * lanes, 1, lanes)] if lanes > 1 else T.Cast("int32", q[r])
            e = term if e is None else e + term
        return e

    def all_finite(hv):
        e = T.isfinite(hv[0])
        for r in range(1, NV):
            e = T.And(e, T.isfinite(hv[r]))
        return e

    @T.macro
    def group_columns(wf, ro, hv, ab, sc, abt, zt, tt, g0, gi, out, m, part=None):
        if prefetch:  # the next step's rows
            pf_group(wf, ro, R, g0 + gi)
        if tabled and word:
            word_columns(wf, ro, abt, tt, g0 + gi, gi, out, m, part)
        elif tabled:
            for hf in T.unroll(2):
                for v in T.unroll(V):
                    out[m, T.ramp((g0 + gi) * GROUP + hf * HALF + v * W, 1, W)] = out[
                        m, T.ramp((g0 + gi) * GROUP + hf * HALF + v * W, 1, W)] + columns(
                        wf, ro, abt, tt[gi], tt[NG + gi] if off else 0, g0 + gi, hf, v, gi * NV, zt[gi])
        else:
            coefficients(wf, ro, hv, g0 + gi, ab, sc)
            for hf in T.unroll(2):
                for v in T.unroll(V):
                    out[m, T.ramp((g0 + gi) * GROUP + hf * HALF + v * W, 1, W)] = out[
                        m, T.ramp((g0 + gi) * GROUP + hf * HALF + v * W, 1, W)] + columns(
                        wf, ro, ab, sc[0], sc[1], g0 + gi, hf, v)

    def table_chunk(TW: int):
        """`chunk(wf, ro, hv, g0, c0, first, cf, mx, q, ab, sc, abt, zt, tt, out, m, part)`: `coefficient_table`'s
        entries of the task's groups c0 .. c0 + TW - 1, TW per vector (the word form then runs the columns of its
        groups from c0 + first: those before it a previous vector ran)."""

        @T.macro
        def chunk(wf, ro, hv, g0, c0, first, cf, mx, q, ab, sc, abt, zt, tt, out, m, part):
            for r in T.unroll(NV):
                cf[T.ramp(r * TW, 1, TW)] = T.Broadcast(hv[r], TW) * row_scales(lay, stored, wf, ro[T.min(r, R - 1)],
                                                                                g0 + c0, TW)
            mx[T.ramp(0, 1, TW)] = T.abs(cf[T.ramp(0, 1, TW)])
            for r in T.unroll(NV - 1):
                mx[T.ramp(0, 1, TW)] = T.max(mx[T.ramp(0, 1, TW)], T.abs(cf[T.ramp((r + 1) * TW, 1, TW)]))
            for r in T.unroll(NV):
                q[T.ramp(r * TW, 1, TW)] = T.Cast(f"int32x{TW}", T.nearbyint(cf[T.ramp(r * TW, 1, TW)] * T.Select(
                    mx[T.ramp(0, 1, TW)] > T.Broadcast(T.float32(0), TW),
                    T.Broadcast(T.float32(levels), TW) / mx[T.ramp(0, 1, TW)], T.Broadcast(T.float32(0), TW))))
            tt[T.ramp(c0, 1, TW)] = mx[T.ramp(0, 1, TW)] / T.Broadcast(T.float32(levels), TW) + T.Broadcast(
                hv[NV], TW)
            if off:  # Σ_j h_j o_j + 8 c_j, in fp32 (mx is free again)
                mx[T.ramp(0, 1, TW)] = T.Broadcast(T.float32(0), TW)
                for r in T.unroll(NV):
                    mx[T.ramp(0, 1, TW)] = mx[T.ramp(0, 1, TW)] + T.Broadcast(hv[r], TW) * split_scales(
                        lay, stored, wf, ro[T.min(r, R - 1)], g0 + c0, TW, offsets=True) + cf[
                        T.ramp(r * TW, 1, TW)] * T.Broadcast(T.float32(8), TW)
                tt[T.ramp(NG + c0, 1, TW)] = mx[T.ramp(0, 1, TW)]
            zt[T.ramp(c0, 1, TW)] = T.Broadcast(T.int32(-z), TW) * sum_rows(q, TW)
            if word:  # pair-major, [p][g][2] (quant_axpy16.py): an unpack per row pair, no transpose
                for p in T.unroll(NV // 2):
                    abt[T.ramp((p * NG + c0) * 2, 1, 2 * TW)] = interleaved_pair(q, p, TW)
                for k in range(TW - first):
                    group_columns(wf, ro, hv, ab, sc, abt, zt, tt, g0, c0 + first + k, out, m, part)
            else:
                abt[T.ramp(c0 * NV, 1, TW * NV)] = T.Shuffle(  # transposed: row-major [r][g] -> [g][r]
                    [T.Cast(f"{coef}x{TW}", q[T.ramp(r * TW, 1, TW)]) for r in range(NV)],
                    [(k % NV) * TW + k // NV for k in range(TW * NV)])

        return chunk

    chunk_wide, chunk_half = table_chunk(TV), table_chunk(TV // 2)

    @T.macro
    def coefficient_table(wf, ro, hv, g0, ng, ab, sc, abt, zt, tt, out, m, part):
        # `coefficients` for the task's ng groups from g0, TV groups per vector: abt[gi * NV + j] = a_j (a group's 4
        # rows one int32, as the dots read them), zt[gi] = -z Σ_j a_j, tt[gi] = t (+ the NaN flag), tt[NG + gi]
        # (q4_1) = Σ_j h_j (o_j + 8 s_j); the same operations lane by lane, so the same a_j and t as `coefficients`.
        # q8_0's int16 form (`word`) runs each TV groups' columns right after their entries: on GGUF's blocks its
        # scales sat beside the codes, so filling the whole table first read every line of the step's rows twice.
        # The last ng % TV groups: one vector ending at group ng - 1 (it writes some entries again, the same values;
        # the word form runs the columns of the new ones only: an expert's 24 groups one by one cost as much as its 16
        # in a vector, BENCHMARKS.md session 43), or two of TV / 2 where ng < TV; one by one below TV / 2 groups
        cf = T.alloc_buffer((NV * TV,), "float32", scope="global")
        mx = T.alloc_buffer((TV,), "float32", scope="global")
        q = T.alloc_buffer((NV * TV,), "int32", scope="global")
        for c in range(ng // TV):
            chunk_wide(wf, ro, hv, g0, c * TV, 0, cf, mx, q, ab, sc, abt, zt, tt, out, m, part)
        if ng % TV > 0:
            if ng >= TV:
                chunk_wide(wf, ro, hv, g0, ng - TV, TV - ng % TV, cf, mx, q, ab, sc, abt, zt, tt, out, m, part)
            elif ng >= TV // 2:
                chunk_half(wf, ro, hv, g0, 0, 0, cf, mx, q, ab, sc, abt, zt, tt, out, m, part)
                chunk_half(wf, ro, hv, g0, ng - TV // 2, TV - ng, cf, mx, q, ab, sc, abt, zt, tt, out, m, part)
        for gi in range(T.if_then_else(ng < TV // 2, 0, ng), ng):  # below TV / 2 groups: one by one
            coefficients(wf, ro, hv, g0 + gi, ab, sc)
            if word:
                for p in T.unroll(NV // 2):
                    abt[T.ramp((p * NG + gi) * 2, 1, 2)] = ab[T.ramp(2 * p, 1, 2)]
            else:
                abt[T.ramp(gi * NV, 1, NV)] = ab[T.ramp(0, 1, NV)]
            zt[gi] = T.int32(-z) * sum_rows(ab, 1)
            tt[gi] = sc[0]
            if off:
                tt[NG + gi] = sc[1]
            if word:
                group_columns(wf, ro, hv, ab, sc, abt, zt, tt, g0, gi, out, m, part)

    @T.macro
    def step(w, rows, base, i, end, h, hcol, t, out, m):
        wf = flat_rows(w, w.shape[0], row_bytes)
        ro = T.alloc_buffer((2 * R,), "int64", scope="global")  # byte offsets of the step's rows, then the next's
        row_offsets(ro, rows, base, i, end)
        hv = T.alloc_buffer((NV + 1,), "float32", scope="global")  # [NV]: 0, or NaN if some h is not finite
        ab = T.alloc_buffer((NV,), coef, scope="global")
        sc = T.alloc_buffer((2,), "float32", scope="global")
        for r in T.unroll(NV):
            hv[r] = T.float32(0)
            if r < R:
                if i + r < end:
                    hv[r] = h[m, hcol + i + r]
        hv[NV] = T.if_then_else(all_finite(hv), T.float32(0), T.float32(float("nan")))
        g0: T.let = first(t)
        abt = T.alloc_buffer((NG * NV if tabled else 1,), coef, scope="global")
        zt = T.alloc_buffer((NG if tabled else 1,), "int32", scope="global")
        tt = T.alloc_buffer(((2 if off else 1) * NG if tabled else 1,), "float32", scope="global")  # t; q4_1: then ofs
        if prefetch:
            pf_scales(wf, ro, R, g0, last(t))
        if tabled and word:  # q8_0's int16 form: with its group loop (`coefficient_table`)
            half_sums = T.alloc_buffer((HALF,), "int32", scope="global")  # `word_out`'s sums of a half group
            coefficient_table(wf, ro, hv, g0, last(t) - g0, ab, sc, abt, zt, tt, out, m, half_sums)
        elif tabled:
            coefficient_table(wf, ro, hv, g0, last(t) - g0, ab, sc, abt, zt, tt, out, m, None)
        if twin:  # two groups per iteration, then a last odd group as below
            pairs: T.let = (last(t) - g0) // 2
            wide = T.alloc_buffer((W,), "int32", scope="global")  # `twin_out`'s widened sums of two groups
            for gp in range(pairs):
                if prefetch:  # the next step's rows
                    pf_group(wf, ro, R, g0 + 2 * gp)
                    pf_group(wf, ro, R, g0 + 2 * gp + 1)
                twin_columns(wf, ro, abt, zt, tt, g0 + 2 * gp, 2 * gp, out, m, wide)
            for gi in range(2 * pairs, last(t) - g0):
                group_columns(wf, ro, hv, ab, sc, abt, zt, tt, g0, gi, out, m)
        elif not (tabled and word):
            for gi in range(last(t) - g0):
                group_columns(wf, ro, hv, ab, sc, abt, zt, tt, g0, gi, out, m)
        if tail > 0:
            if t == threads - 1:  # the partial last group: the same sums, only its valid columns stored
                part = T.alloc_buffer((GROUP,), "float32", scope="global")
                coefficients(wf, ro, hv, n_full, ab, sc)
                for hf in T.unroll(2):
                    for v in T.unroll(V):
                        part[T.ramp(hf * HALF + v * W, 1, W)] = columns(wf, ro, ab,
                                                                        sc[0], sc[1], n_full, hf, v)
                for c in range(tail):
                    out[m, n_full * GROUP + c] = out[m, n_full * GROUP + c] + part[c]

    return axpy_macros(step)
