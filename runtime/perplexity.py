"""Perplexity of a compiled decoder, scored by its own compiled steps: what a threshold, predictor or quantized
build costs in quality on the user's text, measured on the artifact that will run, not on a torch simulation.

    result = lm.perplexity("notes.txt")          # or text, or token ids; windows of `window` tokens
    result.perplexity, result.tokens             # exp(mean negative log-likelihood), tokens scored

Each window is teacher-forced on its own from an empty cache: its first token is the prompt, and every later token
is scored by the logits of the step before it (a window of n tokens scores n - 1). Windows cut from text start with
the BOS token where the model's tokenizer puts one in front of a text (Gemma, Llama; not SmolLM2's), as the model
sees text in use and llama.cpp's perplexity scores it (Gemma 3 without it: 4-5x the perplexity); token ids are
taken as given. The steps are
the ones `generate` runs (the same compiled functions), so the figure holds for decoding; the dense twin of the
same build (`runtime/bench.dense_twin`) on the same windows gives the cost of the sparse mode
(`actsparse perplexity OUT --against-dense`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ActsparseError
from ..passes.calibration_data import bos_prefix

WINDOW, WINDOWS = 256, 8   # default: this many windows of this many tokens (max_seq at most)


@dataclass(frozen=True)
class Perplexity:
    """Summed negative log-likelihood (nats) over the scored tokens of `windows` windows, and the scoring's time."""

    nll: float
    tokens: int
    windows: int
    seconds: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return (f"perplexity {self.perplexity:.4f} ({self.nll / self.tokens:.4f} nats/token) over {self.tokens} "
                f"tokens in {self.windows} window(s), {self.tokens_per_second:.1f} tokens/s")


def token_windows(lm, source, window: int = WINDOW, windows: int = WINDOWS) -> list[np.ndarray]:
    """`source` -> up to `windows` token windows [1, window] (the last may be shorter, at least 2 tokens).

    `source`: token ids ([n] or [1, n]), text, a text file's path or a list of paths (text needs the decoder's
    tokenizer). `window` is capped at the decoder's max_seq."""
    if window < 2 or windows < 1:
        raise ActsparseError(f"perplexity needs window >= 2 and windows >= 1 (got window={window}, "
                             f"windows={windows})")
    window = min(window, lm.max_seq)
    prefix = _bos_prefix(lm, source)
    step = window - prefix.size
    ids = _ids(lm, source, step * windows)
    if ids.size + prefix.size < 2:
        raise ActsparseError(f"the text gives {ids.size} token(s); scoring needs at least 2: give more text")
    cuts = range(0, min(ids.size, step * windows), step)
    return [lm._ids(np.concatenate([prefix, ids[s:s + step]])) for s in cuts
            if prefix.size + ids[s:s + step].size >= 2]


def _bos_prefix(lm, source) -> np.ndarray:
    """[BOS] where `source` is text (a string or files) and the decoder's tokenizer begins a text with its BOS token,
    else no token."""
    return np.asarray(bos_prefix(lm.tokenizer) if _is_text(source) else [], np.int64)


def _is_text(source) -> bool:
    """A string (text or a file's path), a path, or a list of paths."""
    return isinstance(source, (str, Path)) or (isinstance(source, (list, tuple)) and bool(source)
                                               and all(isinstance(p, (str, Path)) for p in source))


def _ids(lm, source, wanted: int) -> np.ndarray:
    if isinstance(source, (list, tuple)) and source and all(isinstance(p, (str, Path)) for p in source) \
            or isinstance(source, Path) or isinstance(source, str) and _is_file(source):
        paths = [source] if isinstance(source, (str, Path)) else list(source)
        source = "\n\n".join(_read(p) for p in paths)
    if isinstance(source, str):
        if lm.tokenizer is None:
            raise ActsparseError("scoring text needs the model's tokenizer and this decoder has none: give token ids, "
                                 "or build it from a folder with the tokenizer's files")
        # the text's first `wanted` tokens are enough: tokenize a prefix long enough for them (16 characters a
        # token is far above any tokenizer's average) rather than a whole book
        return np.asarray(lm.tokenizer(source[:max(64, 16 * wanted)], add_special_tokens=False)["input_ids"],
                          np.int64)[:wanted]
    return lm._ids(source).reshape(-1)


def _is_file(text: str) -> bool:
    try:
        return len(text) < 4096 and "\n" not in text and Path(text).is_file()
    except OSError:  # a name too long for the file system: text, not a path
        return False


def _read(path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise ActsparseError(f"cannot read text {path}: {err.strerror}") from None


def score(lm, windows: list[np.ndarray], progress: bool = True) -> Perplexity:
    """The summed negative log-likelihood of every window's tokens after its first, each window from an empty cache
    through `lm.prefill` (its first token) and `lm.step` (teacher-forced), with a progress bar over the tokens."""
    from tqdm.auto import tqdm

    nll, scored = 0.0, 0
    start = time.perf_counter()
    with tqdm(total=sum(w.shape[1] - 1 for w in windows), desc="score", unit="tok",
              disable=not progress or None) as bar:
        for ids in windows:
            state = lm.prefill(ids[:, :1])
            logits = state.logits
            for t in range(1, ids.shape[1]):
                nll += _nll(logits, int(ids[0, t]))
                scored += 1
                if t + 1 < ids.shape[1]:
                    logits, state = lm.step(ids[:, t:t + 1], state)
            bar.update(ids.shape[1] - 1)
    return Perplexity(nll, scored, len(windows), time.perf_counter() - start)


def _nll(logits: np.ndarray, token: int) -> float:
    """-log softmax(logits)[token], in float64 (a vocabulary of 262k float32 logits loses digits in the sum)."""
    z = np.asarray(logits, np.float64).reshape(-1)
    if not np.isfinite(z[token]):
        raise ActsparseError(f"the model's logit of token {token} is {z[token]}: the compiled model overflowed; "
                             "build it with a wider dtype (no --quantize fp16)")
    top = z.max()
    return float(top + np.log(np.exp(z - top).sum()) - z[token])
