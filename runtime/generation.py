"""Generation settings: what transformers' generate does to the logits before it picks a token, as one table.

    settings, notes = from_generation_config(model.generation_config, vocab_size)  # at compile: the model's own
    choose = TokenChooser(resolve(settings, overrides, vocab_size), prompt_length, max_new_tokens, eos_ids)
    token = choose(logits, ids_so_far)   # argmax of the processed logits, or a draw where do_sample

SETTINGS holds one entry per generation_config setting we apply, in the order transformers'
`_get_logits_processor` (generation/utils.py) applies them: the logits processors (applied greedy or not), then the
warpers (only when sampling: temperature, top_k, top_p, min_p, typical_p, epsilon_cutoff, eta_cutoff), then
renormalize_logits; each with transformers' default (`GenerationConfig._get_default_generation_params`), a check of
its value and its numpy function (runtime/logits_processors.py). NOT_APPLIED names the settings transformers has
that this table lacks: a model that sets one gets a note in its compile report, a caller who passes one gets an
error, never silence.

Sampling: greedy stays the default even where the model's generation_config says do_sample=True (Qwen2.5-Instruct
does): a compiled decoder gives the same tokens on every call, as transformers' generate(do_sample=False), and the
compile report says the model asks for sampling. `generate(..., do_sample=True, seed=0)` samples with the model's
temperature/top_k/top_p/min_p/... (or the caller's), from a numpy Generator seeded with `seed`.

Beams: num_beams > 1 is beam search (runtime/beam_search.py), the processors applied to each beam's
log-probabilities as transformers' _beam_search does (with do_sample=True beam sampling: the warpers too, the
continuations drawn); beam groups (diverse beam search) and constrained beams are not applied. Length: the
caller's max_new_tokens, else the settings' max_new_tokens, else their max_length minus the prompt (as transformers
reads them), else DEFAULT_NEW_TOKENS (`new_tokens`).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from . import logits_processors as lp


class GenerationSettingError(InputError):
    """A generation setting that is unknown, not applied by actsparse, or out of its range."""


def _number(kind, low=None, high=None, low_open=False, what="", high_open=False):
    """A check: a number of `kind` (int or float) in [low, high] (an end excluded where low_open / high_open) -> that
    number."""
    def check(value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or (kind is int and value != int(value)):
            raise ValueError(f"expected {what or kind.__name__}, got {value!r}")
        value = kind(value)
        if (low is not None and (value <= low if low_open else value < low)) or \
                (high is not None and (value >= high if high_open else value > high)):
            raise ValueError(f"expected {what}, got {value!r}")
        return value
    return check


def _flag(value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"expected True or False, got {value!r}")
    return bool(value)


def _token_ids(value):
    """A list of token ids (one id alone is a list of it)."""
    value = [value] if isinstance(value, numbers.Integral) else value
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, numbers.Integral) and t >= 0 for t in value):
        raise ValueError(f"expected a list of token ids (whole numbers >= 0), got {value!r}")
    return [int(t) for t in value]


def _early_stopping(value):
    """True, False or "never" (transformers' early_stopping; the CLI's text "true"/"false" too)."""
    value = {"true": True, "false": False}.get(value.lower(), value) if isinstance(value, str) else value
    if value not in (True, False, "never") or isinstance(value, numbers.Real) and not isinstance(value, bool):
        raise ValueError(f"expected True, False or \"never\", got {value!r}")
    return value


def _sequences(value):
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(s, (list, tuple)) and s for s in value):
        raise ValueError(f"expected a non-empty list of non-empty lists of token ids, got {value!r}")
    return [_token_ids(s) for s in value]


def _biases(value):
    """{(ids...): bias} or [[ids, bias], ...] -> [[ids, bias], ...] (what decoder.json can hold)."""
    pairs = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(pairs, (list, tuple)) or not pairs or not all(isinstance(p, (list, tuple)) and len(p) == 2
                                                                    for p in pairs):
        raise ValueError(f"expected {{(token ids): bias}} or [[token ids, bias], ...], got {value!r}")
    # one bias per sequence, the last given (transformers keeps them in a dict keyed by the sequence)
    unique = {tuple(_sequences([ids])[0]): _number(float, what="a float bias")(bias) for ids, bias in pairs}
    return [[list(ids), bias] for ids, bias in unique.items()]


def _text_bias(value: str) -> tuple[str, float]:
    """"TEXT=BIAS" (the CLI's --sequence-bias) -> (text, bias)."""
    text, _, bias = value.rpartition("=")
    try:
        if text:
            return text, float(bias)
    except ValueError:
        pass
    raise ValueError(f"expected TEXT=BIAS (e.g. 'hello=-2.5'), got {value!r}")


@dataclass(frozen=True)
class ListFlag:
    """A CLI flag taking several values (`--suppress-tokens 5 7`, `--bad-words "an ad" spam`, repeatable): token ids,
    or text that `from_text(values, encode)` turns into the setting's value with the decoder's tokenizer."""

    item: Callable  # one value as typed on the command line -> its value (argparse's type)
    metavar: str = "ID"  # what --help calls one value
    name: str = ""  # the flag, where not the setting's name
    from_text: Callable | None = None  # (values, encode: text -> ids) -> the setting's value; None: ids as they are


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any  # transformers' value when neither the model nor the caller sets one
    off: Callable[[Any], bool]  # the value changes nothing: the function is not applied
    check: Callable[[Any], Any]  # value -> the value normalized (JSON-able); ValueError saying what it must be
    apply: Callable | None = None  # (logits, Context, value) -> logits; None: read by the chooser itself
    sampling: bool = False  # a warper: only when do_sample
    tokens: Callable[[Any], list] = lambda value: []  # the token ids a value names (each must be in the vocabulary)
    flag: Callable | ListFlag | None = None  # `actsparse generate --name-with-dashes` of this type (None: none)


def _none(value) -> bool:
    return value is None


def _is(*neutral):
    return lambda value: value is None or value in neutral


def _flat(value) -> list:
    return [t for s in value for t in s] if value and isinstance(value[0], list) else list(value or [])


SETTINGS = (  # in transformers' order (generation/utils.py _get_logits_processor)
    Setting("sequence_bias", None, _none, _biases, lp.sequence_bias, tokens=lambda v: _flat([s for s, _ in v]),
            flag=ListFlag(_text_bias, "TEXT=BIAS", from_text=lambda texts, encode: [[encode(t), b] for t, b in texts])),
    Setting("repetition_penalty", 1.0, _is(1.0), _number(float, 0, low_open=True, what="a float > 0"),
            lp.repetition_penalty, flag=float),
    Setting("no_repeat_ngram_size", 0, _is(0), _number(int, 0, what="a whole number >= 0"), lp.no_repeat_ngram,
            flag=int),
    Setting("bad_words_ids", None, _none, _sequences, lp.bad_words, tokens=_flat,
            flag=ListFlag(str, "TEXT", "bad_words", lambda values, encode: [encode(t) for t in values])),
    Setting("min_length", 0, _is(0), _number(int, 0, what="a whole number >= 0"), lp.min_length, flag=int),
    Setting("min_new_tokens", None, _is(0), _number(int, 0, what="a whole number >= 0"), lp.min_new_tokens, flag=int),
    Setting("forced_bos_token_id", None, _none, _number(int, 0, what="a token id"), lp.forced_bos,
            tokens=lambda v: [v], flag=int),
    Setting("forced_eos_token_id", None, _none, _token_ids, lp.forced_eos, tokens=_flat, flag=ListFlag(int)),
    Setting("remove_invalid_values", False, _is(False), _flag, lp.remove_invalid),
    Setting("suppress_tokens", None, _none, _token_ids, lp.suppress, tokens=_flat, flag=ListFlag(int)),
    Setting("begin_suppress_tokens", None, _none, _token_ids, lp.suppress_at_begin, tokens=_flat,
            flag=ListFlag(int)),
    Setting("temperature", 1.0, _is(1.0), _number(float, 0, low_open=True, what="a float > 0"), lp.temperature,
            sampling=True, flag=float),
    Setting("top_k", 50, _is(0), _number(int, 0, what="a whole number >= 0 (0: off)"), lp.top_k, sampling=True,
            flag=int),
    Setting("top_p", 1.0, _is(1.0), _number(float, 0, 1, low_open=True, what="a float in (0, 1]"), lp.top_p,
            sampling=True, flag=float),
    Setting("min_p", None, _none, _number(float, 0, 1, what="a float in [0, 1]"), lp.min_p, sampling=True, flag=float),
    Setting("typical_p", 1.0, _is(1.0), _number(float, 0, 1, low_open=True, what="a float in (0, 1]"), lp.typical_p,
            sampling=True, flag=float),
    Setting("epsilon_cutoff", 0.0, _is(0.0), _number(float, 0, 1, high_open=True, what="a float in [0, 1)"),
            lp.epsilon_cutoff, sampling=True, flag=float),
    Setting("eta_cutoff", 0.0, _is(0.0), _number(float, 0, 1, high_open=True, what="a float in [0, 1)"),
            lp.eta_cutoff, sampling=True, flag=float),
    Setting("renormalize_logits", None, _is(False), _flag, lp.renormalize),
    # read by generate itself, not by a processor: the length, the beams (runtime/beam_search.py), the draw
    Setting("max_new_tokens", None, _none, _number(int, 0, what="a whole number >= 0")),  # CLI: -n
    Setting("max_length", 20, _is(20), _number(int, 1, what="a whole number >= 1 (prompt included)"), flag=int),
    Setting("num_beams", 1, _is(1), _number(int, 1, what="a whole number >= 1"), flag=int),
    Setting("length_penalty", 1.0, _is(1.0), _number(float, what="a float"), flag=float),
    Setting("early_stopping", False, _is(False), _early_stopping, flag=_early_stopping),
    Setting("num_return_sequences", 1, _is(1), _number(int, 1, what="a whole number >= 1")),  # CLI: prints one
    # what pads a returned sequence that ended early (beams); None: the first eos id, as transformers does. Only
    # written into the output, never fed to the model: any integer, as transformers takes it (some models use -1)
    Setting("pad_token_id", None, _none, _number(int, what="an integer token id"), flag=int),
    Setting("do_sample", False, _is(False), _flag, flag=bool),  # the chooser: draw instead of argmax
    Setting("seed", None, _none, _number(int, 0, what="a whole number >= 0"), flag=int),  # the draw's Generator
)
BY_NAME = {s.name: s for s in SETTINGS}
CALL_ONLY = ("do_sample", "seed")  # per call; never taken from a model's generation_config (see the docstring)

# transformers' settings that change generate's tokens and that SETTINGS lacks, with the values that change nothing
NOT_APPLIED = {"num_beam_groups": (None, 1), "diversity_penalty": (None, 0.0), "constraints": (None,),
               "force_words_ids": (None,), "penalty_alpha": (None, 0.0), "guidance_scale": (None, 1.0),
               "encoder_repetition_penalty": (None, 1.0), "encoder_no_repeat_ngram_size": (None, 0),
               "exponential_decay_length_penalty": (None,), "top_h": (None,), "watermarking_config": (None,)}


def check_settings(settings: dict, vocab_size: int) -> dict:
    """`settings` checked and normalized: known names, values in range, token ids inside the vocabulary; else one
    GenerationSettingError naming the setting and what it takes."""
    out = {}
    for name, value in settings.items():
        setting = BY_NAME.get(name)
        if setting is None:
            why = "actsparse's generate does not apply it" if name in NOT_APPLIED else "no such generation setting"
            raise GenerationSettingError(f"generation setting {name}={value!r}: {why}; the settings are "
                                         f"{', '.join(BY_NAME)}")
        try:
            out[name] = None if value is None else setting.check(value)
        except ValueError as err:
            raise GenerationSettingError(f"generation setting {name}: {err}") from None
        outside = [t for t in (setting.tokens(out[name]) if out[name] is not None else []) if t >= vocab_size]
        if outside:
            raise GenerationSettingError(f"generation setting {name} names token id {outside[0]}, outside the "
                                         f"vocabulary (0 .. {vocab_size - 1}); use this model's token ids")
    return out


def from_generation_config(generation, vocab_size: int) -> tuple[dict, list[str]]:
    """(the settings a transformers GenerationConfig sets away from transformers' defaults, the notes for the
    compile report: settings actsparse does not apply, and do_sample=True, which it does not follow by default)."""
    if generation is None:
        return {}, []
    settings = {s.name: getattr(generation, s.name, None) for s in SETTINGS if s.name not in CALL_ONLY}
    try:
        settings = check_settings({k: v for k, v in settings.items() if v is not None and v != BY_NAME[k].default},
                                  vocab_size)
    except GenerationSettingError as err:
        raise GenerationSettingError(f"the model's generation_config: {err}; correct it in generation_config.json "
                                     "(or model.generation_config) and compile again") from None
    notes = []
    unapplied = [f"{k}={v!r}" for k, neutral in NOT_APPLIED.items()
                 if (v := getattr(generation, k, None)) not in neutral]
    if unapplied:
        notes.append(f"the model's generation_config sets {', '.join(unapplied)}, which transformers' generate applies "
                     "(top_h when sampling) and actsparse's does not, so their tokens may differ")
    if getattr(generation, "do_sample", False):
        warpers = ", ".join(f"{s.name}={settings.get(s.name, s.default)!r}" for s in SETTINGS if s.sampling)
        beams = " (beam search, not beam sampling)" if settings.get("num_beams", 1) > 1 else ""
        notes.append("the model's generation_config asks for sampling (do_sample=True); actsparse's generate stays "
                     f"greedy{beams}, as transformers' generate(do_sample=False), unless called with do_sample=True "
                     f"(actsparse generate --do-sample), which then samples with {warpers}")
    return settings, notes


def resolve(model_settings: dict, overrides: dict, vocab_size: int) -> dict:
    """Every setting's value for one generate call: transformers' defaults, then the model's, then the caller's."""
    return {**{s.name: s.default for s in SETTINGS}, **model_settings, **check_settings(overrides, vocab_size)}


DEFAULT_NEW_TOKENS = 32  # generate's length where neither the caller nor the model's generation_config gives one


def new_tokens(asked: int | None, given: dict, prompt_length: int, room: int) -> tuple[int, str]:
    """(how many tokens generate makes at most, why): the caller's count; else `given`'s (the model's settings, the
    call's over them) max_new_tokens, or max_length minus the prompt, as transformers' generate reads them, cut to
    the `room` left in the KV cache; else DEFAULT_NEW_TOKENS."""
    if asked is not None:
        return asked, "the call's max_new_tokens"
    for name, count in (("max_new_tokens", given.get("max_new_tokens")),
                        ("max_length", given.get("max_length") and max(0, given["max_length"] - prompt_length))):
        if count is not None:
            why = f"the generation settings' {name}={given[name]}"
            return (count, why) if count <= room else (room, f"{why}, cut to the {room} the KV cache has room for")
    return DEFAULT_NEW_TOKENS, f"actsparse's default of {DEFAULT_NEW_TOKENS} (the generation settings set no length)"


class TokenChooser:
    """Picks each next token as transformers' generate does: the processors (and, sampling, the warpers) of
    `settings` in table order, then argmax or a draw."""

    def __init__(self, settings: dict, prompt_length: int, max_new_tokens: int, eos_ids: tuple[int, ...]):
        sampling = settings["do_sample"]
        self.steps = [(s.apply, settings[s.name]) for s in SETTINGS
                      if s.apply and not s.off(settings[s.name]) and (sampling or not s.sampling)]
        self.rng = np.random.default_rng(settings["seed"]) if sampling else None
        # transformers' begin_index: one later where a forced BOS takes the first place after a one-token prompt
        begin = prompt_length + (prompt_length == 1 and settings["forced_bos_token_id"] is not None)
        self.context = dict(prompt_length=prompt_length, max_length=prompt_length + max_new_tokens,
                            eos_ids=tuple(eos_ids), begin_index=begin)

    def process(self, logits: np.ndarray, ids: list) -> np.ndarray:
        """`logits` (float32, changed in place) after the processors (and, sampling, the warpers), in table order."""
        if self.steps:
            context = lp.Context(np.asarray(ids, np.int64), **self.context)
            for apply, value in self.steps:
                logits = apply(logits, context, value)
        return logits

    def __call__(self, logits: np.ndarray, ids: list) -> int:
        if self.steps:
            logits = self.process(logits.astype(np.float32), ids)  # a copy: the processors change it in place
        if self.rng is None:
            return int(np.argmax(logits))
        token = lp.draw(logits, self.rng)
        if token is None:
            raise GenerationSettingError(f"the generation settings leave no token to draw after {len(ids)} ids (every "
                                         "logit is -inf): suppress or ban fewer tokens")
        return token
