"""The embedded tiny model: a byte-level Llama decoder with a sparse dReLU MLP and committed weights.

`load_tiny()` gives the model the demo and tests compile; `train.py` is the recipe that produced it.
"""

from __future__ import annotations

from .checkpoint import load_metadata, load_tiny
from .tiny import TinyConfig, TinyLlama
from .tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer", "TinyConfig", "TinyLlama", "load_metadata", "load_tiny"]
