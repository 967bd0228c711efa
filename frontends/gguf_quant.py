"""A GGUF file's quantized tensors, kept quantized and keyed by their Hugging Face weight names.

    read_gguf_quantized("model.gguf") -> {"model.layers.0.mlp.gate_proj.weight": QuantizedWeight(q4_1), ...}

Q8_0 blocks are our layout byte for byte (ir.quant), so those tensors are taken as they are; Q4_0's and Q4_1's
bytes are rearranged into our split rows (`ir.quant.from_gguf_blocks`): lossless, no arithmetic either way.
llama.cpp stores the rows of Llama's q/k projections permuted for its rotary layout;
transformers' tensor processor undoes that permutation, which moves whole rows, so it applies to the blob as
well. Other types are left out of the result (the model's dequantized weights cover them):
K-quants and the other dequantizable types (Q4_K, Q5_K, Q6_K, Q2_K, Q3_K, Q5_0, Q5_1, the IQ types) have
super-blocks and sub-scales that ours cannot hold exactly; they are dequantized by transformers and, when
`quantize=` asks for it, re-quantized by the quantize pass (a second rounding; `gguf_tensor_types` lets the
report say which). A tensor type nothing here can read is one `GGUFQuantError`.

The mapping GGUF name -> HF name is transformers' own (`get_gguf_hf_weights_map` over the architecture built on
the meta device from the file's config), so every architecture transformers loads from GGUF is covered.
"""

from __future__ import annotations

from collections import Counter

from ..ir.quant import QuantizedWeight, from_gguf_blocks
from .errors import FrontendError
from .gguf_read import read_gguf

KEPT = {"Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_1": "q4_1"}  # GGUF type -> our layout of the same bytes
# the types the gguf package dequantizes (gguf.quants, which transformers' GGUF loader calls); Q8_K, Q8_1 and the
# integer types are not among them: a file holding one is one GGUFQuantError, not a loader's NotImplementedError
DEQUANTIZED = ("Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K", "Q5_0", "Q5_1", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S",
               "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4")
FLOATS = ("F32", "F16", "BF16")


class GGUFQuantError(FrontendError):
    """A GGUF tensor type actsparse cannot read (neither kept quantized nor dequantized)."""


def gguf_tensor_types(path) -> dict[str, int]:
    """Tensor type name -> count, after checking that every type is one actsparse can read."""
    counts = Counter(t.tensor_type.name for t in read_gguf(path).tensors)
    bad = sorted(set(counts) - set(KEPT) - set(DEQUANTIZED) - set(FLOATS))
    if bad:
        raise GGUFQuantError(f"{path}: tensor type(s) {', '.join(bad)} are not supported; actsparse keeps "
                             f"{', '.join(KEPT)} quantized and dequantizes the K-quants, Q5_0, Q5_1, IQ*, TQ* and "
                             "MXFP4: re-quantize the model with llama.cpp's llama-quantize to Q8_0, Q4_0 or Q4_1")
    return dict(counts)


def _hf_names(path) -> tuple[dict[str, str], object]:
    """(GGUF tensor name -> HF weight name, the architecture's tensor processor) through transformers."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        load_gguf_checkpoint,
    )

    config = dict(load_gguf_checkpoint(str(path), return_tensors=False)["config"])
    model_type = config.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    arch = "llama" if model_type == "mistral" else model_type
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=hf_config.to_dict())
    return get_gguf_hf_weights_map(model, processor), processor


def read_gguf_quantized(path) -> dict[str, QuantizedWeight]:
    """The GGUF's Q8_0 / Q4_0 / Q4_1 matrices as QuantizedWeight, keyed by HF weight name (see the docstring)."""
    import numpy as np

    gguf_tensor_types(path)  # one clear error for an unreadable type, before any work
    reader = read_gguf(path)
    names, processor = _hf_names(path)
    out = {}
    for t in reader.tensors:
        layout = KEPT.get(t.tensor_type.name)
        if layout is None or len(t.shape) != 2 or t.name not in names:
            continue
        blob = np.ascontiguousarray(processor.process(np.asarray(t.data), t.name).weights)
        rows, cols = int(t.shape[1]), int(t.shape[0])  # GGUF lists dims innermost first
        out[names[t.name]] = QuantizedWeight(from_gguf_blocks(blob, layout, cols), layout, (rows, cols))
    return out
