"""Predictor mode's scores: a cheap predictor scores every neuron, the scores above a cutoff name the neurons
the sparse gated MLP computes; every other neuron counts as 0 (the `predictor` entry of sparse_variants.py).

    s = score of each neuron, [..., n_ff] (an ordinary value in the graph, computed in front of the block)
    sparse_gated_mlp(x, @Wg, @Wu, @Wd.t, s){mode='predictor', predictor=kind, cutoff=t}
        h = (act_g(x·Wgᵀ) ⊙ act_u(x·Wuᵀ)) where s > t, else 0;   y = h · Wd.t

The scores come from one of these predictors (`passes/predictors.py` fits them):

    lowrank   s = relu(x·Aᵀ)·Bᵀ + b        A [r, d], B [n_ff, r], b [n_ff]  (DejaVu / PowerInfer, trained)
    svd       s = (x·Aᵀ)·Bᵀ                A = S_r V_rᵀ, B = U_r of W_gate   (training-free)
    sign      s = sign_score(x, @bits)     d − 2·popcount(signbits(x) XOR signbits(W_gate[j]))  (SparseInfer)
    bound     s = x·deq(@W8)ᵀ (+ b) + c·‖x‖₂   an int8 (q8_0) gate copy plus a per-neuron error bound: s <= cutoff
                                     proves the gate inactive, so nothing is lost (passes/certified_gate.py)
    quant     s = x·deq(@W4)ᵀ              a q4_0 shadow copy of W_gate (quant8: q8_0) predicts the gate itself;
                                     the cutoff is calibrated to the recall

`sign_score` is the one new op: the number of sign agreements minus disagreements of x and each W_gate row, from
packed sign bits (bit k of word w of a row is 1 when element 32·w + k is negative; padding bits are 0 on both
sides, so they agree, and are subtracted). It is an integer in [−d, d], kept as float32.

In a ReLU-family block a neuron predicted active whose gate is <= 0 still gives act_g = 0: misses (active
neurons predicted inactive) are the only loss.
"""

from __future__ import annotations

import numpy as np

from .types import TensorType

PREDICTORS = ("lowrank", "svd", "sign", "bound", "quant", "quant8")
WORD_BITS = 32


def pack_sign_bits(values: np.ndarray) -> np.ndarray:
    """[..., d] floats -> [..., ceil(d / 32)] int32 words (bit patterns; the IR has no unsigned type): bit k of
    word w is set when values[..., 32w + k] < 0."""
    d = values.shape[-1]
    words = -(-d // WORD_BITS)
    bits = np.zeros((*values.shape[:-1], words * WORD_BITS), np.uint8)
    bits[..., :d] = values < 0
    little = np.packbits(bits.reshape(*values.shape[:-1], words, 4, 8), axis=-1, bitorder="little")
    return little.reshape(*values.shape[:-1], words * 4).view("<i4").astype(np.int32)


def sign_scores(x: np.ndarray, bits: np.ndarray, d: int) -> np.ndarray:
    """d − 2·(sign disagreements of x and each packed row): [..., d] x [n, words] -> [..., n] float32."""
    xb = pack_sign_bits(x)
    differ = np.bitwise_xor(xb[..., None, :], bits.astype(np.int32))       # [..., n, words]
    counts = np.bitwise_count(differ.view(np.uint32)).sum(-1, dtype=np.int64)
    return (d - 2 * counts).astype(np.float32)


def sign_score_type(types, attrs) -> TensorType:
    x, bits = types
    words = -(-attrs["d"] // WORD_BITS)
    if bits.rank != 2 or bits.dtype != "i32" or bits.shape[1] != words or x.shape[-1] != attrs["d"]:
        raise TypeError(f"sign_score: x {x} and packed bits {bits} do not match d={attrs['d']} "
                        f"(expects bits i32[n, ceil(d/32)])")
    return TensorType((*x.shape[:-1], bits.shape[0]), "f32")


def sign_score_reference(x, bits, attrs, env):
    return sign_scores(x, bits, attrs["d"])
