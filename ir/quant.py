"""Quantized weight layouts: group-wise int8 / int4 with fp16 scales, GGUF's blocks split per row.

A quantized weight of logical shape [rows, cols] is one uint8 array [rows, row_bytes], one group of `GROUP` = 32
consecutive input columns at a time, each group holding

    q8_0   scale fp16 | 32 int8 codes                         w = scale * code                  34 B
    q4_0   scale fp16 | 16 bytes, two codes per byte          w = scale * (nibble - 8)          18 B
    q4_1   scale fp16 | offset fp16 | 16 bytes of nibbles     w = scale * nibble + offset        20 B

Byte j of a 4-bit group holds column j in its low nibble and column j + 16 in its high nibble.
Every layout's rows are split (`QuantLayout.split`): first every group's code bytes (16, q8_0: 32), then every
group's fp16 scale, then (q4_1) every group's fp16 offset (the same bytes a group, nothing padded): a 64-byte vector
then holds 4 whole q4 groups (2 q8_0 groups) of one row and 4 scales are one 8-byte load (the row dots read
llama.cpp's 18-byte blocks at 64-68% of the read limit, ~40% of the loop gathering per-block scales: BENCHMARKS.md,
session 8; q8_0's 34-byte blocks until session 22). The same bytes as GGUF's blocks, rearranged: `from_gguf_blocks`
/ `to_gguf_blocks` convert losslessly.

`LAYOUT_VERSIONS`: the byte arrangement of each layout, which an artifact records per quantized weight
(runtime/module.py): 1 GGUF's blocks, 2 split rows. `UNRECORDED_VERSIONS`: what an artifact that records none
holds (q8_0 was blocks until session 22; q4_1 until session 19, whose artifacts cannot be told apart: rebuild them).

Why q4_1's offsets are a run of their own behind the scales rather than (scale, offset) pairs per group: every
kernel that reads split scales (the row dots' K scales of a chunk, the axpys' 16-group coefficient tables) then
reads them exactly as q4_0's, and the offsets are one more contiguous load of the same shape, converted the same
way; pairs would make both a strided deinterleave (a shuffle per load) and q4_1's scale code differ from q4_0's.

Why one array per weight rather than separate code / scale arrays: a row is then one contiguous stream (the
kernels prefetch and gather whole rows; the scales sit beside their codes), and every kernel keeps the same
buffer signature whatever the layout. In the IR a quantized weight is a `weight` node with the logical type
(f32[rows, cols]) and the attribute `layout`; the graph holds the blob. The reference interpreter dequantizes.

Rows whose length 32 does not divide keep their last group partial: it is padded with zero weights (codes
that decode to exactly 0), so nothing is lost and no input column is dropped. Other group sizes are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import ActsparseError

GROUP = 32


class QuantizationError(ActsparseError):
    """A weight cannot be quantized or stored as requested (unknown kind, group size, malformed blob)."""


@dataclass(frozen=True)
class QuantLayout:
    """One layout: `bits` per code, an fp16 `offset` per group or not, `split` rows or blocks (module docstring)."""

    name: str
    bits: int
    offset: bool
    split: bool = False  # codes of every group, then the scales, then the offsets (module docstring); else blocks

    @property
    def header_bytes(self) -> int:
        return 4 if self.offset else 2

    @property
    def code_bytes(self) -> int:
        """Code bytes of one group."""
        return GROUP * self.bits // 8

    @property
    def block_bytes(self) -> int:
        return self.header_bytes + GROUP * self.bits // 8

    def groups(self, cols: int) -> int:
        return -(-cols // GROUP)

    def stored_groups(self, cols: int) -> int:
        """Groups a row stores (the scale positions of split rows depend on it)."""
        return self.groups(cols)

    def row_bytes(self, cols: int) -> int:
        return self.stored_groups(cols) * self.block_bytes

    def scale_byte(self, grp, stored: int):
        """Byte offset within a row of group grp's fp16 scale (`stored`: the row's stored groups)."""
        return stored * self.code_bytes + 2 * grp if self.split else grp * self.block_bytes

    def offset_byte(self, grp, stored: int):
        """Byte offset within a row of group grp's fp16 offset (layouts with `offset`)."""
        assert self.offset, f"{self.name} stores no offsets"
        return stored * (self.code_bytes + 2) + 2 * grp if self.split else grp * self.block_bytes + 2

    def codes_byte(self, grp, stored: int):
        """Byte offset within a row of group grp's first code byte."""
        return grp * self.code_bytes if self.split else grp * self.block_bytes + self.header_bytes


LAYOUTS = {lay.name: lay for lay in (QuantLayout("q8_0", 8, False, split=True),
                                      QuantLayout("q4_0", 4, False, split=True),
                                      QuantLayout("q4_1", 4, True, split=True))}
