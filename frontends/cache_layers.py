"""Cache layers whose tensors are inputs of the exported decoding graph (frontends/kv_cache.py), one class per kind
of layer transformers' own caches have:

    ExplicitKVLayer      attention keys and values: [1, kv_heads, max_seq, head_dim], written at the call's
                         positions with `index_copy` (functional), read as the filled prefix
    ExplicitStateLayer   a recurrent mixer's fixed-size states (Mamba's convolution window and SSM state, gated
                         DeltaNet's ...): `conv_states[i]`, `recurrent_states[i]`, replaced by each call
    ExplicitHybridLayer  both, for layers that hold attention and a recurrent state (Falcon-H1)

A KV layer may hold more per-position tensors than K and V (`POSITION_CACHES`: DeepSeek-V3.2's sparse-attention
indexer keys, [1, max_seq, d]); they are graph inputs written at the call's positions as K and V are, through the
method transformers' cache calls for them (`cache.update_indexer`).

The state layers always report a previous state: the states start as zeros, and a zero convolution window and a zero
recurrent state are what the models' first-token paths assume, so the model takes its one-token (recurrent) branch
from the first token on; the graph is then exported for one token per call (decoder_export.EXPORT_VARIANTS). A model's
recurrent kernels may write a state in place (`conv_state.copy_(...)`); the export records that as an input mutation,
and the layer's tensor then reads the written value, which the graph returns as the state's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PositionCache:
    """A per-position tensor a cache layer keeps beside K and V: written by `update` (the layer method transformers'
    `Cache` forwards to), one slot per position along `axis`."""

    update: str
    axis: int
    prefix: str  # its graph input's name: prefix + layer index


# the cache layer attribute -> how it is written (transformers' DynamicIndexedLayer: `indexer_keys` [b, seq, d],
# written by `update_indexer`); a new kind of per-position cache is one entry here
POSITION_CACHES = {"indexer_keys": PositionCache("update_indexer", 1, "ik")}


def layer_classes():
    """(ExplicitKVLayer, ExplicitStateLayer, ExplicitHybridLayer, ExplicitEmptyLayer, ExplicitCache), built on
    first use (transformers is imported lazily)."""
    from transformers.cache_utils import Cache, CacheLayerMixin, DummyLayer, LinearAttentionCacheLayerMixin

    class ExplicitKVLayer(CacheLayerMixin):
        """A static cache layer whose tensors are graph inputs; `update` writes functionally (index_copy)."""

        is_compileable = True
        is_sliding = False

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, offset: torch.Tensor, filled, extras=None):
            CacheLayerMixin.__init__(self)
            self.keys, self.values, self.offset, self.filled = keys, values, offset, filled
            self.seen = offset  # the tokens before this call, as get_seq_length reports them (kv_cache.py's
            # `seen_from_shapes` variant makes it kv - seq, a size, for forwards that slice by it)
            for name, tensor in (extras or {}).items():  # POSITION_CACHES tensors
                setattr(self, name, tensor)
            self.is_initialized = True

        def _write(self, cache: torch.Tensor, new: torch.Tensor, axis: int) -> torch.Tensor:
            positions = torch.arange(new.shape[axis], device=new.device) + self.offset
            return torch.index_copy(cache, axis, positions, new.to(cache.dtype))

        def _filled(self, cache: torch.Tensor, axis: int) -> torch.Tensor:
            # the filled prefix only: slots 0 .. kv - 1 (a slice view would make torch branch on whether it is
            # contiguous, i.e. on kv == max_seq, a guard that fails the export)
            return cache.index_select(axis, torch.arange(self.filled, device=cache.device))

        def lazy_initialization(self, *args, **kwargs) -> None:  # the tensors are given
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            self.keys, self.values = self._write(self.keys, key_states, 2), self._write(self.values, value_states, 2)
            return self._filled(self.keys, 2), self._filled(self.values, 2)

        def _update_position_cache(self, name: str, new: torch.Tensor) -> torch.Tensor:
            axis = POSITION_CACHES[name].axis
            setattr(self, name, self._write(getattr(self, name), new, axis))
            return self._filled(getattr(self, name), axis)

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.filled, 0  # the filled slots, at absolute positions: the mask does the rest

        def get_seq_length(self):
            return self.seen

        def get_max_length(self) -> int:
            return self.keys.shape[-2]

    for name, cache in POSITION_CACHES.items():  # e.g. update_indexer(new) -> the filled indexer keys
        setattr(ExplicitKVLayer, cache.update, _position_update(name))

    class ExplicitStateLayer(LinearAttentionCacheLayerMixin):
        """Recurrent states that are graph inputs; an update replaces the tensor (functional)."""

        is_compileable = True

        def __init__(self, conv: dict[int, torch.Tensor], recurrent: dict[int, torch.Tensor], offset=0):
            LinearAttentionCacheLayerMixin.__init__(self, number_of_states=max([*conv, *recurrent], default=0) + 1)
            self.seen = offset  # the tokens before this call (see get_seq_length)
            for i, state in conv.items():
                self.conv_states[i], self.conv_kernel_size[i] = state, state.shape[-1]
                self.is_conv_states_initialized[i] = True
            for i, state in recurrent.items():
                self.recurrent_states[i] = state
                self.is_recurrent_states_initialized[i] = True
            self.has_previous_state = dict.fromkeys(self.has_previous_state, True)  # zeros: see the module docstring

        def lazy_initialization(self, *args, **kwargs) -> None:  # the tensors are given
            pass

        def update_conv_state(self, conv_states, state_idx: int = 0, **kwargs):
            # the window so far followed by the new columns (what the model's convolution reads), the last
            # kernel-size columns kept, as transformers' LinearAttentionLayer does
            full = torch.cat([self.conv_states[state_idx], conv_states.to(self.conv_states[state_idx].dtype)], dim=-1)
            self.conv_states[state_idx] = full[..., -self.conv_kernel_size[state_idx]:]
            return full

        def update_recurrent_state(self, recurrent_states, state_idx: int = 0, **kwargs):
            self.recurrent_states[state_idx] = recurrent_states.to(self.recurrent_states[state_idx].dtype)
            return self.recurrent_states[state_idx]

        # transformers 5.25 gives linear-attention layers a token count of their own (`cumulative_length_linear`,
        # advanced in place by `increase_count` beside its in-place convolution update), which its masks read as the
        # query offset, and which a hybrid layer's MRO would put ahead of the attention half's. Here the count is
        # the call's position, given as an input (`seen`, as ExplicitKVLayer's): reported as such, never kept.
        def get_seq_length(self, *args, **kwargs):
            return self.seen

        def increase_count(self, *args, **kwargs) -> None:
            pass

    class ExplicitHybridLayer(ExplicitStateLayer, ExplicitKVLayer):
        """Attention keys/values and recurrent states in one layer."""

        def __init__(self, keys, values, offset, filled, conv, recurrent, extras=None):
            ExplicitKVLayer.__init__(self, keys, values, offset, filled, extras)
            ExplicitStateLayer.__init__(self, conv, recurrent, offset)

    class ExplicitEmptyLayer(DummyLayer):
        """A layer whose state is not in the cache (none, or a recurrent state the model keeps on its module:
        RecurrentGemma's). It holds nothing but answers for the call's position as an attention layer would: masks
        ask layer 0 for the query offset and mask sizes when no layer says it is sliding (transformers 5.25)."""

        def __init__(self, offset, filled):
            DummyLayer.__init__(self)
            self.seen, self.filled = offset, filled

        def get_seq_length(self):
            return self.seen

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.filled, 0

    class ExplicitCache(Cache):
        def __init__(self, layers, lists=None):  # lists: only a model's own cache class has them (model_states.py)
            super().__init__(layers=layers)

    return ExplicitKVLayer, ExplicitStateLayer, ExplicitHybridLayer, ExplicitEmptyLayer, ExplicitCache


def _position_update(name: str):
    def update(self, new: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self._update_position_cache(name, new)

    return update
