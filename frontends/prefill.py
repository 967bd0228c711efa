"""The whole-prompt graph of a decoder whose step is exported for one token per call: `import_prefill`.

    found = import_prefill(model, max_seq, specs)   # Prefill(graph or None, tokens, continues, why_not)

A model with recurrent states (cache_layers.py's state layers, model_states.py's carriers) is exported for one
token per call, so its step takes the model's recurrent branch (`seq_len == 1`). Its prompt need not go that way:
the same wrapper (kv_cache.KVCachedLM) and the same inputs (input_ids, pos, filled, every cache), exported for
2 .. max_seq tokens, take the model's multi-token branch (Mamba-2's chunked scan, gated DeltaNet's chunked rule,
a causal convolution over the window so far followed by the new columns), which in transformers starts from the
states the cache layers report (`initial_state=recurrent_state`): zeros for a fresh prompt, the state so far for
the next piece of a long one. Nothing here knows an architecture; whether a model's multi-token branch does
continue from the given states is checked, not assumed: eager, on a few random tokens, the prompt in one call, and
its tokens after the first in one call after the first token's step, must each give the logits and every cache
tensor that the same tokens fed one per call give (`_continues_states`).
A model whose check passes from zero states only (Mamba's selective scan starts from no state whatever it is given)
gets a prefill that starts prompts only (`Prefill.continues` False: later pieces go token by token). Otherwise,
or where no variant exports, there is no prefill graph and the runtime feeds the prompt token by token as before
(`Prefill.why_not` says why).

The graph may bound the tokens per call (gated DeltaNet's scan loops over 64-token chunks in Python, so the export
fixes the chunk count: `ir/limits.py` reads `seq <= 64` off the graph); runtime/decoder.py then prefills in pieces
of at most that many tokens, each continuing from the states the previous one returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..ir import Graph
from ..ir.decoding import PREFILL_MIN_TOKENS as MIN_TOKENS
from ..ir.limits import input_limits
from .errors import FrontendError
from .kv_cache import STATE_KINDS, CacheSpec, KVCachedLM, cache_specs
from .model_states import CARRIERS

CHECK_TOKENS = 4  # tokens of the eager check that the multi-token branch continues from the given states
# the export variants a prefill tries (decoder_export.EXPORT_VARIANTS without the one-token ones), in that order
VARIANTS = ({}, {"ones_mask": True}, {"seen_from_shapes": True})


def needs_prefill(specs: list[CacheSpec]) -> bool:
    """Whether the decoder's step is exported for one token per call because of recurrent states."""
    return any(s.kind in STATE_KINDS or s.kind in CARRIERS for s in specs)


@dataclass(frozen=True)
class Prefill:
    """What import_prefill found: the graph (None: none), the most tokens a call takes, whether a call may start
    from states that are not zero (the next piece of a long prompt) or only from a fresh cache, and why not."""

    graph: Graph | None
    tokens: int = 0
    continues: bool = False
    why_not: str = ""


def import_prefill(model: nn.Module, max_seq: int, specs: list[CacheSpec]) -> Prefill:
    """The prefill graph of the module docstring, for the first export variant whose eager check passes from zero
    states (a fresh prompt) and that imports; it `continues` where the check also passes from the first token's."""
    from .decoder_export import _export, _named_inputs
    from .hf_source import quiet_transformers

    if not needs_prefill(specs) or max_seq < MIN_TOKENS:
        return Prefill(None, why_not="no recurrent state: the step graph takes whole prompts")
    with quiet_transformers():
        again, own_cache = cache_specs(model, max_seq)
    if [s.name for s in again] != [s.name for s in specs]:
        return Prefill(None, why_not="the cache probe found other tensors the second time")
    reasons = []
    for variant in VARIANTS:
        fresh, later = _continues_states(model, specs, own_cache, max_seq, **variant)
        if fresh:
            reasons.append(fresh)
            continue
        try:
            graph = _named_inputs(_export(model, specs, max_seq, own_cache, min_seq=MIN_TOKENS, **variant), specs)
        except FrontendError as err:
            reasons.append(str(err))
            continue
        return Prefill(graph, _most_tokens(graph, max_seq), not later, later)
    return Prefill(None, why_not=reasons[0])


def _most_tokens(graph: Graph, max_seq: int) -> int:
    """The most tokens one call of the prefill `graph` takes: max_seq, or less where the graph bounds `seq`."""
    from .decoder_export import SEQ

    return min(max_seq, input_limits(graph).dim_bounds.get(SEQ, max_seq))


def _continues_states(model: nn.Module, specs: list[CacheSpec], own_cache, max_seq: int,
                      **variant) -> tuple[str, str]:
    """(what differs from zero states, what differs from the first token's; "" where nothing does): the wrapper on
    CHECK_TOKENS random tokens against the same tokens fed one per call (logits and every cache tensor, up to
    rounding), in one call from zero states (a fresh prompt) and in one call after the first token's step (the next
    piece of a long prompt: states that are not zero)."""
    from .hf_source import quiet_transformers

    wrapper = KVCachedLM(model, specs=tuple(specs), own_cache=own_cache, **_wrapper_options(variant))
    n = min(CHECK_TOKENS, max_seq)
    vocab = max(2, model.get_input_embeddings().num_embeddings)
    ids = torch.randint(vocab, (1, n), generator=torch.Generator().manual_seed(0))

    def call(start, end, caches):
        filled = torch.zeros(end, dtype=torch.long)
        return wrapper(ids[:, start:end], torch.tensor([start]), filled, tuple(c.clone() for c in caches))  # the
        # model may write a state in place: it writes a copy

    try:
        with torch.no_grad(), quiet_transformers():
            steps = [(None, *(torch.zeros(s.shape, dtype=s.dtype) for s in specs))]
            for i in range(n):
                steps.append(call(i, i + 1, steps[-1][1:]))
            pieces = {"a prompt in one call": call(0, n, steps[0][1:]),
                      "the tokens after the first in one call": call(1, n, steps[1][1:])}
    except Exception as err:  # noqa: BLE001 - the model's own multi-token branch: any failure means no prefill
        fails = f"{type(model).__name__}'s forward on {n} tokens with its states given fails: {type(err).__name__}"
        return fails, fails
    names = ("logits", *(s.name for s in specs))
    return tuple(next((f"{type(model).__name__}'s multi-token forward does not continue from the states it is given "
                       f"({what}: {name} differs from feeding the tokens one per call)"
                       for name, a, b in zip(names, outputs, steps[-1], strict=True) if _differs(a, b)), "")
                 for what, outputs in pieces.items())


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Beyond rounding: a forward that drops the states it is given is off by the states' size (order 1), while
    two correct fp32 orders of the same scan may differ by a few 1e-4 of the logits' scale (transformers 5.25's
    Mamba-2 chunk-scan fallback against its one-token update: 3.5e-4 on a tiny Zamba2)."""
    scale = max(1.0, float(b.abs().max())) if b.numel() and b.is_floating_point() else 1.0
    return a.shape != b.shape or bool(a.numel()) and float((a.double() - b.double()).abs().max()) > 2e-3 * scale


def _wrapper_options(variant: dict) -> dict:
    return {"ones_mask": variant.get("ones_mask", False), "seen_from_shapes": variant.get("seen_from_shapes", False)}
