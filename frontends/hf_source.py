"""Where decoders come from: a local Hugging Face folder, a GGUF file, or a transformers causal LM object.

    model, tokenizer = load_causal_lm("path/to/dir")        # config.json + *.safetensors (+ tokenizer files)
    model, tokenizer = load_causal_lm("path/to/model.gguf") # transformers dequantizes it (gguf package)
    model, tokenizer = load_causal_lm(causal_lm)             # its tokenizer: None (pass one to compile)

Everything loads from local files only (`local_files_only`, HF_HUB_OFFLINE): nothing is downloaded. Weights come
as float32 (the frontend's dtype). Each failure is one `FrontendError` naming the file and the way out: a GGUF file
is first read by our own checked reader (gguf_read.py: truncated or corrupt files), then loaded by transformers,
whose every failure (a safetensors header that lies, config.json not JSON, no weights) is one `SourceError`; so are
weights that would decode garbage without an error (a shape the config disagrees with, a weight the files lack,
NaN or infinity). A tokenizer that encodes text to nothing or to special tokens only (transformers builds one from a
config alone) counts as none.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from pathlib import Path

from .errors import FrontendError
from .gguf_quant import gguf_tensor_types


class SourceError(FrontendError):
    """A model source that cannot be loaded: no such path, no config.json, an architecture transformers lacks."""


def is_gguf(source) -> bool:
    """A path naming a GGUF file (.gguf, any case)."""
    return isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".gguf"


def is_decoder_source(model) -> bool:
    """A path to a folder or a .gguf file, or a transformers model that can generate."""
    if isinstance(model, (str, os.PathLike)):
        return Path(model).is_dir() or is_gguf(model)
    is_transformers = any(c.__module__.startswith("transformers.") for c in type(model).__mro__)
    return is_transformers and hasattr(model, "generate") and hasattr(model, "config")


def load_causal_lm(source):
    """(model in eval mode and float32, tokenizer or None) from any decoder source."""
    if not isinstance(source, (str, os.PathLike)):
        return source.float().eval(), None
    path = Path(source)
    if is_gguf(path):
        if not path.is_file():
            raise SourceError(f"{path}: no such GGUF file")
        gguf_tensor_types(path)  # truncated, corrupt or of a type nothing reads: one error before transformers
        return _load(path.parent, {"gguf_file": path.name}, f"GGUF file {path}")
    if not path.is_dir():
        raise SourceError(f"{path}: no such folder or .gguf file; give a Hugging Face model folder (config.json + "
                          "*.safetensors + tokenizer files) or a .gguf file")
    if not (path / "config.json").is_file():
        raise SourceError(f"{path} has no config.json, so it is not a Hugging Face model folder; save the model with "
                          "model.save_pretrained(dir) and tokenizer.save_pretrained(dir), or give a .gguf file")
    return _load(path, {}, f"model folder {path}")


@contextlib.contextmanager
def quiet_transformers():
    """transformers' own log lines (fallback kernels, deprecations) off while we load or trace a model: the
    user sees our result or our one-line error."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()  # "Loading weights" bars: progress of ours is shown by our own code
    try:
        with warnings.catch_warnings(), _gguf_bar_off():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


