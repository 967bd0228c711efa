"""Convolution ops of the long tail: `conv1d`, the depthwise causal convolution of state-space and linear-attention
layers (Mamba, Qwen3-Next, LFM2, ...) and of short-conv attention. `ops.py` defines these entries into the one
op table (`ops.OPS`); they live here so it stays short."""

from __future__ import annotations

import numpy as np

from .dims import add
from .types import TensorType


def conv1d_length(length, kernel: int, stride: int, padding: int, dilation: int):
    """The output length of a 1-d convolution: an int, or an affine dim of a symbolic length. With stride 1 the
    length moves by a constant (a causal convolution padded by kernel-1 on both ends: `seq` -> `seq+3`, which the
    layer then cuts back with `[..., :seq]`); a stride divides it, which an affine dim cannot say."""
    if isinstance(length, str):
        if stride != 1:
            raise TypeError(f"conv1d with stride {stride} on the symbolic length {length} divides it, which a dim "
                            "cannot name; import with a static sequence length")
        return add(length, 2 * padding - dilation * (kernel - 1))
    return (length + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _conv1d_type(types, attrs):
    x, w = types[0], types[1]
    if x.rank != 3 or w.rank != 3 or x.shape[1] != w.shape[1] * attrs["groups"]:
        raise TypeError(f"conv1d: x {x} [N, C, L] does not match weight {w} [O, C/groups, K] "
                        f"(groups {attrs['groups']})")
    length = conv1d_length(x.shape[2], w.shape[2], attrs["stride"], attrs["padding"], attrs["dilation"])
    return TensorType((x.shape[0], w.shape[0], length), x.dtype)


def _conv1d_ref(x, w, *rest):
    bias, attrs = (rest[0] if len(rest) == 3 else None), rest[-2]
    stride, padding, dilation, groups = (attrs[k] for k in ("stride", "padding", "dilation", "groups"))
    n, _, length = x.shape
    out_ch, per_group, kernel = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    out_len = conv1d_length(length, kernel, stride, padding, dilation)
    xg = xp.reshape(n, groups, per_group, -1)
    wg = w.reshape(groups, out_ch // groups, per_group, kernel).astype(np.float64)
    out = np.zeros((n, groups, out_ch // groups, out_len))
    for k in range(kernel):  # one shifted window per tap: out[t] += w[k] · x[t·stride + k·dilation]
        window = xg[..., k * dilation: k * dilation + stride * (out_len - 1) + 1: stride].astype(np.float64)
        out += np.einsum("gop,ngpt->ngot", wg[..., k], window)
    out = out.reshape(n, out_ch, out_len)
    return (out if bias is None else out + bias[:, None]).astype(x.dtype)


# (name, arity, infer, reference, attrs, doc) -> ops.define
CONV_OPS = [
    ("conv1d", (2, 3), _conv1d_type, _conv1d_ref, {"stride": 1, "padding": 0, "dilation": 1, "groups": 1},
     "x[N, C, L] convolved with w[O, C/groups, K] (+ bias[O]), zero padding on both ends (torch.conv1d)"),
]
