"""A conversation with a decoder that keeps its KV cache from one turn to the next.

    chat = Chat(lm, system="Answer in one sentence.", max_new_tokens=128)
    reply = chat.send("What is the capital of France?", on_text=lambda piece: print(piece, end=""))
    reply = chat.send("And of Italy?")       # only the tokens the cache does not hold yet are fed
    chat.last                                # Turn: reply, new tokens, decode seconds, prompt tokens, reused

Each turn renders the whole history through the tokenizer's chat template (`Decoder.chat_ids`), so the prompt is
exactly what a fresh `chat(messages)` would see, and generates as `generate_text` does. The cache of the last turn
already holds most of it: the earlier turns and the reply's tokens (all but the last, never fed). The new prompt's
longest common prefix with the tokens the cache holds is kept and only the rest is fed, its last token at least
(its logits choose the reply's first token). Where the reply re-tokenizes otherwise than it was generated, or the
template renders an earlier turn differently once a later one follows, the common prefix ends earlier: the cache
is rolled back to it by moving its position (attention reads only the slots before the position; later ones are
overwritten), which holds for key/value caches and for a decoder that recomputes (its tokens are cut). A decoder
with a state that is not keys and values by position (Mamba's recurrent state) cannot roll back: it feeds the
whole prompt again whenever the history was not kept as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..ir.decoding import is_kv_cache
from .generation import check_settings


@dataclass(frozen=True)
class Turn:
    """What the last `send` did."""

    reply: str
    tokens: int  # new tokens
    seconds: float  # decoding after the prompt's prefill
    prompt_tokens: int  # the whole history through the template
    reused: int  # of those, what the cache held from the turn before


class Chat:
    """Turns of a conversation with one decoder (see the module docstring)."""

    def __init__(self, decoder, system: str | None = None, max_new_tokens: int | None = None, **settings):
        check_settings(settings, decoder.spec.vocab_size)  # a bad setting before the first turn
        self.decoder, self.max_new_tokens, self.settings = decoder, max_new_tokens, settings
        self.messages = [{"role": "system", "content": system}] if system else []
        self.last: Turn | None = None
        self._state = None  # the cache after the last turn (None: none to continue, e.g. after beams)
        self._rolls_back = decoder.recomputes or all(is_kv_cache(name) for name, _ in decoder.spec.caches)

    def send(self, text: str, on_text=None) -> str:
        """The assistant's reply to the user's `text` (streamed to `on_text(piece)` as it is decoded)."""
        messages = [*self.messages, {"role": "user", "content": text}]
        ids = self.decoder.chat_ids(messages)
        held, self._state = self._state, None  # a turn that fails leaves no half-fed cache behind
        reused = [0]

        def prefill(prompt: np.ndarray):
            state, reused[0] = self._continue(held, prompt)
            return state

        reply, tokens, seconds, state = self.decoder.text_after(ids, self.max_new_tokens, on_text, prefill=prefill,
                                                                **self.settings)
        self.messages = [*messages, {"role": "assistant", "content": reply}]
        self._state = state
        self.last = Turn(reply, tokens, seconds, ids.shape[1], reused[0])
        return reply

    def _continue(self, held, prompt: np.ndarray):
        """(a state holding `prompt` with its last token's logits, how many of its tokens `held` had already)."""
        ids = prompt[0].tolist()
        keep = 0 if held is None else min(len(os.path.commonprefix([held.tokens, ids])), len(ids) - 1)
        if keep < (len(held.tokens) if held is not None else 0) and not self._rolls_back:
            keep = 0
        if keep == 0:
            return self.decoder.prefill(prompt), 0
        held.position = keep  # the slots from here on are written again (module docstring)
        del held.tokens[keep:]
        return self.decoder.prefill(prompt[:, keep:], held), keep
