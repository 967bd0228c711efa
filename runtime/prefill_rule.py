"""When a prompt goes through a hybrid's `prefill` rather than token by token: `measure_prefill_from(decoder)`.

A hybrid decoder (runtime/decoder.py, frontends/prefill.py) can feed a prompt piece in one `prefill` call or one
token per call through its step. Which is faster depends on the model, not on a rule of thumb: one call reads the
weights once for all the tokens, but its multi-token branch may pad the piece to a fixed chunk (Mamba-2's chunked
scan pads to 256 and multiplies chunk x chunk matrices whatever the piece's length), so at small dims or short
pieces the steps win, at real dims and long pieces the one call. So the compiler measures it once, on the compiled
module, right after building it: a prefill call of MIN_TOKENS and of `long` tokens (at most LONG_TOKENS) from
zero states, and one-token steps, each the median of REPEATS, interleaved. The prefill's cost is taken as linear in
the piece's tokens through those two points (flat where it pads to a chunk), the steps' as tokens x one step, and
the decoder takes a piece through `prefill` from the least length where that line is below the steps
(`crossover`), persisted as `DecoderSpec.prefill_from` (decoder.json; artifacts without it: MIN_TOKENS, as before).
A measurement on a loaded machine moves the crossover, never the results: both paths give the same logits.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ..ir.decoding import PREFILL_MIN_TOKENS as MIN_TOKENS  # one token is a step

LONG_TOKENS = 64  # the longer measured piece, at most (a call at real dims and max_seq tokens could take seconds)
REPEATS = 3  # median of this many calls per measured point
STEPS = 8  # one-token steps per measured step time (their mean)


def crossover(short: tuple[int, float], long: tuple[int, float], step: float, most: int) -> int:
    """The least piece length n in MIN_TOKENS..`most` at which one prefill call, costing the line through `short`
    and `long` ((tokens, seconds) each), is cheaper than n steps of `step` seconds; `most` + 1 where none is."""
    (n0, t0), (n1, t1) = short, long
    slope = (t1 - t0) / (n1 - n0) if n1 != n0 else 0.0
    base = t0 - slope * n0
    if step <= slope:  # each extra token costs the prefill at least a step: longer pieces never catch up
        return MIN_TOKENS if base < 0 else most + 1
    n = max(MIN_TOKENS, int(np.floor(base / (step - slope))) + 1)
    return n if n <= most else most + 1


def measure_prefill_from(decoder) -> tuple[int, str]:
    """(`prefill_from` for `decoder`, a note with the measured figures): see the module docstring. A decoder without
    a prefill function (or a module this machine cannot run) keeps MIN_TOKENS."""
    most = decoder.prefill_tokens
    if not most or not decoder.module.runnable:
        return MIN_TOKENS, ""
    long = min(most, LONG_TOKENS)
    steps = min(STEPS, decoder.spec.max_seq - 1)  # after the first token, within the cache's slots
    ids = np.random.default_rng(0).integers(0, decoder.spec.vocab_size, (1, long), dtype=np.int64)
    times: dict[str, list[float]] = {"short": [], "long": [], "step": []}
    for _ in range(REPEATS + 1):  # the first round warms up (allocations, pages) and is dropped
        for name, tokens in (("short", MIN_TOKENS), ("long", long)):
            state = decoder.new_state()
            start = time.perf_counter()
            decoder.prefill_call(ids[:, :tokens], state)
            times[name].append(time.perf_counter() - start)
        state = decoder.prefill(ids[:, :1])
        start = time.perf_counter()
        for i in range(1, steps + 1):
            _, state = decoder.step(ids[:, i % long:i % long + 1], state)
        times["step"].append((time.perf_counter() - start) / steps)
    t = {name: float(np.median(values[1:])) for name, values in times.items()}
    start_at = crossover((MIN_TOKENS, t["short"]), (long, t["long"]), t["step"], most)
    rule = f"from {start_at} tokens" if start_at <= most else "never (token by token is faster)"
    note = (f"prompt pieces go through prefill {rule}: measured at compile time, prefill {MIN_TOKENS} tokens "
            f"{1e3 * t['short']:.2f} ms, {long} tokens {1e3 * t['long']:.2f} ms, one step {1e3 * t['step']:.3f} ms")
    return start_at, note


def settle_prefill_from(decoder) -> str:
    """Measure (`measure_prefill_from`) and set `decoder`'s rule, in its spec too (saved with it); returns the
    note for the report ("" where there is nothing to measure)."""
    start_at, note = measure_prefill_from(decoder)
    decoder.spec = replace(decoder.spec, prefill_from=start_at)
    return note