@contextlib.contextmanager
def _gguf_bar_off():
    """transformers' GGUF loader draws its "Converting and de-quantizing GGUF tensors..." bar with tqdm itself,
    past the `disable_progress_bar` switch: its module's `tqdm` is a disabled one for the block, then put back."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_loader
    except ImportError:  # a transformers without GGUF support draws no such bar
        yield
        return
    own = gguf_loader.tqdm
    gguf_loader.tqdm = functools.partial(own, disable=True)
    try:
        yield
    finally:
        gguf_loader.tqdm = own


@contextlib.contextmanager
def _offline():
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _load(folder: Path, extra: dict, what: str):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"local_files_only": True, **extra}
    with _offline(), quiet_transformers():
        try:  # mismatched shapes are let through (transformers would re-initialise them) and refused below, by name
            model, info = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                               ignore_mismatched_sizes=True, output_loading_info=True,
                                                               **kwargs)
        except Exception as err:  # noqa: BLE001 - parsing files a user gave: each failure becomes one SourceError
            raise SourceError(_why_not_loaded(what, err)) from None
        _check_weights(model, info, what)
        tokenizer = _tokenizer(folder, kwargs)
    return model.eval(), tokenizer


# transformers' message -> what the user should do; the first whose fragment the message holds (lower case)
LOAD_FAILURES = (
    (("unrecognized configuration class", "for this kind of automodel"),
     "its config is of a model transformers' AutoModelForCausalLM does not load (a sub-model's or another task's "
     "config, e.g. an encoder or one part of a composite model); save the causal LM itself, whose config.json "
     "`architectures` names a ...ForCausalLM class"),
    (("does not recognize this architecture", "unrecognized model", "model_type", "gguf model with architecture",
      "not supported", "architecture"),
     "its architecture must be one transformers knows (a decoder-only LM), named by `model_type` in config.json"),
    (("not a valid json",), "a JSON file of the folder (config.json, the shard index) is not valid JSON; re-save the "
                            "model with save_pretrained"),
    (("no file named", "does not appear to have a file"),
     "the folder has no weights: put the model's *.safetensors (and model.safetensors.index.json when sharded) "
     "next to config.json, e.g. with model.save_pretrained(dir)"),
)
CORRUPT = "the weights file is truncated or corrupt (its header, offsets, dtypes or sizes disagree); re-download or "\
          "re-save it"


def _why_not_loaded(what: str, err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    lowered = text.lower()
    way_out = next((hint for fragments, hint in LOAD_FAILURES if any(f in lowered for f in fragments)), CORRUPT)
    return f"cannot load {what} as a causal LM with transformers ({type(err).__name__}: {text[:240]}): {way_out}"


def _check_weights(model, info: dict, what: str) -> None:
    """Refuse weights that would decode garbage silently: a shape that disagrees with the config, a weight the
    file lacks (transformers would initialise it at random), a NaN or infinity."""
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        name, stored, wanted = mismatched[0]
        raise SourceError(f"{what}: weight {name} is stored as {list(stored)} but its config asks for {list(wanted)} "
                          f"({len(mismatched)} weight(s) disagree); the config and the weights belong to different "
                          "models: use the config.json saved with these weights")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise SourceError(f"{what} lacks {len(missing)} weight(s) its config needs ({', '.join(missing[:3])}"
                          f"{', ...' if len(missing) > 3 else ''}): the weights are incomplete (a shard missing?) or "
                          "of another model; re-save or re-download them")
    seen = set()
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point() or (tensor.data_ptr(), tensor.shape) in seen:  # tied: checked once
            continue
        seen.add((tensor.data_ptr(), tensor.shape))
        # a NaN or infinity makes the sum NaN or infinite, so a finite sum clears the tensor in one read of it
        # (isfinite() writes a mask as large as the tensor); only a non-finite sum (or an fp16 sum's overflow) looks
        # at each element
        if not bool(tensor.sum().isfinite()) and not bool(tensor.isfinite().all()):
            bad = int((~tensor.isfinite()).sum())
            raise SourceError(f"{what}: weight {name} holds {bad} NaN or infinite value(s), which reach "
                              "the logits as NaN; the file is corrupt (or the model diverged in training): use "
                              "an intact copy of the weights")


def _tokenizer(folder: Path, kwargs: dict):
    """The source's tokenizer, or None where it has none: transformers may build an empty one from the config
    alone (a Qwen2 folder without tokenizer files gives one that encodes text to nothing, a Gemma2 folder one of 5
    special tokens that encodes any text to <unk>)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    except Exception:  # noqa: BLE001 - no tokenizer files, or unreadable ones: weights still decode token ids
        return None
    try:  # text to ids of its own: not nothing, not only special tokens (<unk>)
        ids = tokenizer("hello", add_special_tokens=False)["input_ids"]
        encodes = any(i not in set(tokenizer.all_special_ids) for i in ids)
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode is none
        encodes = False
    return tokenizer if encodes else None
