"""Where decoders come from: a local Hugging Face folder, a GGUF file, or a transformers causal LM object.

    model, tokenizer = load_causal_lm("path/to/dir")        # config.json + *.safetensors (+ tokenizer files)
    model, tokenizer = load_causal_lm("path/to/model.gguf") # transformers dequantizes it (gguf package)
    model, tokenizer = load_causal_lm(causal_lm)             # its tokenizer: None (pass one to compile)

Everything loads from local files only (`local_files_only`, HF_HUB_OFFLINE): nothing is downloaded. Weights come
as float32 (the frontend's dtype). Each failure is one `SourceError` naming the file and the way out.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

from .errors import FrontendError


class SourceError(FrontendError):
    """A model source that cannot be loaded: no such path, no config.json, an architecture transformers lacks."""


def is_decoder_source(model) -> bool:
    """A path to a folder or a .gguf file, or a transformers model that can generate."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        return path.is_dir() or path.suffix.lower() == ".gguf"
    is_transformers = any(c.__module__.startswith("transformers.") for c in type(model).__mro__)
    return is_transformers and hasattr(model, "generate") and hasattr(model, "config")


def load_causal_lm(source):
    """(model in eval mode and float32, tokenizer or None) from any decoder source."""
    if not isinstance(source, (str, os.PathLike)):
        return source.float().eval(), None
    path = Path(source)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise SourceError(f"{path}: no such GGUF file")
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"local_files_only": True, **extra}
    with _offline(), quiet_transformers():
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs)
        except (ValueError, KeyError, OSError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SourceError(f"cannot load {what} as a causal LM with transformers: {first}. Its architecture "
                              "must be one transformers knows (a decoder-only LM)") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
        except (ValueError, KeyError, OSError, TypeError):
            tokenizer = None  # weights without tokenizer files still decode token ids
    return model.eval(), tokenizer
