"""Byte-level tokenizer for the embedded tiny model.

Bytes are the simplest vocabulary that needs no trained merges and no data files: every string round-trips
through UTF-8, the vocabulary is exactly 256 ids, and the compiler tests never depend on a tokenizer download.
"""

from __future__ import annotations

VOCAB_SIZE = 256


class ByteTokenizer:
    """UTF-8 bytes <-> token ids 0..255 (one id per byte, no special tokens)."""

    vocab_size: int = VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        # Sampling can cut a multi-byte character in half; "replace" keeps decoding total instead of raising.
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
