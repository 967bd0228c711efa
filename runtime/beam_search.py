"""Beam search over a compiled decoder, as transformers' `generate(num_beams=k)` (one prompt); with do_sample=True
beam sampling: the warpers apply too, and each step draws its continuations instead of taking the best.

    sequences = beam_search(decoder, prompt, settings, max_new_tokens)   # [num_return_sequences][ids], best first

Each step follows transformers' `_beam_search` (generation/utils.py): every running beam's logits go through
log-softmax, then the table's processors (runtime/generation.py, with that beam's ids), plus the beam's running
score; the best `max(2, 1 + eos ids) * k` continuations of all beams are kept (sampling: that many drawn without
replacement from the softmax of all beams' scores, then ordered by score); those that end (an eos id, or the
length) join the finished hypotheses (scored / generated length ** length_penalty), the best k others run on. The
search stops as transformers' does (early_stopping True / False / "never"). Scores are float32 as in torch, with
its -1e9 masks, so the same continuations win (ties between exactly equal scores aside).

The KV cache: one cache state per beam, k in all, each the size of the decoder's one (the memory free is
checked before the second is made). After each step a new beam continues one parent: the first child of a parent
takes the parent's state as it is (no copy); only a second child of the same parent takes a state no child
continues and gets the parent's filled slots copied in (keys and values up to the position; a recurrent mixer's
state whole). So a step costs k decoder steps (batch 1 each) plus one copy of the filled cache per parent's second,
third... child, none where every beam keeps its own parent; the first step copies the prompt's cache k - 1 times.
Beams step through the module's step function with their own caches (`Decoder.own_state`), also where the decoder
has a captured step graph (CUDA), whose graph is recorded on the decoder's single cache.
"""

from __future__ import annotations

import numpy as np

from ..errors import DecodeInputError
from ..ir.decoding import is_kv_cache
from ..ir.types import np_dtype
from ..targets.memory import available_ram_bytes
from .devices import on_host
from .generation import GenerationSettingError, TokenChooser

