"""The embedded tiny model: a byte-level Llama decoder with a sparse dReLU MLP and committed weights.

`load_tiny()` gives the model the demo and tests compile; `train.py` is the recipe that produced it;
`as_transformers` (decode.py) states it as a transformers LlamaForCausalLM, so it decodes through the same
KV-cache path as any real model (the demo does).
"""

from __future__ import annotations

from .checkpoint import load_metadata, load_tiny
from .decode import as_transformers
from .tiny import TinyConfig, TinyLlama
from .tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer", "TinyConfig", "TinyLlama", "as_transformers", "load_metadata", "load_tiny"]
