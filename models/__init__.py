"""The embedded tiny model: a byte-level Llama decoder with a sparse dReLU MLP and committed weights.

`load_tiny()` gives the model the demo and tests compile; `train.py` is the recipe that produced it;
`TinyLlamaStep` (decode.py) runs it one token at a time with a KV cache, as the demo does.
"""

from __future__ import annotations

from .checkpoint import load_metadata, load_tiny
from .decode import TinyLlamaStep, decode
from .tiny import TinyConfig, TinyLlama
from .tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer", "TinyConfig", "TinyLlama", "TinyLlamaStep", "decode", "load_metadata", "load_tiny"]