NEG = np.float32(-1.0e9)  # transformers' mask for a beam that may not run or a hypothesis that may not finish


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k largest scores, largest first (torch.topk's order; equal scores by index)."""
    k = min(k, scores.size)
    part = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
    return part[np.lexsort((part, -scores[part]))]


def _sample(totals: np.ndarray, keep: int, rng: np.random.Generator) -> np.ndarray:
    """Beam sampling's continuations: `keep` indices drawn without replacement from softmax(totals) (transformers'
    torch.multinomial), ordered by score, best first."""
    p = np.exp(totals.astype(np.float64) - totals.max())
    p /= p.sum()
    if np.count_nonzero(p) < keep:
        raise GenerationSettingError(f"beam sampling draws {keep} continuations a step (max(2, 1 + eos ids) x "
                                     f"num_beams) and the warpers leave {np.count_nonzero(p)} with any probability: "
                                     "raise top_k / top_p, or give fewer beams")
    drawn = rng.choice(p.size, size=keep, replace=False, p=p)
    return drawn[np.argsort(-totals[drawn], kind="stable")]


def check_beams(settings: dict) -> None:
    """Beam settings transformers would refuse: one clear error."""
    k, returned = settings["num_beams"], settings["num_return_sequences"]
    if returned > k:
        raise GenerationSettingError(f"num_return_sequences={returned} asks for more sequences than num_beams={k} "
                                     "keeps; give num_return_sequences <= num_beams")


def beam_search(decoder, prompt: np.ndarray, settings: dict, max_new_tokens: int) -> list[list[int]]:
    """The best `num_return_sequences` sequences (prompt + new ids), best first, as transformers' beam search."""
    k, eos = settings["num_beams"], tuple(decoder.spec.eos_token_ids)
    prompt_length, length_penalty, early = prompt.shape[1], settings["length_penalty"], settings["early_stopping"]
    max_length = prompt_length + max_new_tokens
    chooser = TokenChooser(settings, prompt_length, max_new_tokens, eos)
    keep = max(2, 1 + len(eos)) * k

    first = decoder.prefill(prompt, decoder.own_state())
    _check_memory(decoder, k, first)
    states = [first] * k  # every beam starts from the prompt: one state until the first step picks the children
    running = [list(prompt[0])] * k
    running_scores = np.full(k, NEG, np.float32)
    running_scores[0] = 0
    finished = [list(prompt[0])] * k
    finished_scores = np.full(k, NEG, np.float32)
    finished_done = np.zeros(k, bool)
    improvable = True
    while True:
        cur_len = len(running[0])
        log_probs = np.stack([chooser.process(_log_softmax(s.logits.astype(np.float32)), ids)
                              for s, ids in zip(states, running)])
        vocab = log_probs.shape[1]
        totals = (log_probs + running_scores[:, None]).reshape(-1)
        picked = _top(totals, keep) if chooser.rng is None else _sample(totals, keep, chooser.rng)
        scores, parents, tokens = totals[picked], picked // vocab, picked % vocab
        ends = np.array([t in eos or cur_len + 1 >= max_length for t in tokens.tolist()])

        # the best k that did not end run on (an ended one only where fewer than k did not: score - 1e9)
        runs = _top(scores + ends.astype(np.float32) * NEG, k)
        # the top k that ended join the finished hypotheses where they beat them
        candidate = scores / np.float32((cur_len + 1 - prompt_length) ** length_penalty)
        candidate += np.float32(finished_done.all() and early is True) * NEG + np.float32(not improvable) * NEG
        just_done = ends & (np.arange(scores.size) < k)
        candidate += (~just_done).astype(np.float32) * NEG
        merged = _top(np.concatenate([finished_scores, candidate]), k)
        pool = finished + [running[p] + [int(t)] for p, t in zip(parents.tolist(), tokens.tolist())]
        finished = [pool[i] for i in merged]
        finished_scores = np.concatenate([finished_scores, candidate])[merged]
        finished_done = np.concatenate([finished_done, just_done])[merged]

        running_scores = (scores + ends.astype(np.float32) * NEG)[runs]
        improvable = improvable and _improvable(running_scores[0], finished_scores, finished_done, cur_len + 1,
                                                max_length, prompt_length, early, length_penalty)
        if not improvable or (finished_done.all() and early is True) or ends.all():
            break
        running = [running[p] + [int(t)] for p, t in zip(parents[runs].tolist(), tokens[runs].tolist())]
        states = _reorder(decoder, states, parents[runs].tolist())
        states = [decoder.step(ids[-1], state)[1] for state, ids in zip(states, running)]
    return finished[:settings["num_return_sequences"]]


def _improvable(best_running, finished_scores, finished_done, cur_len, max_length, prompt_length, early,
                length_penalty) -> bool:
    """transformers' `_check_early_stop_heuristic` for one prompt: can the best running beam still beat the worst
    finished hypothesis (all k finished, else yes)?"""
    if early == "never" and length_penalty > 0.0:
        length = max_length - prompt_length
    else:
        length = cur_len - prompt_length
    best = best_running / np.float32(length ** length_penalty)
    worst = np.where(finished_done, finished_scores.min(), NEG)
    return bool((best > worst).any())


def _reorder(decoder, states: list, parents: list[int]) -> list:
    """The states of the new beams, the i-th continuing `states[parents[i]]`: a parent's first child takes its
    state, a further child a state no child continues (or a new one) with the parent's filled cache copied in."""
    taken, extra = set(), []
    new = [None] * len(parents)
    for i, p in enumerate(parents):
        if id(states[p]) not in taken:
            taken.add(id(states[p]))
            new[i] = states[p]
        else:
            extra.append(i)
    free = [s for s in {id(s): s for s in states}.values() if id(s) not in taken]
    for i in extra:  # copies first, before any step writes into a parent's cache
        target = free.pop() if free else decoder.own_state()
        new[i] = copy_state(decoder, states[parents[i]], target)
    return new


def copy_state(decoder, source, target):
    """`target` (an own state) made to continue where `source` is: on the CPU, keys and values copied up to the
    position (the slots past it are zero in both: states decoded side by side share their position), a recurrent
    mixer's state whole; on another device each cache tensor whole."""
    for (name, shape), src, dst in zip(decoder.spec.caches, source.caches, target.caches):
        if on_host(src.device) and is_kv_cache(name) and len(shape) == 4:
            np.from_dlpack(dst)[:, :, :source.position] = np.from_dlpack(src)[:, :, :source.position]
        else:
            dst.copyfrom(src)
    target.position, target.tokens, target.logits = source.position, list(source.tokens), source.logits
    return target


def cache_bytes(decoder) -> int:
    """The bytes of one state's cache."""
    sizes = {name: np.dtype(np_dtype(t.dtype)).itemsize for name, t in decoder.module.inputs}
    return sum(int(np.prod(shape)) * sizes.get(name, 4) for name, shape in decoder.spec.caches)


def free_memory(state) -> int:
    """The bytes free on the device holding `state`'s cache (0: unknown): MemAvailable on the CPU."""
    device = state.caches[0].device if state.caches else None
    if device is None:
        return 0
    if not on_host(device):
        return int(getattr(device, "available_global_memory", 0) or 0)
    return available_ram_bytes()


def _check_memory(decoder, k: int, first) -> None:
    """k caches must fit: the k - 1 beyond the first one's in the memory free on its device."""
    need, free = (k - 1) * cache_bytes(decoder), free_memory(first)
    if free and need > free:
        raise DecodeInputError(f"num_beams={k} needs {k} KV caches of {cache_bytes(decoder) / 2**20:.1f} MiB "
                               f"({need / 2**20:.0f} MiB beyond the first) and the device has {free / 2**20:.0f} MiB "
                               "free; give fewer beams or compile with a smaller max_seq")
