"""The rows of a quantized embedding table at token ids, dequantized to float32: a TE compute (one element per output).

    out[..., c] = value of row clip(ids[...], 0, vocab - 1) at column c     (the table: uint8 [vocab, row_bytes])

Why a TE compute and not a hand-scheduled kernel: a lookup reads one row per token (640 values for Gemma 3 270M: a
step reads 1 KB of a 170 MB table), so it is all index arithmetic and no bandwidth. As a plain compute Relax fuses it
with what follows (Gemma's scaling by sqrt(d)), the CPU pipeline compiles its loops and dlight's fallback rule
binds them to threads on CUDA: one function for every target. Each element is decoded by `quant_blocks.value_at`,
which asks the layout (ir.quant) where the group's scale, offset and codes sit, so a new layout needs nothing here.
Ids outside the table are clipped, as `R.take(..., mode="clip")` does for float tables: the compiled module rejects
them before the call (ir/limits.py); clipping is the backstop for computed indices.
"""

from __future__ import annotations

from tvm import te, tirx

from .quant_blocks import value_at


def dequantized_rows(table: te.Tensor, ids: te.Tensor, layout: str, vocab: int, cols: int) -> te.Tensor:
    """float32 [*ids.shape, cols]: the rows of `table` (a `layout` blob of a [vocab, cols] weight) at `ids`."""

    def element(*index):
        *at, c = index
        row = tirx.Cast("int64", ids[tuple(at)])
        row = tirx.max(tirx.min(row, tirx.const(vocab - 1, "int64")), tirx.const(0, "int64"))
        return value_at(layout, table, row, c)

    return te.compute((*ids.shape, cols), element, name=f"embedding_rows_{layout}")
