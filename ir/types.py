"""Tensor types: a shape (ints, or names for symbolic dims such as the sequence length) and a dtype.

Dtypes are short names (`f32`, `i64`, ...) so the text form stays readable; `np_dtype` maps them to numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dims import Dim, canonical, evaluate, is_dim_text, split_dims

DTYPES = {
    "f32": np.float32,
    "f16": np.float16,
    "f64": np.float64,
    "i64": np.int64,
    "i32": np.int32,
    "u8": np.uint8,
    "bool": np.bool_,
}
_FROM_NUMPY = {np.dtype(v): k for k, v in DTYPES.items()}


def np_dtype(dtype: str) -> np.dtype:
    return np.dtype(DTYPES[dtype])


def dtype_of(array: np.ndarray) -> str:
    try:
        return _FROM_NUMPY[np.dtype(array.dtype)]
    except KeyError:
        raise TypeError(f"dtype {array.dtype} has no IR equivalent; supported: {sorted(DTYPES)}") from None


# the dtype sums over values of a dtype run in where an op accumulates (ops marked `accumulate`, ir/ops.py); others
# their own. A float16 sum of 16384 values near 1 stalls at 2048, where each addend is below half the spacing: a
# mean 0.33 where torch, which sums float16 in float32, gives 1.0
ACCUMULATION_DTYPES = {"f16": "f32"}


def summing_dtype(dtype: str) -> str:
    """The dtype sums over `dtype` values run in (float16 -> float32, as torch's)."""
    return ACCUMULATION_DTYPES.get(dtype, dtype)


def is_float(dtype: str) -> bool:
    return dtype.startswith("f")


def positive_axis(axis: int, rank: int) -> int:
    """An axis (a torch dim, an ONNX axis, an op's `axis` attr; negative counts from the end) as an index into a
    tensor of rank `rank`."""
    return axis + rank if axis < 0 else axis


@dataclass(frozen=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: str

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise TypeError(f"unknown dtype {self.dtype!r}; supported: {sorted(DTYPES)}")
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"

    @staticmethod
    def parse(text: str) -> TensorType:
        dtype, bracket, rest = text.strip().partition("[")
        if not bracket or not rest.endswith("]"):
            raise ValueError(f"a tensor type reads like f32[1,seq,64], got {text[:80]!r}")
        dims = rest[:-1].strip()
        shape = tuple(int(d) if d.isdigit() else d for d in (x.strip() for x in split_dims(dims))) if dims else ()
        if not all(isinstance(d, int) or is_dim_text(d) for d in shape):
            raise ValueError(f"a dim is a size, a name or an affine expression of names and floor divisions by "
                             f"constants (kv+1, (seq+63)//64), got {text[:80]!r}")
        return TensorType(tuple(canonical(d) if isinstance(d, str) else d for d in shape), dtype)


def broadcast_shapes(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """numpy broadcasting over shapes that may hold symbolic dims (a name broadcasts like any size)."""
    rank = max(len(s) for s in shapes)
    out: list[Dim] = []
    for i in range(rank):
        dims = {s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise TypeError(f"shapes {shapes} do not broadcast (axis {i}: {sorted(map(str, dims))})")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def resolve(shape: tuple[Dim, ...], env: dict[str, int]) -> tuple[int, ...]:
    return tuple(evaluate(d, env) for d in shape)