BLOCKS, SPLIT = 1, 2  # layout versions (module docstring)
LAYOUT_VERSIONS = {name: SPLIT if lay.split else BLOCKS for name, lay in LAYOUTS.items()}
UNRECORDED_VERSIONS = {"q8_0": BLOCKS, "q4_0": SPLIT, "q4_1": SPLIT}  # artifacts written before session 22
QUANTIZE_KINDS = {"int8": "q8_0", "int4": "q4_0"}  # user-facing `quantize=` values -> the layout they produce
FLOAT_KINDS = {"fp16": "float16"}  # `quantize=` values that store plain floats of a narrower dtype
STORAGE_KINDS = (*FLOAT_KINDS, *QUANTIZE_KINDS)  # every `quantize=` value


def bytes_per_weight(kind: str) -> float:
    """Bytes one weight takes stored as `kind`: a `quantize=` value, a layout of LAYOUTS (a file's kept blocks), or
    "fp32" (unquantized float32)."""
    if kind == "fp32":
        return 4.0
    if kind in FLOAT_KINDS:
        return float(np.dtype(FLOAT_KINDS[kind]).itemsize)
    if kind in QUANTIZE_KINDS or kind in LAYOUTS:
        return layout(QUANTIZE_KINDS.get(kind, kind)).block_bytes / GROUP
    raise QuantizationError(f"unknown weight storage {kind!r}; valid: fp32, {', '.join(STORAGE_KINDS)}")


def layout(name: str) -> QuantLayout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise QuantizationError(f"unknown weight layout {name!r}; known: {', '.join(LAYOUTS)}") from None


@dataclass(frozen=True)
class QuantizedWeight:
    """A quantized [rows, cols] weight: `blob` uint8 [rows, layout.row_bytes(cols)] in layout `layout`."""

    blob: np.ndarray
    layout: str
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        check_blob(self.blob, self.layout, self.shape)

    def dequantize(self) -> np.ndarray:
        return dequantize(self.blob, self.layout, self.shape[1])


def check_blob(blob: np.ndarray, layout_name: str, shape) -> None:
    lay = layout(layout_name)
    rows, cols = shape
    want = (rows, lay.row_bytes(cols))
    if blob.dtype != np.uint8 or blob.shape != want:
        raise QuantizationError(f"a {layout_name} weight of shape {tuple(shape)} is uint8 {list(want)}, "
                                f"got {blob.dtype} {list(blob.shape)}")


