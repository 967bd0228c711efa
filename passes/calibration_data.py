"""Calibration data from real text: tokenized windows from files, cached on disk for reuse.

    windows = text_windows(["notes.txt"], tokenizer, window=256, max_windows=16)   # [(ids[1, 256],), ...]
    actsparse.compile(model, ..., mode="threshold", calibration=windows, sparsity=0.5)

Files are read as UTF-8 text, tokenized with the model's own (transformers) tokenizer, and cut into
non-overlapping windows of `window` tokens (the tail shorter than a window is dropped). Where the tokenizer begins
every text with its BOS token (Gemma, Llama; not SmolLM2), each window begins with it too: the model never sees a
text without it, and its first position without one is an attention sink the thresholds would be fitted to.
Results are cached as safetensors (arrays) plus json (what they were made from) under `cache_dir` (default
$ACTSPARSE_CACHE or ~/.cache/actsparse), keyed by a SHA-256 of every input that changes them — the files'
bytes, the tokenizer's vocabulary, the window and count — so a changed file or tokenizer never reuses a stale
entry, and nothing is unpickled. `cached_arrays` is the same cache for any named arrays (e.g. collected
activations), keyed by the caller's description of its inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .sparsity_methods import CalibrationError


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("ACTSPARSE_CACHE") or Path.home() / ".cache" / "actsparse")


def digest(*parts) -> str:
    """SHA-256 over parts: bytes, numpy arrays (dtype, shape, data) or anything json can write."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(f"{p.dtype}{p.shape}".encode())
            h.update(np.ascontiguousarray(p).tobytes())
        elif isinstance(p, (bytes, bytearray)):
            h.update(p)
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def cached_arrays(kind: str, key: str, compute: Callable[[], dict[str, np.ndarray]], meta: dict | None = None,
                  directory=None) -> dict[str, np.ndarray]:
    """`compute()` once per key: later calls load `<dir>/<kind>/<key>.safetensors` (written atomically)."""
    from safetensors.numpy import load_file, save_file

    folder = cache_dir(directory) / kind
    path = folder / f"{key}.safetensors"
    if path.exists():
        return load_file(str(path))
    arrays = {k: np.ascontiguousarray(v) for k, v in compute().items()}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(arrays, str(tmp))
    os.replace(tmp, path)   # nothing half-written under the final name
    (folder / f"{key}.json").write_text(json.dumps(meta or {}, indent=1, default=str))
    return arrays


def bos_prefix(tokenizer) -> list[int]:
    """[BOS] where `tokenizer` puts its BOS token in front of every text it encodes, else []."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if tokenizer is None or bos is None:
        return []
    return [bos] if tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos] else []


def _tokenizer_identity(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    return digest(type(tokenizer).__name__, sorted(vocab.items()))


def text_windows(paths: Sequence[str | os.PathLike] | str, tokenizer, window: int = 256, max_windows: int = 16,
                 start_char: int = 0, end_char: int | None = None, directory=None,
                 progress: bool = True) -> list[tuple[np.ndarray]]:
    """Calibration inputs from text files: up to `max_windows` windows of `window` token ids each (the first the
    BOS where the tokenizer puts one in front of a text), [(ids,), ...].

    `start_char` / `end_char` select a part of the concatenated text (e.g. calibrate on one part of a file and
    evaluate on another). Raises CalibrationError when the text gives no full window.
    """
    from tqdm.auto import tqdm

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise CalibrationError("no calibration text files given")
    raw = []
    for p in paths:
        try:
            raw.append(Path(p).read_bytes())
        except OSError as err:
            raise CalibrationError(f"cannot read calibration text {p}: {err.strerror}") from None
    prefix = bos_prefix(tokenizer)
    if window <= len(prefix):
        raise CalibrationError(f"a calibration window of {window} token(s) leaves no room for text after the "
                               f"tokenizer's BOS: give a window of at least {len(prefix) + 1}")
    step = window - len(prefix)   # text tokens a window holds
    key = digest(*raw, _tokenizer_identity(tokenizer), window, max_windows, start_char, end_char, prefix)

    def tokenize() -> dict[str, np.ndarray]:
        text = "\n\n".join(r.decode("utf-8", errors="replace") for r in raw)[start_char:end_char]
        ids: list[int] = []
        chunk = 20_000   # tokenize in pieces so the bar moves and memory stays flat
        for i in tqdm(range(0, len(text), chunk), desc="tokenize", unit="chunk", disable=not progress or None):
            ids.extend(tokenizer(text[i:i + chunk], add_special_tokens=False)["input_ids"])
            if len(ids) >= step * max_windows:
                break
        n = min(len(ids) // step, max_windows)
        text_ids = np.asarray(ids[:n * step], np.int64).reshape(n, step)
        return {"ids": np.concatenate([np.tile(np.asarray(prefix, np.int64), (n, 1)), text_ids], axis=1)}

    ids = cached_arrays("windows", key, tokenize, {"files": [str(p) for p in paths], "window": window,
                                                   "max_windows": max_windows}, directory)["ids"]
    if len(ids) == 0:
        raise CalibrationError(f"calibration text {', '.join(map(str, paths))} is shorter than one window of "
                               f"{step} tokens: give more text or a smaller window")
    return [(row[None, :],) for row in ids]
