"""The `bound` predictor: an int8 copy of W_gate whose per-neuron error bound certifies neurons inactive (issue 11).

Exact mode reads every gate row to learn which neurons fire. This predictor reads a q8_0 copy of the gate instead
(`ir/quant.py`: groups of 32, fp16 scales, ~53% of the fp16 bytes) and scores each neuron

    s_j = x·deq(w8_j) (+ b_j) + c_j·‖x‖₂,
    c_j = ‖w_j − deq(w8_j)‖₂ + ‖w_j − fp16(w_j)‖₂ + (F + X16)·‖deq(w8_j)‖₂ + F·‖w_j‖₂

and the sparse kernel reads the fp16 gate, up and down rows of the neurons with s_j > cutoff only (cutoff: 0, or
FATReLU's threshold). Why no active neuron is ever dropped: the true gate is g_j = x·w_j + b_j and

    |x·w_j − x·deq(w8_j)| <= ‖w_j − deq(w8_j)‖₂‖x‖₂                                (Cauchy–Schwarz)
    ‖w_j − fp16(w_j)‖₂: quantize="fp16" rounds the sparse kernel's gate rows after this pass (0 for fp16 models);
         quantize="int8"/"int4" is refused (the kernel's gate would be another int8 copy; use mode='exact')
    the int8 copy's dot runs on the float path (`linear{float_x}`): the int8-dot kernels (quant_int8.py) round x
         to 8 bits per group, which would cost ‖deq(w8_j)‖₂·‖x − x̂‖₂ <= ‖deq(w8_j)‖₂·(√32/254)·‖x‖₂ more; on
         part (a) of benchmarks/decode.py that cuts the certified share from 76% to 9% (44% with a per-group
         max bound), so the float dot it is.
    X16 = 0.52·√32/32767 (~9e-5, `X16_ROUNDING`): the CPU kernel may score against x rounded to int16 per group of
         32 (codegen/kernels/score_int16.py), which costs ‖deq(w8_j)‖₂·‖x − x̂‖₂ <= ‖deq(w8_j)‖₂·0.51·√32/32767·‖x‖₂
         (0.52: the float ‖x‖₂ may fall short by γ; the kernel adds a 2⁻¹⁰⁰ floor for tiny groups). Carried on
         every path so that the choice stays the kernel's: it loosens the float path's bound by ~2%.
    F = 2γ, γ = n·u/(1 − n·u), n = d + 8, u = 2⁻²⁴: the worst-case float32 error of a d-term dot in any summation
         order is γ·Σ|w||x| <= γ·‖w‖₂‖x‖₂, once for the int8 copy's dot and once for the sparse kernel's own gate
         dot (whose sign decides the output), plus the few roundings of ‖x‖₂ and the adds (the 8 spare terms).

So s_j <= cutoff proves g_j <= cutoff as the sparse kernel computes it: the neuron adds exactly 0, and the output
is the dense one. No calibration data; only valid for ReLU-family gates (the pass refuses others).

How c_j is computed (exact mode certifies every gate at compile time, so this is on a 7B model's critical path):
32 rows at a time in float32 scratch, with the q8_0 codes (`ir.quant.q8_0_codes`, the rule `quantize` applies)
written straight into the result. The four norms come from float32 sums of squares ŝ, made upper bounds in float64
on the [n_ff] vectors (`_norm_upper`): Σa² <=
(ŝ + n·2⁻¹⁴⁹) / (1 − γ_n) for a sum of n squares in any order (γ_n = n·u/(1 − n·u); 2⁻¹⁴⁹ for squares that
underflow), ‖a‖ <= ‖â‖ / (1 − u) where a = w − deq or w − fp16(w) was itself a rounded float32 difference, then
× (1 + 10⁻¹²) for the float64 arithmetic and rounded up to float32. So the stored c_j is never below the bound
with exact norms (tests/test_certified_gate.py checks it on adversarial rows against fsum), and looser than the
float64 computation this replaced by ~γ_n/2 relative (1.2e-4 at d = 4096: no visible change in the certified
share). Rows whose float32 sums overflow are redone in float64.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..ir.arrays import aligned_empty
from ..ir.quant import GROUP, dequantize, layout, q8_0_codes

LAYOUT = "q8_0"
CODES_AT, SCALES_AT = layout(LAYOUT).codes_byte, layout(LAYOUT).scale_byte   # split rows: every code, every scale
UNIT_ROUNDOFF = 2.0 ** -24
X16_ROUNDING = 0.52 * np.sqrt(32) / 32767  # x rounded to int16 per group of 32 (module docstring)
SMALLEST_SUBNORMAL = 2.0 ** -149           # float32: a square that underflows loses at most half of this
ROWS_PER_STEP = 32                         # rows of float32 scratch at a time: 0.5 MB at d=4096, stays in L2
FLOAT64_SLACK = 1e-12                      # covers the few float64 roundings of the per-row bound (~1e-15 each)


def float_allowance(d: int) -> float:
    n = (d + 8) * UNIT_ROUNDOFF
    return 2 * n / (1 - n)


def _gamma(k: int) -> float:
    """γ_k = k·u / (1 − k·u): the relative error bound of k float32 roundings in a row (Higham, Lemma 3.1)."""
    return k * UNIT_ROUNDOFF / (1 - k * UNIT_ROUNDOFF)


def certify_gate(w_gate: np.ndarray, workers: int = 0) -> dict:
    """w_gate [n_ff, d] (the values the sparse kernel reads) -> {"w8": q8_0 blob, "coef": c [n_ff] float32}.

    Cheap enough to run on every gate of exact mode at compile time (issue 11 item 4: a 7B model in < 60 s and
    < 1.5x the weights): the q8_0 codes go straight into one preallocated aligned blob (byte for byte what
    `ir.quant.quantize(w, "q8_0")` gives), and each step works on `ROWS_PER_STEP` rows in float32 scratch buffers
    reused across steps — no full-size temporaries, no second copy of the gate, no float64 arrays but the
    [n_ff] ones. `workers` threads (numpy releases the GIL) take contiguous row ranges; 0: the host's cores, up to 4.

    The row norms are float32 sums of squares, made upper bounds (`_norm_upper`): outward rounding in float64 on the
    [n_ff] results, so the stored coefficient is never below the float64 bound of the module docstring."""
    w_all = np.asarray(w_gate)
    n_ff, d = w_all.shape
    cols = -(-d // GROUP) * GROUP
    blob = aligned_empty((n_ff, layout(LAYOUT).row_bytes(cols)), np.uint8)
    sums = np.empty((4, n_ff), np.float32)   # Σ (w − deq)², Σ deq², Σ w², Σ (w − fp16(w))², each rounded
    workers = workers or max(1, min(os.cpu_count() or 1, 4))
    bounds = np.linspace(0, n_ff, min(workers, max(1, n_ff // ROWS_PER_STEP)) + 1).astype(int)
    ranges = list(zip(bounds[:-1], bounds[1:]))
    with _torch_serial(), ThreadPoolExecutor(len(ranges)) as pool:
        list(pool.map(lambda r: _certify_range(w_all, blob, sums, *r), ranges))
    error, norm_q, norm_w, as_fp16 = (_norm_upper(s, cols, rounded_terms=t)
                                      for s, t in zip(sums, (True, False, False, True)))
    overflow = np.flatnonzero(~np.isfinite(sums).all(0))   # a square above float32's range: those rows in float64
    if overflow.size:
        parts = _norms64(w_all[overflow], blob[overflow])
        for norm, exact in zip((error, norm_q, norm_w, as_fp16), parts):
            norm[overflow] = exact
    # quantize="fp16" stores the sparse kernel's gate rounded to fp16 after this pass: its rounding is bounded too
    # (0 where w already holds fp16 values)
    coef = (error + as_fp16 + float_allowance(d) * (norm_q + norm_w) + X16_ROUNDING * norm_q) * (1 + FLOAT64_SLACK)
    # rounded up to float32, so the stored number is never below the bound
    coef32 = coef.astype(np.float32)
    coef32 = np.where(coef32.astype(np.float64) < coef, np.nextafter(coef32, np.float32(np.inf)), coef32)
    return {"w8": blob, "coef": coef32.astype(np.float32)}


@contextlib.contextmanager
def _torch_serial():
    """torch's ops one thread each while the pool runs: its OpenMP team, called between numpy ops on 32 rows, spun at
    its barrier on a loaded 2-core host (a 7B gate: 15 s instead of 0.3 s); the pool's threads are the parallelism."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _certify_range(w_all: np.ndarray, blob: np.ndarray, sums: np.ndarray, r0: int, r1: int) -> None:
    """Rows [r0, r1) of the gate: their q8_0 codes into `blob`, their four float32 sums of squares into `sums`.
    The conversions (fp16 -> float32, float32 -> int8 codes) and the groups' max |w| go through torch views of the
    numpy arrays: of a 7B gate's ~340 ms CPU, numpy's float16 conversion took 90 ms (torch 12 ms) and its max over
    groups of 32 86 ms (torch 10 ms)."""
    import torch

    d = w_all.shape[1]
    cols = -(-d // GROUP) * GROUP
    step = ROWS_PER_STEP
    w = np.zeros((step, cols), np.float32)         # zero padding past d: codes 0, as quantize() pads
    deq, scratch = np.empty_like(w), np.empty_like(w)
    same_fp16 = w_all.dtype == np.float16          # fp16 weights round to themselves: that sum is 0
    with warnings.catch_warnings():                # a read-only weight (e.g. mmap'd): torch warns, it is only read
        warnings.simplefilter("ignore", UserWarning)
        source = torch.from_numpy(w_all)
    w_t, t_t = torch.from_numpy(w), torch.from_numpy(scratch)
    codes_out = torch.from_numpy(blob.view(np.int8))
    for a in range(r0, r1, step):
        b = min(a + step, r1)
        k = b - a
        wk, dk, tk = w[:k], deq[:k], scratch[:k]
        w_t[:k, :d].copy_(source[a:b])
        groups, out = wk.reshape(k, -1, GROUP), tk.reshape(k, -1, GROUP)
        amax = torch.abs(w_t[:k], out=t_t[:k]).view(k, -1, GROUP).amax(-1).numpy()   # numpy's group max: 8x slower
        scale, codes = q8_0_codes(groups, out=out, amax=amax)   # quantize()'s rule
        g = cols // GROUP
        scale16 = scale.astype(np.float16)
        blob[a:b, SCALES_AT(0, g):SCALES_AT(g, g)] = scale16.view(np.uint8).reshape(k, -1)
        codes_out[a:b, CODES_AT(0, g):CODES_AT(g, g)].copy_(t_t[:k])   # integers: exact
        # the values the kernels use: code × the fp16 scale, exact in float32 (11 × 8 bits)
        np.multiply(codes, scale16.astype(np.float32)[..., None], out=dk.reshape(k, -1, GROUP))
        sums[1, a:b] = np.einsum("ij,ij->i", dk, dk)
        sums[2, a:b] = np.einsum("ij,ij->i", wk, wk)
        np.subtract(wk, dk, out=tk)
        sums[0, a:b] = np.einsum("ij,ij->i", tk, tk)
        if same_fp16:
            sums[3, a:b] = 0
        else:
            torch.sub(w_t[:k], w_t[:k].half().float(), out=t_t[:k])
            sums[3, a:b] = np.einsum("ij,ij->i", tk, tk)


def _norms64(w: np.ndarray, blob: np.ndarray) -> tuple[np.ndarray, ...]:
    """The four row norms of a few rows in float64 (the rows whose float32 sums of squares overflowed)."""
    w64 = np.asarray(w, np.float64)
    deq = dequantize(blob, LAYOUT, w.shape[1]).astype(np.float64)
    norm = lambda a: np.sqrt(np.einsum("ij,ij->i", a, a))   # noqa: E731
    return norm(w64 - deq), norm(deq), norm(w64), norm(w64 - np.asarray(w, np.float16).astype(np.float64))


def _norm_upper(sum32: np.ndarray, n: int, rounded_terms: bool) -> np.ndarray:
    """An upper bound in float64 on ‖a‖₂ from ŝ, the float32 sum of the n squares of a row, in any order.

    Each square and each add rounds with relative error <= u, so Σ a² <= ŝ / (1 − γ_n) (n − 1 adds and the
    square: n roundings per term; an add of subnormals is exact, a square that underflows loses < 2⁻¹⁴⁹ absolute,
    hence + n·2⁻¹⁴⁹). `rounded_terms`: the a_i were themselves float32 differences (w − deq, w − fp16(w)), each off
    by a factor (1 ± u): ‖a‖ <= ‖â‖ / (1 − u). Rows whose sum overflowed (inf) stay inf: their neurons are never
    certified."""
    s = (sum32.astype(np.float64) + n * SMALLEST_SUBNORMAL) / (1 - _gamma(n))
    norm = np.sqrt(s)
    return norm / (1 - UNIT_ROUNDOFF) if rounded_terms else norm


def certified_scores(arrays: dict, x: np.ndarray, b_gate: np.ndarray | None = None, x16: bool = False) -> np.ndarray:
    """The bound predictor's scores in numpy (tests, the report): [..., d] -> [..., n_ff]. `x16`: against x rounded
    to int16 per group of 32 as the CPU kernel's int16 score pass does (codegen/kernels/score_int16.py)."""
    x = np.asarray(x, np.float32)
    d = x.shape[-1]
    deq = dequantize(arrays["w8"], LAYOUT, d)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    if x16:
        groups = -(-d // 32)
        xg = np.zeros((*x.shape[:-1], groups * 32), np.float32)
        xg[..., :d] = x
        xg = xg.reshape(*x.shape[:-1], groups, 32)
        dx = np.maximum(np.abs(xg).max(-1, keepdims=True), np.float32(2.0 ** -100)) / np.float32(32767)
        xq = np.clip(np.rint(xg * (np.float32(1) / dx)), -32767, 32767)
        x = (xq * dx.astype(np.float64)).reshape(*x.shape[:-1], groups * 32)[..., :d]
        norm = norm + np.sqrt(groups) * 2.0 ** -100
    s = x @ deq.T + norm * arrays["coef"]
    return s if b_gate is None else s + b_gate
