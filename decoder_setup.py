"""What `compile_decoder` (api.py) checks and prepares from a decoder's source model before its graph is built:
the KV-cache slots (`checked_max_seq`), one token stream, the whole-prompt prefill graph of a recurrent model,
threshold mode's Fisher weights, the decoding graph's inputs for a prompt and the end-of-sequence ids."""

from __future__ import annotations

import os

import numpy as np

from .errors import ActsparseError
from .runtime.progress import Steps
from .targets.memory import ram_bytes

# where configs keep the number of positions a model was trained for (absolute tables or rotary training length)
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length")


def checked_max_seq(max_seq, model, config) -> int:
    """KV-cache slots: by default the model's context, at most 2048; else a whole number >= 1, at most the context
    where the model has a learned table of absolute positions (past it no row exists: GPT-2's wpe, OPT's), and a
    cache that fits this machine's memory (a huge max_seq would allocate it before anything failed). Rotary, ALiBi
    and position-free models may go past their training context, as in transformers."""
    found = [(f, v) for f in CONTEXT_FIELDS if isinstance(v := getattr(config, f, None), int) and v > 0]
    field, context = found[0] if found else ("", None)
    if max_seq is None:
        return min(context or 2048, 2048)
    if isinstance(max_seq, bool) or not isinstance(max_seq, (int, np.integer)):
        raise ActsparseError(f"max_seq must be a whole number of KV-cache slots, got {max_seq!r}")
    if max_seq < 1:
        raise ActsparseError(f"max_seq must be a positive number of KV-cache slots, got {max_seq}")
    import torch

    name, tokens = type(model).__name__, model.get_input_embeddings()
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m is not tokens  # OPT's: 2 more
              and context is not None and context <= m.num_embeddings <= context + 2]
    if tables and max_seq > context:
        raise ActsparseError(f"max_seq={max_seq} exceeds the {context} positions of {name}'s position table (its "
                             f"config's {field}); give max_seq <= {context}")
    per_slot = 2 * 4 * int(getattr(config, "num_hidden_layers", 0) or 0) * int(getattr(config, "hidden_size", 0) or 0)
    memory = ram_bytes()
    if memory and per_slot * max_seq > memory:  # K and V of every layer, fp32, at most hidden_size wide per slot
        raise ActsparseError(f"max_seq={max_seq} asks for a KV cache of up to {per_slot * max_seq / 2**30:.0f} GiB, "
                             f"more than this machine's {memory / 2**30:.0f} GiB of memory; give a smaller max_seq")
    return int(max_seq)


def not_one_token_stream(model, embeddings) -> str:
    """Why a model that embeds tokens with several tables (or none) cannot keep a decoder's contract."""
    name = type(model).__name__
    children = embeddings.children() if hasattr(embeddings, "children") else ()
    tables = [m for m in children if hasattr(m, "num_embeddings")]
    if len(tables) > 1:  # MusicGen: [batch × codebooks, seq] ids, a token per codebook each step, delayed per codebook
        return (f"{name} embeds {len(tables)} codebooks, one table each (ids [batch × {len(tables)} codebooks, seq], "
                "a token per codebook per step); a decoder's generate takes one token stream (ids [1, n] -> [1, n + "
                "new]): use transformers' generate for it")
    return (f"{name} embeds tokens with a {type(embeddings).__name__}, not one embedding table; decoding takes "
            "text decoders with one token vocabulary")


def prefill_function(model, max_seq: int, caches, one_token: bool, calibrated: bool,
                     progress: Steps) -> tuple[dict, int, bool, str]:
    """({"prefill": its graph}, the most tokens a call takes, whether a call may continue a prompt, "") for a
    decoder whose step takes one token per call because of recurrent states (frontends/prefill.py), or ({}, 0,
    False, why not where the report should say so): the prompt then goes token by token. Not with calibration or a
    memory budget (`calibrated`): those passes measure each graph's own activations, and the two functions must
    share one set of weights."""
    from .frontends.prefill import import_prefill, needs_prefill
    from .ir.decoding import PREFILL_FUNCTION

    if not one_token or not needs_prefill(caches):
        return {}, 0, False, ""
    if calibrated:
        return {}, 0, False, ("prompts go through the one-token step, token by token: no whole-prompt prefill is "
                              "built with calibration or a memory budget (its graph would calibrate thresholds or "
                              "split neurons of its own, and both functions share one set of weights)")
    progress.more(1)
    progress.start("import (whole-prompt prefill graph)")
    found = import_prefill(model, max_seq, caches)
    return ({PREFILL_FUNCTION: found.graph}, found.tokens, found.continues, "") if found.graph is not None \
        else ({}, 0, False, "")


