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
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..ir.arrays import aligned_contiguous
from ..ir.quant import quantize

LAYOUT = "q8_0"
UNIT_ROUNDOFF = 2.0 ** -24
X16_ROUNDING = 0.52 * np.sqrt(32) / 32767  # x rounded to int16 per group of 32 (module docstring)


def float_allowance(d: int) -> float:
    n = (d + 8) * UNIT_ROUNDOFF
    return 2 * n / (1 - n)


def certify_gate(w_gate: np.ndarray, rows: int = 1024) -> dict:
    """w_gate [n_ff, d] (the values the sparse kernel reads) -> {"w8": q8_0 blob, "coef": c [n_ff] float32}.

    `rows` rows at a time: the float64 error terms of a whole Mistral-size gate would take ~2 GB at once (every
    number is per row, so the result is the same)."""
    w_all = np.asarray(w_gate)
    starts = range(0, w_all.shape[0], rows)
    # numpy's array ops release the GIL: chunks on the cores side by side (each chunk's temporaries ~50 MB)
    with ThreadPoolExecutor(max(1, min(len(starts), os.cpu_count() or 1, 4))) as pool:
        parts = list(pool.map(lambda r0: _certify_rows(np.asarray(w_all[r0:r0 + rows], np.float32)), starts))
    return {"w8": aligned_contiguous(np.concatenate([b for b, _ in parts])),
            "coef": np.concatenate([c for _, c in parts])}


def _row_norms(a: np.ndarray) -> np.ndarray:
    """‖a_j‖₂ per row in float64 (a float64 sum of squares, as np.linalg.norm computes it, ~7x faster: exact mode
    certifies every gate at compile time, passes/certify_exact_gate.py)."""
    return np.sqrt(np.einsum("ij,ij->i", a, a))


def _certify_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = quantize(w, LAYOUT)
    deq = q.dequantize().astype(np.float64)
    w64 = w.astype(np.float64)
    error = _row_norms(w64 - deq)
    norm_q, norm_w = _row_norms(deq), _row_norms(w64)
    # quantize="fp16" stores the sparse kernel's gate rounded to fp16 after this pass: its rounding is bounded too
    # (0 where w already holds fp16 values)
    as_fp16 = _row_norms(w64 - w.astype(np.float16).astype(np.float64))
    coef = error + as_fp16 + float_allowance(w.shape[1]) * (norm_q + norm_w) + X16_ROUNDING * norm_q
    # rounded up to float32, so the stored number is never below the bound
    coef32 = coef.astype(np.float32)
    coef32 = np.where(coef32.astype(np.float64) < coef, np.nextafter(coef32, np.float32(np.inf)), coef32)
    return q.blob, coef32.astype(np.float32)


def certified_scores(arrays: dict, x: np.ndarray, b_gate: np.ndarray | None = None, x16: bool = False) -> np.ndarray:
    """The bound predictor's scores in numpy (tests, the report): [..., d] -> [..., n_ff]. `x16`: against x rounded
    to int16 per group of 32 as the CPU kernel's int16 score pass does (codegen/kernels/score_int16.py)."""
    from ..ir.quant import dequantize

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
