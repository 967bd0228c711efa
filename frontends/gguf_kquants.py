"""GGUF block types rewritten into one of our layouts (ir.quant), numpy-vectorized: a Q4_K super-block as eight
q4_1 groups, a Q5_0 block as one q8_0 group.

    q4_k_as_q4_1(blocks)  GGUF Q4_K blocks uint8 [n, 144] -> Q4_1 blocks uint8 [8 n, 20]   (fp16 rounding)
    q5_0_as_q8_0(blocks)  GGUF Q5_0 blocks uint8 [n, 22]  -> Q8_0 blocks uint8 [n, 34]     (lossless)
    q8_0_as_q5_0(blocks)  the inverse of the last where every code lies in -16..15

The layouts, as the gguf package's dequantizers read them (gguf.quants.Q4_K / Q5_0 `dequantize_blocks`):

    Q4_K  144 B, 256 columns: d fp16 | dmin fp16 | 12 B holding eight 6-bit sub-scales sc and eight 6-bit
          sub-mins m | 128 B of codes. Sub-block s (columns 32 s .. 32 s + 31): w = d·sc[s]·q − dmin·m[s], q 0..15.
          Code byte 32 j + i holds column i of sub-block 2 j in its low nibble and of sub-block 2 j + 1 in its high
          nibble. Scale bytes: sc[k] / m[k] (k < 4) are the low 6 bits of bytes k / 4 + k; sc[k + 4] is the low
          nibble of byte 8 + k below the top 2 bits of byte k, m[k + 4] the high nibble of byte 8 + k below the top
          2 bits of byte 4 + k.
    Q5_0  22 B, 32 columns: d fp16 | 4 B, a little-endian uint32 whose bit i is the fifth bit of column i's code |
          16 B, byte i holding the low 4 bits of column i (low nibble) and of column i + 16 (high nibble).
          w = d·(q − 16), q 0..31.

Q4_K -> q4_1: each sub-block is a q4_1 group, scale fp16(d·sc), offset fp16(−dmin·m), the codes repacked into
q4_1's nibble order (byte i: columns i and i + 16 of the group). d·sc has up to 17 significant bits, fp16 keeps 11:
each weight moves by at most 2^-11 (|d·sc·q| + |dmin·m|) (fp16's unit roundoff on each product). A product that
does not fit fp16 (above 65504) cannot be stored: `UnrepresentableError`, and the caller leaves that tensor
dequantized. Q5_0 -> q8_0: the same scale, code q − 16 as int8: the same values, bit for bit.

Why nothing else is rewritten: Q5_1 (w = d·q + m) and Q5_K (5-bit codes with sub-mins) need an offset beside 8-bit
codes, which no layout of ours has; Q6_K's and Q2_K/Q3_K's sub-blocks of 16 columns carry two scales per group of
32, which one q8_0 / q4_x scale cannot hold; the IQ types index codebooks. Those stay dequantized (transformers)
and the quantize pass rounds them into the layout `quantize=` asks for. The way back, for a GGUF writer: Q5_0 from
q8_0 (`q8_0_as_q5_0`, where the codes fit 5 bits); Q4_K cannot be rebuilt from q4_1 groups in general (a q4_1
scale is any fp16, a Q4_K one a 6-bit multiple of a super-block's d), and q4_1 is itself a GGUF type, so a writer
emits Q4_1 blocks (`ir.quant.to_gguf_blocks`).
"""

from __future__ import annotations

import numpy as np

from ..ir.quant import QuantizationError

SUB_BLOCKS = 8   # Q4_K: 32-column sub-blocks of a 256-column super-block
FP16_MAX = float(np.finfo(np.float16).max)


class UnrepresentableError(QuantizationError):
    """A tensor whose blocks our layout cannot hold (e.g. a Q4_K scale product beyond fp16): left dequantized."""


def q4_k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 scale bytes of Q4_K blocks uint8 [n, 12] -> (sc, m), each uint8 [n, 8] (0..63), as in the docstring."""
    low, high = packed[:, 0:4], packed[:, 4:8]   # sc[k] / m[k] below 4 in their low 6 bits, the rest's top bits
    mixed = packed[:, 8:12]
    sc = np.concatenate([low & 0x3F, (mixed & 0x0F) | ((low >> 2) & 0x30)], -1)
    m = np.concatenate([high & 0x3F, (mixed >> 4) | ((high >> 2) & 0x30)], -1)
    return sc, m


def q4_k_as_q4_1(blocks: np.ndarray) -> np.ndarray:
    """Q4_K blocks uint8 [n, 144] -> Q4_1 blocks uint8 [8 n, 20] (module docstring; raises UnrepresentableError)."""
    n = blocks.shape[0]
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    sc, m = q4_k_scales(blocks[:, 4:16])
    scale, offset = d * sc, -(dmin * m)   # exact in float32 (11 x 6 significant bits); fp16 rounds them once
    with np.errstate(over="ignore"):
        header = np.stack([scale, offset], -1).astype(np.float16)   # [n, 8, 2]
    lost = np.isfinite(np.stack([scale, offset], -1)) & ~np.isfinite(header)
    if lost.any():
        worst = float(np.abs(np.stack([scale, offset], -1))[lost].max())
        raise UnrepresentableError(f"a Q4_K sub-block scale or minimum ({worst:.4g}) exceeds fp16's {FP16_MAX:g}")
    codes = blocks[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    codes = (codes & 0x0F).reshape(n, SUB_BLOCKS, 32)   # [block, sub-block, column]
    packed = codes[..., :16] | (codes[..., 16:] << 4)   # q4_1: byte i holds columns i and i + 16
    return np.concatenate([header.view(np.uint8), packed], -1).reshape(n * SUB_BLOCKS, 20)


def q5_0_as_q8_0(blocks: np.ndarray) -> np.ndarray:
    """Q5_0 blocks uint8 [n, 22] -> Q8_0 blocks uint8 [n, 34]: the same scale, code q − 16 (lossless)."""
    high = np.unpackbits(blocks[:, 2:6], axis=-1, bitorder="little")   # bit i of the uint32: column i
    low = np.concatenate([blocks[:, 6:] & 0x0F, blocks[:, 6:] >> 4], -1)
    codes = (low | (high << 4)).astype(np.int8) - np.int8(16)
    return np.concatenate([blocks[:, 0:2], codes.view(np.uint8)], -1)


def q8_0_as_q5_0(blocks: np.ndarray) -> np.ndarray:
    """Q8_0 blocks uint8 [n, 34] whose codes all lie in -16..15 -> Q5_0 blocks uint8 [n, 22] (inverse of the above)."""
    codes = blocks[:, 2:].view(np.int8).astype(np.int16)
    if codes.size and (codes.min() < -16 or codes.max() > 15):
        raise UnrepresentableError(f"q8_0 codes {codes.min()}..{codes.max()} do not fit Q5_0's -16..15")
    q = (codes + 16).astype(np.uint8)
    low = (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)
    high = np.packbits(q >> 4, axis=-1, bitorder="little")
    return np.concatenate([blocks[:, 0:2], high, low], -1)