def fisher_weights(model, options: dict, progress: Steps) -> list | None:
    """Threshold mode's default allocation where the torch model is at hand: per block g² of the loss on the
    calibration prompts (one backward each, cached), which pools a greedy method's budget across blocks
    (passes/sensitivity_allocation.py); None for a method that is not greedy or layers it does not know."""
    from .passes.loss_sensitivity import cached_fisher_weights, decoder_mlps
    from .passes.sparsity_methods import method

    if not method(options["method"]).greedy or decoder_mlps(model) is None:
        return None
    progress.more(1)
    progress.start("loss sensitivity (diagonal Fisher, one torch backward per calibration prompt)")
    try:
        return cached_fisher_weights(model, [sample[0] for sample in options["calibration"]])
    except ValueError:   # MLPs whose outputs are not one tensor (routed MoE): the same budget in every block
        return None


TEXT_WINDOW, TEXT_WINDOWS = 256, 16   # calibration text: windows of this many tokens (max_seq at most), this many


def text_calibration(calibration, tokenizer, max_seq: int):
    """Calibration given as text (a file path, or a list of them) -> windows of token ids read with the decoder's
    own tokenizer (passes/calibration_data.text_windows: TEXT_WINDOWS windows of TEXT_WINDOW tokens, or max_seq
    where that is less; cached on disk); calibration given any other way, as it is."""
    paths = [calibration] if isinstance(calibration, (str, os.PathLike)) else calibration
    if not isinstance(paths, (list, tuple)) or not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths):
        return calibration
    if tokenizer is None:
        raise ActsparseError("calibration text needs the model's tokenizer to become token ids, and this model has "
                             "none: pass tokenizer= (a transformers tokenizer), or token ids as calibration")
    from .passes.calibration_data import text_windows

    return text_windows(paths, tokenizer, window=min(TEXT_WINDOW, max_seq), max_windows=TEXT_WINDOWS)


def no_decoder_calibration(mode: str, max_seq: int) -> str:
    """The error for a decoder compiled in a calibrated mode without calibration: a decoder reads text."""
    return (f"mode={mode!r} needs calibration data: for a decoder pass calibration='notes.txt' (a text file, or a "
            f"list of them, read with the model's tokenizer into windows of up to {min(TEXT_WINDOW, max_seq)} tokens: "
            "a few thousand tokens like what the model will read; CLI: --calib-text FILE), or token ids [(ids,), ...]"
            + ("; predictor='bound' (lossless) needs none" if mode == "predictor" else ""))


def decoder_inputs(ids, caches) -> tuple:
    """A decoding graph's inputs for a prompt at position 0 with an empty cache (`caches`: its CacheSpecs)."""
    ids = np.asarray(to_numpy(ids), np.int64).reshape(1, -1)
    if not caches:  # a model without a cache: the graph takes the token ids only (frontends/decoder_export.py)
        return (ids,)
    filled = np.zeros(ids.shape[1], np.int64)  # its length: the slots filled after the prompt is written
    return (ids, np.zeros(1, np.int64), filled, *(np.zeros(c.shape, str(c.dtype).removeprefix("torch."))
                                                       for c in caches))


def eos_ids(model) -> tuple[int, ...]:
    generation = getattr(model, "generation_config", None)
    eos = getattr(generation, "eos_token_id", None)
    eos = getattr(model.config, "eos_token_id", None) if eos is None else eos
    return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None)


def to_numpy(x) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