def quantize(w: np.ndarray, kind: str, group_size: int = GROUP) -> QuantizedWeight:
    """w [rows, cols] float -> QuantizedWeight; kind "int8" (q8_0) or "int4" (q4_0), or a layout name.

    Symmetric, one fp16 scale per group of 32 input columns. int8: scale = max|w| / 127, code = round(w / scale).
    int4: the q4_0 block whose scale minimizes the group's squared error (`q4_0_search_scales`: ggml's
    make_qx_quants search, as llama.cpp's k-quants do), which is what `quantize="int4"` means. A layout name
    ("q8_0", "q4_0", "q4_1") gives GGUF's own rule byte for byte; for q4_0 that is scale = -m / 8 with m the
    group's value of largest magnitude. q4_1: scale = (max - min) / 15, offset = min.
    """
    if group_size != GROUP:
        raise QuantizationError(f"group size {group_size} is not supported: the kernels and GGUF's blocks use "
                                f"{GROUP}; a row whose length {GROUP} does not divide is padded with zero "
                                "weights in its last group, so use the default")
    name = QUANTIZE_KINDS.get(kind, kind)
    lay = layout(name) if name in LAYOUTS else None
    if lay is None:
        raise QuantizationError(f"unknown quantization {kind!r}; valid: {', '.join(QUANTIZE_KINDS)}")
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise QuantizationError(f"only 2-d weights [out, in] are quantized, got shape {list(w.shape)}")
    rows, cols = w.shape
    g = lay.groups(cols)
    padded = np.zeros((rows, g * GROUP), np.float32)
    padded[:, :cols] = w
    blocks = padded.reshape(rows, g, GROUP)
    header = np.zeros((rows, g, lay.header_bytes // 2), np.float16)
    if name == "q8_0":
        scale, codes = q8_0_codes(blocks)
        codes = codes.astype(np.int8).view(np.uint8)
        header[..., 0] = scale
    elif name == "q4_0":
        idx = np.abs(blocks).argmax(-1)
        m = np.take_along_axis(blocks, idx[..., None], -1)[..., 0]
        scale = q4_0_search_scales(blocks, m) if kind == "int4" else m / -8
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
        codes = np.clip(np.floor(blocks * inv[..., None] + 8.5), 0, 15).astype(np.uint8)   # searched scales may clip
        header[..., 0] = scale
    else:  # q4_1
        lo, hi = blocks.min(-1), blocks.max(-1)
        scale = (hi - lo) / 15
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
        codes = np.minimum(15, ((blocks - lo[..., None]) * inv[..., None] + 0.5).astype(np.int8)).astype(np.uint8)
        header[..., 0], header[..., 1] = scale, lo
    if lay.bits == 4:
        codes = codes[..., :16] | (codes[..., 16:] << 4)
    blocks = np.concatenate([header.view(np.uint8), codes], -1).reshape(rows, g * lay.block_bytes)
    return QuantizedWeight(from_gguf_blocks(blocks, name, cols), name, (rows, cols))


def q8_0_codes(blocks: np.ndarray, out: np.ndarray | None = None,
               amax: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float32 groups [..., 32] -> (scale float32 [...], codes [..., 32]: integers -127..127 held as float32), GGUF's
    Q8_0 rule: scale = max|w| / 127, code = w / scale rounded half to even (0 in an all-zero group). The block
    stores fp16(scale); the codes come from the float32 scale, as ggml computes them. `out` (float32, the shape of
    `blocks`, not `blocks` itself) takes the codes, so that a caller quantizing a few rows at a time
    (passes/certified_gate.py) reuses one scratch buffer instead of allocating full-size temporaries; `amax` (the
    groups' max |w|, when the caller has it: numpy reduces a group of 32 slowly) skips that reduction."""
    if amax is None:
        amax = np.abs(blocks, out=out).max(-1)
    scale = amax / np.float32(127)
    inv = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale > 0)
    codes = np.multiply(blocks, inv[..., None], out=out)
    return scale, np.clip(np.rint(codes, out=codes), -127, 127, out=codes)


def from_gguf_blocks(blocks: np.ndarray, layout_name: str, cols: int) -> np.ndarray:
    """GGUF's blocks uint8 [rows, groups * block_bytes] -> our blob of `layout_name` (the same bytes; split
    layouts move every scale behind the row's codes, then every offset)."""
    lay = layout(layout_name)
    blocks = np.ascontiguousarray(blocks, np.uint8)
    if not lay.split:
        return blocks
    rows, g, sg = blocks.shape[0], lay.groups(cols), lay.stored_groups(cols)
    if blocks.shape != (rows, g * lay.block_bytes):
        raise QuantizationError(f"{layout_name} blocks of a [{rows}, {cols}] weight are uint8 "
                                f"[{rows}, {g * lay.block_bytes}], got {list(blocks.shape)}")
    b = blocks.reshape(rows, g, lay.block_bytes)
    hb = lay.header_bytes
    codes = np.zeros((rows, sg, lay.block_bytes - hb), np.uint8)
    header = np.zeros((rows, sg, hb), np.uint8)
    codes[:, :g], header[:, :g] = b[..., hb:], b[..., :hb]
    fields = header.reshape(rows, sg, hb // 2, 2).transpose(0, 2, 1, 3)  # [rows, field, group, 2]: scales, offsets
    return np.ascontiguousarray(np.concatenate([codes.reshape(rows, -1), fields.reshape(rows, -1)], -1))


def to_gguf_blocks(blob: np.ndarray, layout_name: str, cols: int) -> np.ndarray:
    """Our blob -> GGUF's blocks uint8 [rows, groups * block_bytes] (inverse of `from_gguf_blocks`)."""
    lay = layout(layout_name)
    rows = blob.shape[0]
    check_blob(blob, layout_name, (rows, cols))
    if not lay.split:
        return blob
    g, sg, hb = lay.groups(cols), lay.stored_groups(cols), lay.header_bytes
    codes = blob[:, :sg * lay.code_bytes].reshape(rows, sg, -1)[:, :g]
    fields = blob[:, sg * lay.code_bytes:].reshape(rows, hb // 2, sg, 2)[:, :, :g]  # [rows, field, group, 2]
    header = fields.transpose(0, 2, 1, 3).reshape(rows, g, hb)
    return np.ascontiguousarray(np.concatenate([header, codes], -1).reshape(rows, g * lay.block_bytes))


SEARCH_STEPS = np.arange(-10, 11) * 0.1   # candidate code magnitudes for the largest value: 7.0 .. 9.0
SEARCH_CHUNK = 8192   # groups searched at a time: the temporaries of a chunk stay in the caches


def q4_0_search_scales(blocks: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Per group of `blocks` [..., 32], the q4_0 scale (fp16-exact) with the least squared error.

    For each candidate the largest value `m` maps to code -(8 + step) (so both -8 and +7 at the other end are
    tried, and clipping the extreme value is allowed when it lets the rest round finer); the codes are rounded,
    and the scale refit by least squares for those codes. Why: max-abs rounding (ggml's q4_0 rule) spends the
    scale on one outlier; the search cuts the group's error by about a quarter for normally distributed weights.
    In float32, SEARCH_CHUNK groups at a time, chunks on the cores (numpy's loops release the GIL): 20-40 M
    weights/s on 2 Zen 4 cores where the whole-array float64 form managed 3 (a 7B model's int4 build: minutes, not
    most of an hour).
    """
    groups = blocks.reshape(-1, blocks.shape[-1])
    m_flat = np.asarray(m, np.float32).reshape(-1)
    out = np.empty(m_flat.shape, np.float32)
    starts = range(0, len(m_flat), SEARCH_CHUNK)

    def search(start: int) -> None:
        stop = start + SEARCH_CHUNK
        out[start:stop] = _search_chunk(np.asarray(groups[start:stop], np.float32), m_flat[start:stop])

    if len(starts) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(len(starts), os.cpu_count() or 1)) as pool:
            list(pool.map(search, starts))
    else:
        for start in starts:
            search(start)
    return out.reshape(np.shape(m))


def _search_chunk(b: np.ndarray, m: np.ndarray) -> np.ndarray:
    """`q4_0_search_scales` of groups b [n, 32] float32 with largest values m [n]."""
    safe = np.where(m == 0, np.float32(1), m)
    best_scale, best_err = m / np.float32(-8), np.full(m.shape, np.inf, np.float32)
    codes, residual = np.empty_like(b), np.empty_like(b)
    for step in (-(8 + SEARCH_STEPS)).astype(np.float32):
        _rounded_codes(b, step / safe, codes)
        l2 = np.einsum("ij,ij->i", codes, codes)
        scale = np.divide(np.einsum("ij,ij->i", b, codes), l2, out=np.zeros_like(l2), where=l2 > 0)
        scale = scale.astype(np.float16).astype(np.float32)   # the error of the scale as stored
        _rounded_codes(b, np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale != 0), codes)
        np.subtract(b, np.multiply(codes, scale[:, None], out=residual), out=residual)
        err = np.einsum("ij,ij->i", residual, residual)
        better = err < best_err
        best_err, best_scale = np.where(better, err, best_err), np.where(better, scale, best_scale)
    return np.where(m == 0, np.float32(0), best_scale)


def _rounded_codes(b: np.ndarray, inv: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = clip(rint(b * inv), -8, 7): q4_0's codes of groups b [n, 32] under per-group inverse scales inv [n]."""
    np.multiply(b, inv[:, None], out=out)
    return np.clip(np.rint(out, out=out), -8, 7, out=out)


def dequantize(blob: np.ndarray, layout_name: str, cols: int) -> np.ndarray:
    """uint8 [rows, row_bytes] in `layout_name` -> float32 [rows, cols] (the exact values the kernels use)."""
    lay = layout(layout_name)
    rows = blob.shape[0]
    g = lay.groups(cols)
    blocks = to_gguf_blocks(blob, layout_name, cols).reshape(rows, g, lay.block_bytes)
    header = np.ascontiguousarray(blocks[..., :lay.header_bytes]).view(np.float16).astype(np.float32)
    raw = blocks[..., lay.header_bytes:]
    if lay.bits == 8:
        values = raw.view(np.int8).astype(np.float32)
        values *= header[..., :1]   # in place: the compile report dequantizes a 7B gate's int8 copy per layer
    else:
        nibbles = np.concatenate([raw & 15, raw >> 4], -1).astype(np.float32)
        values = (nibbles * header[..., :1] + header[..., 1:2]) if lay.offset else (nibbles - 8) * header[..., :1]
    return np.ascontiguousarray(values.reshape(rows, g * GROUP)[:, :cols], np.float32)   # a copy only if padded


def round_x8(x: np.ndarray) -> np.ndarray:
    """x [..., d] as the int8-dot kernels see it (codegen/kernels/quant_int8.py): per group of 32 columns (the last
    zero-padded), dx = max|x| / 127 and x -> dx * round(x * (127 / max|x|)), rounded half to even in float32. The
    quantized-weight row dots on a target with an int8 dot equal the float dots on these values."""
    x = np.asarray(x, np.float32)
    d = x.shape[-1]
    g = -(-d // GROUP)
    padded = np.zeros((*x.shape[:-1], g * GROUP), np.float32)
    padded[..., :d] = x
    blocks = padded.reshape(*x.shape[:-1], g, GROUP)
    amax = np.abs(blocks).max(-1, keepdims=True)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax > 0)
    codes = np.rint(blocks * inv)
    return (codes * (amax / np.float32(127))).reshape(padded.shape)[..., :d].astype(np.float32)
