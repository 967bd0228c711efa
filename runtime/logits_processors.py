"""The logits processors and warpers of transformers' generate (generation/logits_process.py), in numpy, for one
sequence: each is `(logits [V] float32, Context, value) -> logits`, changing `logits` in place where it can (the
chooser passes its own copy) and returning the processed logits. runtime/generation.py lists them in transformers'
order, with their checks and neutral values.

Each computes what its transformers class computes (same float32 arithmetic, -inf where it puts -inf), so greedy
decoding over the processed logits picks the token transformers' generate(do_sample=False) picks. They touch only
the entries they change, and the warpers only the entries still finite (after top_k, a handful), so a step at a
150k vocabulary pays a few passes over the logits, not a sort of them (benchmarks/generation_cost.py).
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
    tokens = np.asarray(tokens, np.int64)
    logits[tokens[(tokens >= 0) & (tokens < logits.shape[-1])]] = fill
    return logits


def sequence_bias(logits, ctx: Context, biases) -> np.ndarray:
    """SequenceBiasLogitsProcessor: each [ids, bias] adds bias to its last id where the ids so far end with the rest
    (a one-id sequence: always). As transformers: one bias per id, the one-id sequences' assigned first, the longer
    ones' summed onto it (in float32), then added to the logits."""
    bias: dict[int, np.float32] = {}
    for sequence, value in sorted(biases, key=lambda b: len(b[0]) > 1):  # one-id sequences first (stable)
        *prefix, last = sequence
        if not prefix:
            bias[last] = np.float32(value)
        elif len(prefix) <= ctx.ids.shape[0] and np.array_equal(ctx.ids[len(ctx.ids) - len(prefix):], prefix):
            bias[last] = bias.get(last, np.float32(0)) + np.float32(value)
    for token, value in bias.items():
        logits[token] += value
    return logits


def bad_words(logits, ctx: Context, bad_words_ids) -> np.ndarray:
    """NoBadWordsLogitsProcessor: a sequence bias of -inf for each banned sequence, except a lone eos id."""
    banned = [[ids, float("-inf")] for ids in bad_words_ids if not (len(ids) == 1 and ids[0] in ctx.eos_ids)]
    return sequence_bias(logits, ctx, banned) if banned else logits


def repetition_penalty(logits, ctx: Context, penalty) -> np.ndarray:
    """RepetitionPenaltyLogitsProcessor: each id seen so far (prompt included) divided by the penalty where its
    logit is positive, multiplied where negative."""
    seen = np.unique(ctx.ids[ctx.ids < logits.shape[-1]])
    score = logits[seen]
    logits[seen] = np.where(score < 0, score * np.float32(penalty), score / np.float32(penalty))
    return logits


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


def _finite(logits: np.ndarray) -> np.ndarray:
    """The ids whose logit is not -inf: the only ones a warper can still remove (exp(-inf) is 0 in any softmax)."""
    return np.flatnonzero(logits > NEG_INF)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


# -- warpers (sampling only) --------------------------------------------------------------------------------------
def temperature(logits, ctx: Context, t) -> np.ndarray:
    """TemperatureLogitsWarper."""
    logits /= np.float32(t)
    return logits


def top_k(logits, ctx: Context, k) -> np.ndarray:
    """TopKLogitsWarper: only ids at least as likely as the k-th most likely."""
    k = min(k, logits.shape[-1])
    kth = np.partition(logits, logits.shape[-1] - k)[logits.shape[-1] - k]
    logits[logits < kth] = NEG_INF
    return logits


def top_p(logits, ctx: Context, p) -> np.ndarray:
    """TopPLogitsWarper: the most likely ids whose probabilities sum to p (at least one)."""
    keep = _finite(logits)
    if keep.size:
        order = keep[np.argsort(logits[keep], kind="stable")]
        remove = np.cumsum(_softmax(logits[order])) <= 1 - p
        remove[-1] = False
        logits[order[remove]] = NEG_INF
    return logits


def min_p(logits, ctx: Context, p) -> np.ndarray:
    """MinPLogitsWarper: only ids at least p times as likely as the most likely one."""
    keep = _finite(logits)
    if keep.size:
        probs = _softmax(logits[keep])
        remove = probs < np.float32(p) * probs.max()
        remove[np.argmax(probs)] = False
        logits[keep[remove]] = NEG_INF
    return logits


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def typical_p(logits, ctx: Context, mass) -> np.ndarray:
    """TypicalLogitsWarper: the ids whose surprise is closest to the entropy, up to probability `mass` (at least
    one)."""
    keep = _finite(logits)
    if keep.size:
        normalized = _log_softmax(logits[keep])
        entropy = -(normalized * np.exp(normalized)).sum()
        shifted = np.abs(-normalized - entropy)
        order = np.argsort(shifted, kind="stable")
        last = min(int((np.cumsum(_softmax(logits[keep][order])) < np.float32(mass)).sum()), keep.size - 1)
        remove = shifted[order] > shifted[order][last]
        remove[0] = False
        logits[keep[order[remove]]] = NEG_INF
    return logits


def _below(logits: np.ndarray, keep: np.ndarray, probs: np.ndarray, cutoff) -> np.ndarray:
    """`logits` with the ids of `keep` whose probability is under `cutoff` removed, except the most likely one."""
    remove = (probs < cutoff) & (logits[keep] < logits[keep].max())
    logits[keep[remove]] = NEG_INF
    return logits


def epsilon_cutoff(logits, ctx: Context, epsilon) -> np.ndarray:
    """EpsilonLogitsWarper: only ids of probability >= epsilon (and the most likely one)."""
    keep = _finite(logits)
    return _below(logits, keep, _softmax(logits[keep]), np.float32(epsilon)) if keep.size else logits


def eta_cutoff(logits, ctx: Context, epsilon) -> np.ndarray:
    """EtaLogitsWarper: only ids of probability >= min(epsilon, sqrt(epsilon) * exp(-entropy)) (and the most likely)."""
    keep = _finite(logits)
    if not keep.size:
        return logits
    normalized = _log_softmax(logits[keep])
    probs = np.exp(normalized)
    entropy = -(probs * normalized).sum()
    eta = min(np.float32(epsilon), np.sqrt(np.float32(epsilon)) * np.exp(-entropy))
    return _below(logits, keep, probs, eta)


def renormalize(logits, ctx: Context, _on) -> np.ndarray:
    """LogitNormalization: log-softmax (last, after any warper)."""
    return _log_softmax(logits)


def draw(logits: np.ndarray, rng: np.random.Generator) -> int | None:
    """A token drawn with probability softmax(logits) (None where every logit is -inf): over the finite ids only."""
    keep = _finite(logits)
    if not keep.size:
        return None
    cumulative = np.cumsum(np.exp(logits[keep].astype(np.float64) - logits[keep].max()))
    return int(keep[min(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"), keep.size - 1)])
