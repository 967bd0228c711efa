"""The state one generation decodes in (runtime/decoder.py): its caches, position, last logits and the ids fed; and
the host buffers a CPU step's own inputs are written into (`StepInputs`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DecodeInputError


@dataclass
class DecodeState:
    """The KV cache (device tensors, written in place) and the next position to write."""

    caches: list
    position: int = 0
    logits: np.ndarray | None = field(default=None, repr=False)  # of the last token fed
    tokens: list = field(default_factory=list, repr=False)  # the ids fed (a module without a cache runs them all)
    owned: bool = field(default=False, repr=False)  # caches are the decoder's own (the captured step's) buffers
    # (a decoder's cache types, the very tensors it checked against them): the VM does not check caches per call
    checked: tuple = field(default=(), repr=False, compare=False)


def checked_caches(state: DecodeState, types: tuple, module) -> list:
    """`state.caches`, each a tensor of its cache's (name, shape, dtype) in `types` on `module`'s device (numpy
    arrays of those are moved there). The VM does not check a decoder's caches (ir/decoding.checked_inputs: a wrong
    one would be read out of bounds), so this does, once per set of tensors: a state keeps the tensors it was checked
    with, against which `types` object (`DecodeState.checked`)."""
    caches, seen = state.caches, state.checked
    if seen and seen[0] is types and len(seen[1]) == len(caches) and all(a is b for a, b in zip(seen[1], caches)):
        return caches
    if len(caches) != len(types):
        raise DecodeInputError(f"the state has {len(caches)} cache tensors, this decoder {len(types)}: start from "
                               "lm.new_state() or lm.prefill(ids)")
    checked = []
    for i, ((name, shape, dtype), cache) in enumerate(zip(types, caches)):
        if isinstance(cache, np.ndarray) and cache.shape == shape and str(cache.dtype) == dtype:
            cache = module.device_tensor(cache)
        got = (tuple(getattr(cache, "shape", ())), str(getattr(cache, "dtype", "")), getattr(cache, "device", None))
        if not hasattr(cache, "data_ptr") or got != (shape, dtype, module.device):
            raise DecodeInputError(f"state.caches[{i}] ({name}) is not a cache of this decoder: it takes a {dtype} "
                                   f"tensor of shape {list(shape)} on {module.device}, got {type(cache).__name__} "
                                   f"{list(got[0])} {got[1]}; start from lm.new_state() or lm.prefill(ids)")
        checked.append(cache)
    state.caches, state.checked = checked, (types, tuple(checked))
    return checked


class StepInputs:
    """A one-token call's inputs before the caches (input_ids [1, 1], pos [1], and `filled` [position + 1] where the
    graph takes it) as tensors viewing numpy buffers the decoder keeps, for a CPU module: a step writes two numbers
    instead of making three tensors. Why it matters: a step streams the weights through the caches, and the first
    Python work after it runs cold, ~0.1 ms a tensor made (SmolLM2-135M: 0.3 ms of a 4 ms step, BENCHMARKS.md
    session 48). `filled` is only read for its length: one view of a zero buffer per length, made once."""

    def __init__(self, max_seq: int, takes_filled: bool):
        from ..ir.arrays import aligned_contiguous
        from .memory import host_tensor

        # aligned, so that the tensors view these very arrays (host_tensor copies an unaligned one)
        self._ids, self._pos = aligned_contiguous(np.zeros((1, 1), np.int64)), aligned_contiguous(np.zeros(1, np.int64))
        self._tensors = (host_tensor(self._ids), host_tensor(self._pos))
        assert all(t.data_ptr() == a.ctypes.data for t, a in zip(self._tensors, (self._ids, self._pos)))
        self._zeros = host_tensor(np.zeros(max_seq, np.int64)) if takes_filled else None
        self._filled: dict[int, object] = {}

    def __call__(self, token: int, position: int) -> tuple:
        self._ids[0, 0], self._pos[0] = token, position
        if self._zeros is None:
            return self._tensors
        filled = self._filled.get(position)
        if filled is None:
            filled = self._filled[position] = self._zeros._create_view((position + 1,))
        return (*self._tensors, filled)
