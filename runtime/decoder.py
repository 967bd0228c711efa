"""A compiled decoder: generation over a KV cache that the runtime owns.

    lm = actsparse.compile("hf_dir" | "model.gguf" | causal_lm, mode="exact", max_seq=512)
    state = lm.prefill(ids)                 # ids [1, n] (or [n]); state.logits: the last position's logits
    logits, state = lm.step(token, state)   # one token at state.position
    ids = lm.generate(ids, max_new_tokens)  # prompt + new ids, as transformers' generate(do_sample=False)
    ids = lm.generate(ids, 32, repetition_penalty=1.1, do_sample=True, top_p=0.9, seed=0)  # runtime/generation.py
    ids = lm.generate(ids, 32, num_beams=4)  # beam search (runtime/beam_search.py): one cache state per beam

The module is the decoding graph of `frontends/kv_cache.py`: `main(input_ids[1, seq], pos[1], filled[kv], k0, v0,
...) -> (logits[1, 1, V], k0', v0', ...)`, where each cache output is written in place into its input (codegen's
`index_copy`), so the state holds the same device tensors for the whole generation and a step moves only its
own keys and values; attention reads the first kv = pos + seq slots (`filled` carries kv as its length). The
states of recurrent mixers (Mamba's convolution window and SSM state) are caches too, of fixed size: the call
returns them anew and the state takes the returned tensors. Prefill is that function on the prompt; a step is the
same graph on one token, compiled as the module's `step` function (`seq` fixed to 1: static shapes,
codegen/build.py) where the module has one, else `main`. A model that keeps no cache (BERT-style LM heads) is
`main(input_ids[1, seq]) -> logits[1, 1, V]`: the state then holds the tokens so far and every call runs the whole
sequence through `main`, as transformers' `generate` does for it, as does a model whose cache the import refused
(`lm.decoding` is then "recompute", else "kv-cache"; `lm.decoding_note` and the report say why and what it costs).
A module built for a target that captures decode
steps in a graph (CUDA) has `step_graph` and its buckets `step_graph_S` (codegen/static_step.py: static shapes,
attention over the first S slots, the logits written into a buffer, every parameter fixed), which a step calls
instead, the smallest bucket holding its position: the decoder then owns the one KV cache, the step's input
buffers (token, position, `filled` per bucket) and the logits buffer, allocated once and reused by every state
(one generation at a time per decoder; a new prefill overwrites the cache), and copies each step's token and
position into them before the call, so each bucket's captured graph replays on the same addresses. (Artifacts
built before `filled` existed take `main(input_ids, pos, k0, ...)` and attend over every slot; they still load and
decode.)

An artifact of a decoder (kind "decoder") is a compiled module's artifact plus `decoder.json` (cache shapes,
vocabulary, stop ids, the model's generation settings) and the tokenizer's own files under `tokenizer/` (never a
pickle), all listed and hashed in the manifest; `actsparse.load` verifies them with the module's files and gives
the Decoder back.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..codegen.static_step import bucket_function, bucket_slots
from ..errors import ArtifactError, DecodeInputError
from ..ir.decoding import (
    CALL_INPUTS,
    LOGITS,
    PREFILL_FUNCTION,
    PREFILL_MIN_TOKENS,
    STEP_FUNCTION,
    STEP_GRAPH,
)
from ..ir.types import np_dtype
from .beam_search import beam_search, check_beams
from .decode_state import DecodeState, StepInputs, checked_caches
from .decoder_spec import DecoderSpec, spec_disagrees
from .devices import on_host
from .generation import TokenChooser, check_settings, new_tokens, resolve
from .module import CompiledModule
from .perplexity import WINDOW, WINDOWS, score, token_windows
from .text_generation import TextGeneration
from .tokenizer_files import tokenizer_files, tokenizer_from_files

KIND = "decoder"  # the artifact kind (runtime/artifact.py)
DECODER_FILE = "decoder.json"
TOKENIZER_DIR = "tokenizer"


@dataclass(frozen=True)
class OwnedBuffers:
    """The device buffers a static step (`step_graph`) reads and writes, at the addresses its graphs were captured
    with: the KV cache, the token and position, `filled` per bucket (its length is the bucket's slots), the logits."""

    caches: list
    token: Any
    pos: Any
    filled: dict
    logits: Any


class Decoder(TextGeneration):
    """Prefill, step and generate over one compiled decoding module (see the module docstring); text in and out,
    chat turns: `TextGeneration` (runtime/text_generation.py)."""

    def __init__(self, module: CompiledModule, spec: DecoderSpec, tokenizer: Any = None):
        self.module = module
        self.spec = spec
        self.tokenizer = tokenizer
        self._takes_filled = [name for name, _ in module.inputs[:3]] == list(CALL_INPUTS)
        self._zeros = np.zeros(spec.max_seq, np.int64)  # `filled` is a prefix of it (only its length is read)
        self._one_token = module.inputs[0][1].shape[1] == 1  # input_ids [1, 1]: no symbolic seq
        # a one-token main's whole-prompt function (hybrids), at most this many tokens a call
        self._prefill_tokens = spec.prefill_tokens if module.runnable and module.has_function(PREFILL_FUNCTION) else 0
        self.recomputes = [name for name, _ in module.inputs] == list(CALL_INPUTS[:1])  # no cache: the whole sequence
        # the fewest tokens the recomputed graph holds for (ir/limits.py: a branch on the length's windows)
        self._least_tokens = max((module.limits.dim_least if module.limits else {}).values(), default=1)
        # the module's one-token function (static shapes, codegen/build.py); artifacts built before it: main
        self._step_function = STEP_FUNCTION if module.runnable and module.has_function(STEP_FUNCTION) else "main"
        # see the module docstring; an older step_graph without the logits buffer (artifacts) is left to `step`
        self.graph_step = module.runnable and module.has_function(STEP_GRAPH) \
            and LOGITS in module.function_params(STEP_GRAPH)
        # the static step's buckets, smallest first: (slots, function); step_graph itself spans max_seq
        self._buckets = [(s, bucket_function(s, spec.max_seq)) for s in sorted(bucket_slots(spec.max_seq))
                         if self.graph_step and module.has_function(bucket_function(s, spec.max_seq))]
        self._owned: OwnedBuffers | None = None  # made once, on the first static step
        # the VM does not check the caches a call is handed (ir/decoding.checked_inputs): a state is checked against
        # these the first time its caches are seen (decode_state.checked_caches)
        dtypes = {name: str(np.dtype(np_dtype(t.dtype))) for name, t in module.inputs}
        self._cache_types = tuple((name, tuple(shape), dtypes.get(name, "float32")) for name, shape in spec.caches)
        self._replaced: dict[str, tuple[int, ...]] = {}  # per function: the caches it returns anew (not in place)
        self._host = module.runnable and on_host(module.device)
        self._step_inputs = StepInputs(spec.max_seq, self._takes_filled) if self._host else None

    @property
    def report(self):
        return self.module.report

    @property
    def max_seq(self) -> int:
        return self.spec.max_seq

    @property
    def prefill_tokens(self) -> int:
        """The most tokens one call of the module's `prefill` takes (0: it has none; prompts go token by token)."""
        return self._prefill_tokens

    def prefill_call(self, ids, state: DecodeState) -> DecodeState:
        """One call of `prefill` on all of `ids` (2 .. prefill_tokens tokens) from `state`, whatever
        `spec.prefill_from` says: the prefill rule (runtime/prefill_rule.py) times it against steps."""
        ids = self._ids(ids)
        if not PREFILL_MIN_TOKENS <= ids.shape[1] <= self._prefill_tokens:
            raise DecodeInputError(f"a prefill call takes {PREFILL_MIN_TOKENS} .. {self._prefill_tokens} tokens, "
                                   f"got {ids.shape[1]}")
        return self._feed(ids, state, PREFILL_FUNCTION)

    @property
    def decoding(self) -> str:
        """"kv-cache" (a step feeds one token against the cache) or "recompute" (a step runs the whole sequence)."""
        return "recompute" if self.recomputes else "kv-cache"

    @property
    def decoding_note(self) -> str:
        """For a decoder that recomputes: why, and what a step costs ("" for one with its cache)."""
        if not self.recomputes:
            return ""
        why = self.spec.recomputes_because or "of a reason this artifact does not record (built before decoders did)"
        return (f"decoding recomputes, without a KV cache, because {why}; each step runs a forward over the whole "
                "sequence so far, so a token costs about as much as a prefill of that length")

    # -- decoding ------------------------------------------------------------------------------------------
    def new_state(self) -> DecodeState:
        if self.graph_step:  # the decoder's own cache, at the addresses the captured step was recorded with
            return DecodeState(list(self._owned_buffers().caches), owned=True)
        return DecodeState(self._zero_caches())

    def _zero_caches(self) -> list:
        dtypes = {name: np_dtype(t.dtype) for name, t in self.module.inputs}  # float, or a carried counter's int
        return [self.module.device_tensor(np.zeros(shape, dtypes.get(name, np.float32)))
                for name, shape in self.spec.caches]

    def _owned_buffers(self) -> OwnedBuffers:
        if self._owned is None:
            tensor = self.module.device_tensor
            self._owned = OwnedBuffers(self._zero_caches(), tensor(np.zeros((1, 1), np.int64)),
                                       tensor(np.zeros(1, np.int64)),
                                       {s: tensor(self._zeros[:s]) for s, _ in self._buckets},
                                       tensor(np.zeros((1, 1, self._logits_size()), np.float32)))
        return self._owned

    def _logits_size(self) -> int:
        """The logits' length: the graph's, where the module has it (an LM head may be wider than the embedding)."""
        graph = self.module.graph
        return graph.outputs[0].shape[-1] if graph is not None else self.spec.vocab_size

    def step_function(self, position: int) -> tuple[int, str]:
        """(slots, name) of the static step function that decodes the token at `position`: the smallest bucket whose
        slots hold it (attention reads those slots of the cache)."""
        return next(b for b in self._buckets if b[0] > position)

    def prefill(self, ids, state: DecodeState | None = None) -> DecodeState:
        """A fresh cache (or `state`'s, e.g. `own_state()`) filled with the prompt `ids` ([1, n] or [n] ints);
        `.logits` predicts the next token."""
        return self._feed(self._ids(ids), state or self.new_state())

    # -- several states at once (beam search) -------------------------------------------------------------
    def own_state(self) -> DecodeState:
        """A state with a cache of its own, zeroed: several can decode side by side (beam search), each step
        through the module's step function, never the captured step graph (recorded on the decoder's one cache)."""
        return DecodeState(self._zero_caches())

    def step(self, token, state: DecodeState) -> tuple[np.ndarray, DecodeState]:
        """Feed one token at `state.position`; returns its logits [vocab] and the advanced state."""
        state = self._feed(self._ids(token), state)
        return state.logits, state

    def generate(self, ids, max_new_tokens: int | None = None, **settings):
        """The prompt followed by up to `max_new_tokens` ids (stops after an end-of-sequence id), chosen as
        transformers' generate does with the model's generation_config and these `settings` over it
        (repetition_penalty=, do_sample=, temperature=, top_k=, top_p=, seed=, num_beams=, ...:
        runtime/generation.py); greedy unless do_sample=True, beam search where num_beams > 1. `max_new_tokens`
        None: the settings' max_new_tokens or max_length, else 32 (`new_tokens`).
        Returns the type given (torch tensor or numpy array) of shape [1, n + new] ([num_return_sequences, ...]
        with beams, the best first, a shorter one padded as transformers' beam search pads: with pad_token_id (the
        caller's, else the model's) where it is set and not 0, else the first eos id; -1 without eos ids)."""
        prompt = self._ids(ids)
        sequences, _, _ = self._decode(prompt, max_new_tokens, settings)
        width = max(len(s) for s in sequences)
        pad = resolve(self.spec.generation, settings, self.spec.vocab_size)["pad_token_id"]
        # transformers' _beam_search fill, `pad_token_id or eos_token_id[0] if eos_token_id is not None else -1`:
        # a pad id of 0 (falsy) gives way to the first eos id, and without eos ids it is -1 whatever the pad id
        eos = self.spec.eos_token_ids
        pad = (pad or eos[0]) if eos else -1
        result = np.array([list(prompt[0]) + s + [pad] * (width - len(s)) for s in sequences], np.int64)
        if type(ids).__module__.startswith("torch"):
            import torch

            return torch.from_numpy(result)
        return result

    def perplexity(self, source, window: int = WINDOW, windows: int = WINDOWS, progress: bool = True):
        """Perplexity on `source` (text, a text file's path or a list of them, or token ids) scored by this decoder's
        own compiled steps: up to `windows` windows of `window` tokens, each teacher-forced from an empty cache
        (runtime/perplexity.py). Returns a `Perplexity` (.perplexity, .nll, .tokens, .seconds)."""
        return score(self, token_windows(self, source, window, windows), progress)

    def new_tokens(self, prompt_length: int, max_new_tokens: int | None = None, **settings) -> tuple[int, str]:
        """(the most new tokens generate makes after a prompt of `prompt_length` ids, why: runtime/generation.py
        `new_tokens`)."""
        given = {**self.spec.generation, **check_settings(settings, self.spec.vocab_size)}
        return new_tokens(max_new_tokens, given, prompt_length, self.spec.max_seq + 1 - prompt_length)

    def _decode(self, prompt: np.ndarray, max_new_tokens: int | None, settings: dict, on_token=None,
                prefill=None) -> tuple[list[list[int]], float, DecodeState | None]:
        """(the new ids of each sequence returned, the seconds the steps after the prefill took, the last state: None
        for beams); `on_token(new ids so far)` after each token chosen (not for beams, whose best sequence is known
        at the end only); `prefill` as `text_after`'s."""
        max_new_tokens, _ = self.new_tokens(prompt.shape[1], max_new_tokens, **settings)
        settings = resolve(self.spec.generation, settings, self.spec.vocab_size)
        check_beams(settings)
        self._check_room(prompt.shape[1] + max_new_tokens - 1)
        if settings["num_beams"] > 1 and max_new_tokens > 0:
            start = time.perf_counter()
            sequences = beam_search(self, prompt, settings, max_new_tokens)
            return [s[prompt.shape[1]:] for s in sequences], time.perf_counter() - start, None
        choose = TokenChooser(settings, prompt.shape[1], max_new_tokens, self.spec.eos_token_ids)
        ids, start, state = list(prompt[0]), time.perf_counter(), None
        if max_new_tokens > 0:
            state = (prefill or self.prefill)(prompt)
            start = time.perf_counter()
            while True:
                ids.append(choose(state.logits, ids))
                if on_token is not None:
                    on_token(ids[prompt.shape[1]:])
                if ids[-1] in self.spec.eos_token_ids or len(ids) - prompt.shape[1] == max_new_tokens:
                    break
                _, state = self.step(ids[-1], state)
        return [ids[prompt.shape[1]:]], time.perf_counter() - start, state

    def _feed(self, ids: np.ndarray, state: DecodeState, function: str | None = None) -> DecodeState:
        n = ids.shape[1]
        if n > 1 and self._one_token and function is None:  # main exported for one token at a time (decoder_export.py):
            # pieces of at most `_prefill_tokens` through `prefill`, each from the states the last left (where it
            # continues states; else only a prompt's first piece), where a piece has at least `spec.prefill_from` tokens
            # (below, the steps were measured faster); the rest one token at a time through main
            self._check_room(state.position + n)
            i = 0
            while i < n:
                take = min(self._prefill_tokens, n - i)
                whole = take >= self.spec.prefill_from and (state.position == 0 or self.spec.prefill_continues)
                take = take if whole else 1
                state = self._feed(ids[:, i:i + take], state, PREFILL_FUNCTION if take > 1 else None)
                i += take
            return state
        self._check_room(state.position + n)
        if self.recomputes and len(state.tokens) + n < self._least_tokens:
            raise DecodeInputError(f"a prompt of {len(state.tokens) + n} tokens is shorter than the "
                                   f"{self._least_tokens} this model's graph holds for (its export branches on "
                                   "the length: shorter sequences take other branches); give a longer prompt")
        state.tokens.extend(int(t) for t in ids[0])
        if self.recomputes:  # the whole sequence each call: `main` (the one-token function would not fit it)
            out = self.module.run_device(np.array([state.tokens], np.int64))
        elif n == 1 and self.graph_step and self._owns(state):
            owned, (slots, bucket) = self._owned_buffers(), self.step_function(state.position)
            owned.token.copyfrom(ids)
            owned.pos.copyfrom(np.array([state.position], np.int64))
            out = self.module.run_device(owned.token, owned.pos, owned.filled[slots], *owned.caches, owned.logits,
                                         function=bucket, n_outputs=1)
        else:
            function = function or (self._step_function if n == 1 else "main")
            if n == 1 and self._step_inputs is not None:
                inputs = self._step_inputs(ids[0, 0], state.position)
            else:
                inputs = (ids, np.array([state.position], np.int64),
                          *((self._zeros[:state.position + n],) if self._takes_filled else ()))
            out = self._run_on_caches(function, state, *inputs)
        state.position += n
        # on the CPU the logits as they are (a tensor each call made, never written again), else copied to the host
        state.logits = (np.from_dlpack(out[0]) if self._host and not self._owns(state) else out[0].numpy()).reshape(-1)
        return state

    def _run_on_caches(self, function: str, state: DecodeState, *inputs) -> list:
        """`function` on `inputs` and `state`'s caches: [logits, ...]. Caches the function writes in place stay
        where they are (no handle fetched); those it returns anew (a recurrent state) replace them in the state.
        Which is which is read off the first call (the same buffer comes back, or not)."""
        caches = checked_caches(state, self._cache_types, self.module)
        replaced = self._replaced.get(function)
        wanted = None if replaced is None else (0, *(1 + i for i in replaced))
        out = self.module.run_device(*inputs, *caches, function=function, outputs=wanted)
        if replaced is None:
            replaced = tuple(i for i, c in enumerate(caches) if out[1 + i].data_ptr() != c.data_ptr())
            self._replaced[function] = replaced
            out = [out[0], *(out[1 + i] for i in replaced)]
        if replaced:
            caches = list(caches)
            for i, tensor in zip(replaced, out[1:]):
                caches[i] = tensor
            state.caches = caches
            state.checked = (self._cache_types, tuple(caches))
        return out

    def _owns(self, state: DecodeState) -> bool:
        """Whether `state` decodes in the decoder's own cache (that the captured step graph was recorded on); a
        flag, not object identity: a call's outputs are new handles of the same, in-place written buffers."""
        return state.owned

    def _ids(self, ids) -> np.ndarray:
        if type(ids).__module__.startswith("torch"):
            ids = ids.detach().cpu().numpy()
        array = np.asarray(ids)
        if array.ndim == 0:
            array = array.reshape(1, 1)
        elif array.ndim == 1:
            array = array.reshape(1, -1)
        if array.ndim != 2 or array.shape[0] != 1 or array.shape[1] == 0 or not np.issubdtype(array.dtype, np.integer):
            raise DecodeInputError(f"expected token ids of shape [1, n] (batch 1, n >= 1 integers), got "
                                   f"{array.dtype}{list(array.shape)}")
        bad = array[(array < 0) | (array >= self.spec.vocab_size)]
        if bad.size:
            raise DecodeInputError(f"token id {int(bad[0])} is outside the vocabulary (0 .. "
                                   f"{self.spec.vocab_size - 1}); encode the text with this model's tokenizer")
        return array.astype(np.int64)

    def _check_room(self, positions: int) -> None:
        if positions > self.spec.max_seq:
            raise DecodeInputError(f"{positions} positions do not fit the KV cache of {self.spec.max_seq} slots "
                                   "(max_seq): shorten the prompt or the generation, or compile with a larger max_seq")

    # -- artifacts ------------------------------------------------------------------------------------------
    def save(self, path, signing_key=None) -> Path:
        """An artifact of kind "decoder": the module's files, decoder.json and the tokenizer's files, all listed
        and hashed in the manifest (and signed with `signing_key`, as `CompiledModule.save`)."""
        files = {DECODER_FILE: json.dumps(self.spec.to_dict(), indent=2).encode()}
        files.update({f"{TOKENIZER_DIR}/{name}": data for name, data in tokenizer_files(self.tokenizer).items()})
        return self.module.save(path, signing_key=signing_key, extra_files=files, kind=KIND)


def as_decoder(module: CompiledModule):
    """A loaded module of a "decoder" artifact -> its Decoder (from the files the loader verified); any other
    module is returned as it is."""
    if module.artifact_kind != KIND:
        return module
    files = module.artifact_files
    try:
        spec = DecoderSpec.from_dict(json.loads(files[DECODER_FILE]))
    except (KeyError, ValueError, TypeError) as err:
        raise ArtifactError(f"decoder artifact without a readable {DECODER_FILE} ({err}); rebuild it") from None
    why = spec_disagrees(spec, module)
    if why:
        raise ArtifactError(f"{DECODER_FILE} does not match the compiled module ({why}): the artifact was edited "
                            "after it was built; rebuild it")
    prefix = TOKENIZER_DIR + "/"
    return Decoder(module, spec, tokenizer_from_files({name[len(prefix):]: data for name, data in files.items()
                                                       if name.startswith(prefix)}))
