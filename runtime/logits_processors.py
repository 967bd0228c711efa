"""The logits processors and warpers of transformers' generate (generation/logits_process.py), in numpy, for one
sequence: each is `(logits [V] float32, Context, value) -> logits` and returns the processed logits (a copy where it
changes them). runtime/generation.py lists them in transformers' order, with their checks and neutral values.

Each follows its transformers class step for step (same float32 arithmetic, -inf where it puts -inf), so greedy
decoding over the processed logits picks the token transformers' generate(do_sample=False) picks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEG_INF = np.float32(-np.inf)


@dataclass(frozen=True)
class Context:
    """What a processor reads besides the logits: the ids so far (prompt + generated), the prompt's length, the
    length generation ends at (prompt + max_new_tokens: transformers' max_length), the end-of-sequence ids, and the
    length at which begin_suppress_tokens applies (transformers' begin_index)."""

    ids: np.ndarray  # int64 [n]
    prompt_length: int
    max_length: int
    eos_ids: tuple[int, ...]
    begin_index: int


def _masked(logits: np.ndarray, tokens, fill=NEG_INF) -> np.ndarray:
    """`logits` with the in-vocabulary ids among `tokens` set to `fill` (ids past the logits cannot be drawn)."""
    tokens = np.asarray([t for t in tokens if 0 <= t < logits.shape[-1]], np.int64)
    out = logits.copy()
    out[tokens] = fill
    return out


def sequence_bias(logits, ctx: Context, biases) -> np.ndarray:
    """SequenceBiasLogitsProcessor: each [ids, bias] adds bias to its last id where the ids so far end with the rest
    (a one-id sequence: always); the biases are summed first, then added, as transformers does."""
    bias = np.zeros_like(logits)
    for sequence, value in biases:
        *prefix, last = sequence
        if len(prefix) > ctx.ids.shape[0]:
            continue
        if not prefix:
            bias[last] = value  # length-1 biases are assigned, longer ones accumulated (index_add)
        elif np.array_equal(ctx.ids[len(ctx.ids) - len(prefix):], prefix):
            bias[last] += np.float32(value)
    return logits + bias


def bad_words(logits, ctx: Context, bad_words_ids) -> np.ndarray:
    """NoBadWordsLogitsProcessor: a sequence bias of -inf for each banned sequence, except a lone eos id."""
    banned = [[ids, float("-inf")] for ids in bad_words_ids if not (len(ids) == 1 and ids[0] in ctx.eos_ids)]
    return sequence_bias(logits, ctx, banned) if banned else logits


def repetition_penalty(logits, ctx: Context, penalty) -> np.ndarray:
    """RepetitionPenaltyLogitsProcessor: each id seen so far (prompt included) divided by the penalty where its
    logit is positive, multiplied where negative."""
    seen = np.unique(ctx.ids[ctx.ids < logits.shape[-1]])
    out = logits.copy()
    score = out[seen]
    out[seen] = np.where(score < 0, score * np.float32(penalty), score / np.float32(penalty))
    return out


def no_repeat_ngram(logits, ctx: Context, n) -> np.ndarray:
    """NoRepeatNGramLogitsProcessor: ban each id that would complete an n-gram already in the ids so far."""
    ids = ctx.ids
    if ids.shape[0] < n:
        return logits
    prefix = ids[ids.shape[0] + 1 - n:]
    windows = np.lib.stride_tricks.sliding_window_view(ids, n)
    return _masked(logits, windows[(windows[:, :-1] == prefix).all(axis=1), -1])


def min_length(logits, ctx: Context, n) -> np.ndarray:
    """MinLengthLogitsProcessor: no eos id before `n` ids in all (prompt included)."""
    return _masked(logits, ctx.eos_ids) if ctx.ids.shape[0] < n else logits


def min_new_tokens(logits, ctx: Context, n) -> np.ndarray:
    """MinNewTokensLengthLogitsProcessor: no eos id before `n` generated ids."""
    return _masked(logits, ctx.eos_ids) if ctx.ids.shape[0] - ctx.prompt_length < n else logits


def _forced(logits, tokens) -> np.ndarray:
    out = np.full_like(logits, NEG_INF)
    out[np.asarray(tokens, np.int64)] = 0
    return out


def forced_bos(logits, ctx: Context, token) -> np.ndarray:
    """ForcedBOSTokenLogitsProcessor: after a one-id prompt, only `token` (logit 0, the rest -inf)."""
    return _forced(logits, [token]) if ctx.ids.shape[0] == 1 else logits


def forced_eos(logits, ctx: Context, tokens) -> np.ndarray:
    """ForcedEOSTokenLogitsProcessor: the last token generation has room for is one of `tokens`."""
    return _forced(logits, tokens) if ctx.ids.shape[0] == ctx.max_length - 1 else logits


def remove_invalid(logits, ctx: Context, _on) -> np.ndarray:
    """InfNanRemoveLogitsProcessor: NaN -> 0, +-inf -> the dtype's largest finite value of that sign."""
    info = np.finfo(logits.dtype)
    return np.nan_to_num(logits, nan=0.0, posinf=info.max, neginf=info.min)


def suppress(logits, ctx: Context, tokens) -> np.ndarray:
    """SuppressTokensLogitsProcessor: these ids never."""
    return _masked(logits, tokens)


def suppress_at_begin(logits, ctx: Context, tokens) -> np.ndarray:
    """SuppressTokensAtBeginLogitsProcessor: these ids not as the first generated token."""
    return _masked(logits, tokens) if ctx.ids.shape[0] == ctx.begin_index else logits


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


# -- warpers (sampling only) --------------------------------------------------------------------------------------
def temperature(logits, ctx: Context, t) -> np.ndarray:
    """TemperatureLogitsWarper."""
    return logits / np.float32(t)


def top_k(logits, ctx: Context, k) -> np.ndarray:
    """TopKLogitsWarper: only ids at least as likely as the k-th most likely."""
    kth = np.sort(logits)[-min(k, logits.shape[-1])]
    return np.where(logits < kth, NEG_INF, logits)


def top_p(logits, ctx: Context, p) -> np.ndarray:
    """TopPLogitsWarper: the most likely ids whose probabilities sum to p (at least one)."""
    order = np.argsort(logits, kind="stable")
    remove = np.cumsum(_softmax(logits[order])) <= 1 - p
    remove[-1] = False
    out = logits.copy()
    out[order[remove]] = NEG_INF
    return out


def min_p(logits, ctx: Context, p) -> np.ndarray:
    """MinPLogitsWarper: only ids at least p times as likely as the most likely one."""
    probs = _softmax(logits)
    remove = probs < np.float32(p) * probs.max()
    remove[np.argmax(probs)] = False
    return np.where(remove, NEG_INF, logits)


def renormalize(logits, ctx: Context, _on) -> np.ndarray:
    """LogitNormalization: log-softmax (last, after any warper)."""
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())
