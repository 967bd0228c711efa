"""A GGUF file's quantized tensors, kept quantized and keyed by their Hugging Face weight names.

    read_gguf_quantized("model.gguf") -> {"model.layers.0.mlp.gate_proj.weight": QuantizedWeight(q4_1), ...}

`KEPT` says, one entry per GGUF type, which of our layouts (ir.quant) holds it and how its blocks get there: Q8_0's,
Q4_0's and Q4_1's bytes are rearranged into our split rows (`ir.quant.from_gguf_blocks`): lossless, no arithmetic
either way. Q5_0 blocks become q8_0 groups (code q - 16, the same scale: lossless) and Q4_K super-blocks eight q4_1
groups (scale d*sc and offset -dmin*m rounded to fp16: at most 2^-11 of each product; frontends/gguf_kquants.py); a
Q4_K tensor whose products exceed fp16 stays dequantized, with a warning naming it. llama.cpp stores the rows of
Llama's q/k projections permuted for its rotary layout; transformers' tensor processor undoes that permutation,
which moves whole rows, so it applies to the blob as well: what a processor does is found by running it on a probe
of numbered rows (`processed_row_order`), and a tensor it does more to (GPT-2's transposed matrices) stays
dequantized, as transformers loads it. Other types are left out of the result (the model's dequantized weights cover
them): Q6_K, Q5_K, Q2_K, Q3_K, Q5_1 and the IQ types have sub-blocks or offsets ours cannot hold (gguf_kquants'
docstring says which); they are dequantized by transformers and, when `quantize=` asks for it, re-quantized by the
quantize pass (a second rounding). `storage_note` says in the report, per GGUF type, how many tensors were kept as
stored, converted, quantized anew or dequantized to float32. A tensor type nothing here can read is one
`GGUFQuantError`. A MoE's 3-D expert tensors, which transformers merges (Qwen-MoE's gate and up into one
`gate_up_proj`), come back under their GGUF names, experts stacked by rows: the quantize pass takes them where a
weight's values equal theirs (the routed experts' stacked rows).

The mapping GGUF name -> HF name is transformers' own (`get_gguf_hf_weights_map` over the architecture built on
the meta device from the file's config), so every architecture transformers loads from GGUF is covered.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..ir.quant import FLOAT_KINDS, LAYOUTS, QuantizedWeight, from_gguf_blocks, quantize
from .errors import FrontendError
from .gguf_kquants import UnrepresentableError, q4_k_as_q4_1, q5_0_as_q8_0
from .gguf_read import read_gguf


@dataclass(frozen=True)
class Kept:
    """How a GGUF type is kept quantized: our `layout`, and `rewrite` (GGUF blocks uint8 [n, the type's block
    bytes] -> that layout's GGUF blocks) where the bytes differ; `rounding` says what the rewrite changes."""

    layout: str
    rewrite: Callable[[np.ndarray], np.ndarray] | None = None
    rounding: str = "none"


KEPT = {   # GGUF type -> how it is kept
    "Q8_0": Kept("q8_0"),
    "Q4_0": Kept("q4_0"),
    "Q4_1": Kept("q4_1"),
    "Q5_0": Kept("q8_0", q5_0_as_q8_0),
    "Q4_K": Kept("q4_1", q4_k_as_q4_1, "scale d*sc and offset -dmin*m rounded to fp16"),
}
# the types the gguf package dequantizes (gguf.quants, which transformers' GGUF loader calls); Q8_K, Q8_1 and the
# integer types are not among them: a file holding one is one GGUFQuantError, not a loader's NotImplementedError
DEQUANTIZED = ("Q5_K", "Q6_K", "Q2_K", "Q3_K", "Q5_1", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S",
               "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4")
FLOATS = ("F32", "F16", "BF16")
# dequantized types of more than 4 bits: a K-quant mix (Q4_K_M) stores some tensors (half the down projections,
# attention's v) in Q6_K on purpose; under quantize="int4" they are stored q8_0, not rounded to 4 bits a second time
# (Gemma 3 270M's Q4_K_M file: perplexity +5.4% with its 9 Q6_K tensors in q4_0, BENCHMARKS.md session 31)
WIDE = ("Q5_K", "Q6_K", "Q5_1")


def wide_tensors(tensor_types: Mapping[str, tuple[str, str]]) -> frozenset:
    """HF names of the tensors a GGUF stores in a `WIDE` type (`tensor_types`: `hf_tensor_types`' answer)."""
    return frozenset(hf for hf, (_, kind) in tensor_types.items() if kind in WIDE)


class GGUFQuantError(FrontendError):
    """A GGUF tensor actsparse cannot read: a type neither kept quantized nor dequantized, or blocks of the wrong
    size (a truncated or corrupt tensor)."""


def gguf_tensor_types(path, reader=None) -> dict[str, int]:
    """Tensor type name -> count, after checking that every type is one actsparse can read (`reader`: the file's
    `read_gguf` when the caller has it: parsing Gemma's 262k-token vocabulary takes ~15 s)."""
    counts = Counter(t.tensor_type.name for t in (reader if reader is not None else read_gguf(path)).tensors)
    bad = sorted(set(counts) - set(KEPT) - set(DEQUANTIZED) - set(FLOATS))
    if bad:
        raise GGUFQuantError(f"{path}: tensor type(s) {', '.join(bad)} are not supported; actsparse keeps "
                             f"{', '.join(KEPT)} quantized and dequantizes the other K-quants, Q5_1, IQ*, TQ* and "
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


def hf_tensor_types(path) -> dict[str, tuple[str, str]]:
    """HF weight name -> (GGUF tensor name, GGUF type name) of every tensor transformers maps, and a MoE's 3-D expert
    tensors under their GGUF names (transformers merges or splits them), for reports."""
    names, _ = _hf_names(path)
    return {key: (t.name, t.tensor_type.name) for t in read_gguf(path).tensors
            if (key := _report_key(t, names)) is not None}


def _report_key(t, names: Mapping) -> str | None:
    """The name a GGUF tensor is reported under: its HF weight name, or its own for a MoE's 3-D expert tensor."""
    return names.get(t.name, t.name if len(t.shape) == 3 else None)


def kept_blob(blob: np.ndarray, type_name: str, cols: int) -> np.ndarray:
    """A GGUF tensor's rows uint8 [rows, row bytes] of a `KEPT` type -> the blob of its layout (ir.quant)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    kept = KEPT[type_name]
    block_cols, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    rows, want = blob.shape[0], cols // block_cols * block_bytes
    if cols % block_cols or blob.shape != (rows, want):
        raise GGUFQuantError(f"a {type_name} tensor with {cols} columns a row has {block_cols}-column blocks of "
                             f"{block_bytes} bytes, uint8 [{rows}, {want}]; got {list(blob.shape)}: the tensor is "
                             "truncated or corrupt, re-export the GGUF")
    blocks = blob if kept.rewrite is None else kept.rewrite(blob.reshape(-1, block_bytes)).reshape(rows, -1)
    return from_gguf_blocks(blocks, kept.layout, cols)


def read_gguf_quantized(path, left_dequantized: dict | None = None,
                        tensor_types: dict | None = None) -> dict[str, QuantizedWeight]:
    """The GGUF's matrices of a `KEPT` type as QuantizedWeight, keyed by HF weight name (see the docstring).
    A tensor whose blocks its layout cannot hold stays dequantized: `left_dequantized` (when given) gets
    {HF name: the reason}, and a warning says it. `tensor_types` (when given) gets `hf_tensor_types`' answer."""
    reader = read_gguf(path)
    gguf_tensor_types(path, reader)  # one clear error for an unreadable type, before any work
    names, processor = _hf_names(path)
    out = {}
    for t in reader.tensors:
        kind = t.tensor_type.name
        if tensor_types is not None and (key := _report_key(t, names)) is not None:
            tensor_types[key] = (t.name, kind)
        if kind in KEPT and len(t.shape) == 3:   # a MoE's experts: transformers merges or splits them
            _stacked_source(out, t, kind)
            continue
        if kind in WIDE and len(t.shape) == 3:
            _wide_stacked_source(out, t)
            continue
        if kind not in KEPT or len(t.shape) != 2 or t.name not in names:
            continue
        rows, cols = int(t.shape[1]), int(t.shape[0])  # GGUF lists dims innermost first
        order = processed_row_order(processor, t.name, rows)
        if isinstance(order, str):  # values or layout rewritten: transformers' dequantized weight is the one
            if left_dequantized is not None:
                left_dequantized[names[t.name]] = f"{kind}: {order}"
            continue
        blob = np.ascontiguousarray(np.asarray(t.data)[order])
        try:
            out[names[t.name]] = QuantizedWeight(kept_blob(blob, kind, cols), KEPT[kind].layout, (rows, cols))
        except UnrepresentableError as err:
            warnings.warn(f"{path}: {t.name} ({kind}) stays dequantized: {err}", stacklevel=2)
            if left_dequantized is not None:
                left_dequantized[names[t.name]] = f"{kind}: {err}"
    return out


def _stacked_source(out: dict, t, kind: str) -> None:
    """A 3-D tensor (a MoE's experts, [E, rows, cols], `ffn_gate_exps`...), which transformers merges or splits into
    other tensors: its rows, experts one after the other, as one QuantizedWeight [E * rows, cols] keyed by its GGUF
    name. No graph weight has that name: the quantize pass takes it for a weight whose values it equals (the routed
    experts' stacked gate / up rows are these rows in this order), `Quantize._equal_source`."""
    cols, rows, experts = (int(n) for n in t.shape)
    blob = np.ascontiguousarray(np.asarray(t.data).reshape(experts * rows, -1))
    try:
        out[t.name] = QuantizedWeight(kept_blob(blob, kind, cols), KEPT[kind].layout, (experts * rows, cols))
    except UnrepresentableError:
        pass   # the dequantized weights cover it


def _wide_stacked_source(out: dict, t) -> None:
    """A 3-D tensor of a `WIDE` type (a K-quant mix's Q6_K `ffn_down_exps`): its values, as the gguf package
    dequantizes them, quantized q8_0 [E * rows, cols] under its GGUF name, so the quantize pass stores the routed
    stacks with these values at 8 bits (as `wide` does for a 2-D tensor) instead of rounding 6-bit weights to 4 bits;
    the pass finds it by value (within q8_0's rounding)."""
    from gguf import quants

    cols, rows, experts = (int(n) for n in t.shape)
    values = quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(experts * rows, cols)
    out[t.name] = quantize(np.asarray(values, np.float32), "int8")


def processed_row_order(processor, name: str, rows: int) -> np.ndarray | str:
    """What transformers' tensor processor does to GGUF tensor `name` ([rows, ...]), found by running it on a probe
    whose row i is (i, -i - 1): the order its rows come out in (Llama's q/k un-permutation moves whole rows, which
    the quantized blocks can follow), or, where it does more (GPT-2's transposes, Mamba's log(-A), a reshape), why
    the tensor stays dequantized."""
    probe = np.stack([np.arange(rows, dtype=np.float64), -np.arange(rows, dtype=np.float64) - 1], -1)
    try:
        out = processor.process(probe.copy(), name, parsed_parameters={"tensors": {}}, tensor_key_mapping={})
    except Exception as err:  # noqa: BLE001 - a processor that cannot take the probe: its tensor stays dequantized
        return f"transformers' GGUF loader could not be checked on this tensor ({type(err).__name__}: {err})"
    got = np.asarray(out.weights)
    moved_rows = (out.name is not None and got.shape == probe.shape and np.array_equal(got[:, 1], -got[:, 0] - 1)
                  and np.array_equal(np.sort(got[:, 0]), probe[:, 0]))  # whole rows, each once, values kept
    return got[:, 0].astype(np.int64) if moved_rows else \
        "transformers' GGUF loader rewrites this tensor (not a reordering of its rows)"


def storage_note(tensor_types: Mapping[str, tuple[str, str]], stored: Iterable[str] | Mapping, kept: Mapping) -> str:
    """What became of a GGUF's tensors, per type, for the report: `tensor_types` (`hf_tensor_types`), `stored` the
    compiled graph's weights or their names (a quantized or fp16 copy is named `<name>[.t].<layout>`), `kept` the
    prequantized weights compile was given (`read_gguf_quantized`).

        "GGUF tensors: Q4_K x27: 18 kept as q4_1 groups (...), 9 dequantized, quantized anew as q8_0; F32 x109 ..."
    """
    names = set(stored)
    copies = _copies(names)
    # a MoE's expert stack is kept under a routed weight's name: found by identity
    blobs = {id(array) for array in stored.values()} if isinstance(stored, Mapping) else set()
    outcomes = defaultdict(Counter)   # GGUF type -> {what became of it: count}
    for hf, (gguf_name, kind) in tensor_types.items():
        pre = kept.get(hf)
        if pre is not None and hf == gguf_name and hf not in names:   # a 3-D expert tensor (`_stacked_source`)
            taken = id(pre.blob) in blobs
            if kind in WIDE:   # `_wide_stacked_source`: its values at 8 bits
                how = "dequantized, quantized anew as q8_0 (routed experts)" if taken else \
                    "dequantized, quantized anew for the routed experts"
            else:
                how = "kept as stored (routed experts)" if taken else \
                    "dequantized, quantized anew for the routed experts"
            outcomes[kind][how] += 1
            continue
        outcomes[kind][_outcome(hf, kind, pre, names, sorted(copies.get(hf, ())))] += 1
    parts = []
    for kind in sorted(outcomes, key=lambda k: (k in FLOATS, k)):
        counts = outcomes[kind]
        if len(counts) == 1:
            parts.append(f"{kind} x{counts.total()} {next(iter(counts))}")
        else:
            parts.append(f"{kind} x{counts.total()}: " + ", ".join(f"{n} {what}" for what, n in counts.most_common()))
    return "GGUF tensors: " + "; ".join(parts)


FOUR_BIT_LAYOUTS = ("q4_0", "q4_1")


def second_rounding_note(tensor_types: Mapping[str, tuple[str, str]], stored: Iterable[str], kept: Mapping) -> str:
    """A warning for the report ('' when there is none): tensors the file stores in blocks of at most 5 bits that
    were not kept but stored again in a 4-bit layout (a sparse kernel's transposed or column layout; the arguments
    are `storage_note`'s). That second 4-bit rounding costs far more than the file's own: SmolLM2-135M's Q4_1 file
    in threshold mode at 0.5, perplexity +84% over dense int4 (+6% from float weights; BENCHMARKS.md, session 31)."""
    names = set(stored)
    copies = _copies(names)
    again = sorted(hf for hf, (_, kind) in tensor_types.items() if kind in KEPT and kind != "Q8_0"
                   and not (kept.get(hf) is not None and f"{hf}.{kept[hf].layout}" in names)
                   and copies.get(hf, set()) & set(FOUR_BIT_LAYOUTS))
    if not again:
        return ""
    return (f"{len(again)} tensors the GGUF stores in 4-5 bit blocks ({again[0]}, ...) are re-laid for the sparse "
            "kernels and quantized a second time at 4 bits, which costs much more quality than the file's own "
            "rounding: compare `actsparse perplexity` of this build with a -m dense build's, or build with "
            "quantize='int8' (8-bit re-laid copies) or from float weights")


def _copies(names: set) -> dict[str, set]:
    """HF name -> the layouts of its quantized / fp16 copies among the compiled graph's weight names
    (`<name>[.t].<layout>`)."""
    copies = defaultdict(set)
    for name in names:
        base, _, layout = name.rpartition(".")
        if layout in LAYOUTS or layout in FLOAT_KINDS:
            copies[base.removesuffix(".t")].add(layout)
    return copies


def _outcome(hf: str, kind: str, pre, names: set, layouts: list) -> str:
    """One GGUF tensor's fate in words (storage_note)."""
    if kind in KEPT and pre is not None and f"{hf}.{pre.layout}" in names:
        how = KEPT[kind]
        if how.layout == kind.lower():
            return "kept as stored"
        return f"kept as {how.layout} groups ({'lossless' if how.rounding == 'none' else how.rounding})"
    was = "" if kind in FLOATS else "dequantized, "
    if layouts == ["fp16"]:
        return f"{was}stored as fp16"
    if layouts:
        return f"{was}quantized {'anew ' if was else ''}as {', '.join(layouts)}"
    return "as float32" if kind in FLOATS else "dequantized to float32"
