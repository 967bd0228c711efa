"""Text in and out of a decoder (runtime/decoder.py): a prompt through the tokenizer, a chat turn through its chat
template, the new text streamed piece by piece as it is decoded, and conversations that keep the KV cache between
turns (runtime/chat.py). A mixin of `Decoder`: it reads the decoder's `tokenizer` and generates with its `_decode`.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DecodeInputError
from .decode_state import DecodeState


class TextGeneration:
    """`Decoder`'s text methods (see the module docstring)."""

    def generate_text(self, prompt: str, max_new_tokens: int | None = None, on_text=None,
                      **settings) -> tuple[str, int, float]:
        """Tokenize `prompt`, generate as `generate`; returns (new text, new tokens, decode seconds after prefill)
        of the (best) sequence. `on_text(piece)`: called with each new piece of text as it is decoded (streaming;
        beam search calls it once, at the end, with the whole text)."""
        tokenizer = self._tokenizer_for("generate_text()", "pass token ids to generate()")
        prompt_ids = np.array([tokenizer(prompt)["input_ids"]], np.int64).reshape(1, -1)
        if prompt_ids.size == 0:
            raise DecodeInputError(f"the prompt {prompt!r} encodes to no tokens; give a prompt with text in it")
        return self.text_after(prompt_ids, max_new_tokens, on_text, **settings)[:3]

    def chat(self, messages, max_new_tokens: int | None = None, on_text=None, **settings) -> tuple[str, int, float]:
        """One assistant turn: `messages` (the user's text, or [{"role": ..., "content": ...}, ...]) through the
        tokenizer's chat template with the assistant's generation prompt, then as `generate_text`; returns (the
        reply, new tokens, decode seconds after prefill)."""
        return self.text_after(self.chat_ids(messages), max_new_tokens, on_text, **settings)[:3]

    def start_chat(self, system: str | None = None, max_new_tokens: int | None = None, **settings):
        """A conversation that keeps this decoder's KV cache between turns: `.send(text)` (runtime/chat.py)."""
        from .chat import Chat

        return Chat(self, system, max_new_tokens, **settings)

    def chat_ids(self, messages) -> np.ndarray:
        """The token ids [1, n] of `messages` (as `chat`) through the chat template, ready for the reply."""
        tokenizer = self._tokenizer_for("chat()", "pass token ids to generate()")
        if not getattr(tokenizer, "chat_template", None):
            raise DecodeInputError("this model's tokenizer has no chat template (a base model, or a folder without "
                                   "one): give the prompt as plain text to generate_text() (actsparse generate "
                                   "without --chat)")
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as err:  # noqa: BLE001 - the template's own checks (roles, order) say what is wrong
            raise DecodeInputError(f"the chat template refuses these messages: {err}") from None
        # the template writes the special tokens itself (a bos, the role markers): encode without adding more
        return np.array([tokenizer(text, add_special_tokens=False)["input_ids"]], np.int64).reshape(1, -1)

    def _tokenizer_for(self, what: str, way_out: str):
        if self.tokenizer is None:
            raise DecodeInputError(f"this decoder has no tokenizer, which {what} needs (its source had none: a model "
                                   "folder needs the files tokenizer.save_pretrained(dir) writes, e.g. "
                                   f"tokenizer.json); {way_out}, or add them to the folder and compile again")
        return self.tokenizer

    def text_after(self, prompt_ids: np.ndarray, max_new_tokens: int | None = None, on_text=None, prefill=None,
                   **settings) -> tuple[str, int, float, DecodeState | None]:
        """(the new text after `prompt_ids` [1, n], new tokens, decode seconds after prefill, the state after the
        last token fed: None for beams) as `generate_text`; `prefill(prompt_ids) -> state` puts the prompt into a
        cache (default: a fresh one, `prefill`; runtime/chat.py continues the last turn's)."""
        shown = [""]

        def stream(new_ids: list[int]) -> None:  # the text so far, decoded whole: a piece is what it adds
            text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
            if text.startswith(shown[0]) and not text.endswith("\ufffd"):  # not inside a multi-byte character
                on_text(text[len(shown[0]):])
                shown[0] = text

        (new, *_), seconds, state = self._decode(prompt_ids, max_new_tokens, settings, stream if on_text else None,
                                                 prefill)
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        if on_text and text != shown[0]:  # the rest (beams: all of it); past what was shown where decoding whole
            on_text(text[len(os.path.commonprefix([text, shown[0]])):])  # changed an earlier character
        return text, len(new), seconds, state
