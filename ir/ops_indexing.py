"""Indexing and scan ops of the long tail (routers, position ids, interleaved tables): gather, scatter, cumsum,
argmax. `ops.py` defines these entries into the one op table (`ops.OPS`); they live here so it stays short."""

from __future__ import annotations

import numpy as np

from .types import TensorType, positive_axis


def _gather_type(types, attrs):
    return TensorType(types[1].shape, types[0].dtype)


def _scatter_ref(x, index, src, attrs, env):
    out = np.array(x, copy=True)
    np.put_along_axis(out, index, np.broadcast_to(src, index.shape).astype(x.dtype), axis=attrs["axis"])
    return out


def _cumsum_ref(x, attrs, env):
    return np.cumsum(x, axis=attrs["axis"]).astype(x.dtype)


def _argmax_type(types, attrs):
    t = types[0]
    axis = positive_axis(attrs["axis"], t.rank)
    shape = tuple(1 if i == axis else d for i, d in enumerate(t.shape)) if attrs["keepdim"] else \
        tuple(d for i, d in enumerate(t.shape) if i != axis)
    return TensorType(shape, "i64")


def _sort_ref(x, attrs, env):
    axis = attrs["axis"]
    order = np.argsort(-x if attrs["descending"] else x, axis=axis, kind="stable")  # ties: the lower index first
    return np.take_along_axis(x, order, axis=axis) if attrs["output"] == "values" else order.astype(np.int64)


# (name, arity, infer, reference, attrs, doc) -> ops.define
INDEXING_OPS = [
    ("gather", 2, _gather_type, lambda x, i, attrs, env: np.take_along_axis(x, i, axis=attrs["axis"]),
     {"axis": 0},
     "out[..i..] = x[.. index[..i..] ..] along one axis (torch.gather; the index has the result's shape)"),
    ("scatter", 3, lambda t, a: t[0], _scatter_ref, {"axis": 0},
     "x with x[.. index[..i..] ..] = src[..i..] along one axis (torch.scatter; src may be a scalar)"),
    ("cumsum", 1, lambda t, a: t[0], _cumsum_ref, {"axis": 0}, "running sum along one axis"),
    ("argmax", 1, _argmax_type,
     lambda x, attrs, env: np.argmax(x, axis=attrs["axis"], keepdims=attrs["keepdim"]).astype(np.int64),
     {"axis": 0, "keepdim": False}, "index of the (first) largest entry along one axis"),
    ("sort", 1, lambda t, a: TensorType(t[0].shape, t[0].dtype if a.get("output", "values") == "values" else "i64"),
     _sort_ref,
     {"axis": -1, "descending": False, "output": "values"},
     "x sorted along one axis (stable), output 'values' or their 'indices' (torch.sort; JetMoE's router)"),
]
