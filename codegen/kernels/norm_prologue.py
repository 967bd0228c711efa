"""A kernel that normalises its own input: x = x_raw · rsqrt(mean(x_raw², last axis) + eps) [· γ] computed in a
prologue of any CPU kernel whose first parameter is x [M, k] float32, instead of by a call of its own.

Why: in a decoder every layer's q / k / v and gate / up read an RMS-normed residual stream. As separate calls the
norm costs a call and its [B, S, k] output a reshape to the kernels' [M, k] (a reshape after a reduction does not
fuse): 61 norm calls and 64 reshapes in a SmolLM2-135M step, ~0.15 ms of ~3.5. The prologue reads x_raw in its own
shape ([M, k] or [B, S, k]), writes the normed rows into a buffer that takes the place of the kernel's x, then runs
the kernel's body unchanged (its x8 preparation, its row dots). The sum of squares runs in LANES partial sums (a
vector), the rest as the graph's ops compute it: r = 1 / sqrt(sum / k + eps), x · r, then · γ.

`with_rms_prologue(prim, k, eps, lead, weighted)`: the new PrimFunc (x_raw[, γ], <prim's other parameters>), global
symbol prim's + `prologue_suffix` (which `unfused_args` reads back: the report and the step profile see the
kernel's x through it). It composes TIR rather than re-deriving every kernel's parameter list: the
prologue is parsed with prim's own x buffer and M in its closure, then put before prim's body, x allocated there.
"""

from __future__ import annotations

import re
import struct
from functools import cache

import numpy as np
from tvm.script import tirx as T

LANES = 16   # partial sums of the squares: one AVX-512 vector, two AVX2 / four NEON ones


@cache
def with_rms_prologue(prim, k: int, eps: float, lead: int, weighted: bool):
    """`prim` (x [M, k] float32 first) with x computed from x_raw ([M, k] for lead 1, [B, S, k] for lead 2: B·S = M,
    asserted where another parameter gives M, else M is bound to it) and, where `weighted`, γ [k] float32 (the
    norm's weight)."""
    from tvm import tirx

    x = prim.params[0]
    if len(x.shape) != 2 or not hasattr(x.shape[1], "value") or int(x.shape[1]) != k or str(x.dtype) != "float32":
        raise ValueError(f"with_rms_prologue: {prim.attrs['global_symbol']}'s first parameter is not x [M, {k}] "
                         "float32")
    if lead not in (1, 2):
        raise ValueError(f"with_rms_prologue: x_raw has 1 or 2 leading dims, got {lead}")
    M = x.shape[0]
    given = any(isinstance(d, tirx.Var) and d.same_as(M) for p in prim.params[1:] for d in getattr(p, "shape", ()))
    prologue = _prologue(x, k, float(eps), lead, weighted, checked=given)
    inputs = list(prologue.params) if weighted else list(prologue.params)[:1]
    first = [tirx.AllocBuffer(x)]
    if lead == 2 and not given and isinstance(M, tirx.Var):   # (the linear with a residual: only x gave M)
        B, S = prologue.params[0].shape[:2]
        first.insert(0, tirx.LetStmt(M, B * S))
    body = tirx.SeqStmt([*first, prologue.body, prim.body])
    name = f"{prim.attrs['global_symbol']}{prologue_suffix(eps, lead, weighted)}"
    return tirx.PrimFunc([*inputs, *prim.params[1:]], body, attrs=prim.attrs).with_attr("global_symbol", name)


def prologue_suffix(eps: float, lead: int, weighted: bool) -> str:
    """What `with_rms_prologue` appends to a kernel's symbol: eps as float32 bits (exact: two norms whose eps differ
    never share a kernel), the leading dims, g where it takes γ."""
    return f"_rms{struct.pack('>f', eps).hex()}l{lead}{'g' if weighted else ''}"


def prologue_of(symbol: str) -> tuple[float, int, bool] | None:
    """(eps, lead, weighted) of a kernel symbol `with_rms_prologue` made, else None."""
    found = _SUFFIX.search(symbol)
    if found is None:
        return None
    return struct.unpack(">f", bytes.fromhex(found.group(1)))[0], int(found.group(2)), found.group(3) == "g"


def unfused_args(symbol: str, args: list) -> list:
    """A call's arguments as the kernel without its prologue takes them: x_raw[, γ] (CPU tensors or arrays) replaced
    by x, the normed rows [M, k] as a numpy array (what the runtime's report and profiles read as the kernel's input);
    any other call's arguments as they are."""
    found = prologue_of(symbol)
    if found is None:
        return list(args)
    eps, _, weighted = found
    x_raw = np.asarray(args[0].numpy() if hasattr(args[0], "numpy") else args[0], np.float32)
    gamma = np.asarray(args[1].numpy() if hasattr(args[1], "numpy") else args[1], np.float32) if weighted else None
    return [rms_normed(x_raw, gamma, eps), *args[2 if weighted else 1:]]


def rms_normed(x_raw: np.ndarray, gamma: np.ndarray | None, eps: float) -> np.ndarray:
    """The prologue's x in numpy: rows [M, k] of x_raw · (1 / sqrt(mean(x_raw²) + eps)) [· γ], float32."""
    flat = x_raw.reshape(-1, x_raw.shape[-1]).astype(np.float32)
    r = (1.0 / np.sqrt(np.square(flat.astype(np.float64)).mean(-1, keepdims=True) + eps)).astype(np.float32)
    return flat * r * (gamma if gamma is not None else np.float32(1))


_SUFFIX = re.compile(r"_rms([0-9a-f]{8})l([12])(g?)$")


def _prologue(x, k: int, eps: float, lead: int, weighted: bool, checked: bool):
    """The prologue as a PrimFunc (x_raw, g) writing `x` (a buffer of another function: not well-formed alone)."""
    M = x.shape[0]
    n_vec, rem = k // LANES, k % LANES
    kf, e = T.float32(k), T.float32(eps)

    @T.macro
    def scaled(flat, g, x, m, i, r):
        if weighted:
            x[m, i] = flat[m, i] * r * g[i]
        else:
            x[m, i] = flat[m, i] * r

    @T.macro
    def normed_rows(flat, g):
        for m in range(M):
            acc = T.alloc_buffer((LANES,), "float32")
            for v in T.vectorized(LANES):
                acc[v] = T.float32(0)
            for i in range(n_vec):
                for v in T.vectorized(LANES):
                    acc[v] = acc[v] + flat[m, i * LANES + v] * flat[m, i * LANES + v]
            for v in range(rem):
                acc[v] = acc[v] + flat[m, n_vec * LANES + v] * flat[m, n_vec * LANES + v]
            total = T.alloc_buffer((1,), "float32")
            total[0] = T.float32(0)
            for v in range(LANES):
                total[0] = total[0] + acc[v]
            r: T.let = T.float32(1) / T.sqrt(total[0] / kf + e)
            for i in range(n_vec):
                for v in T.vectorized(LANES):
                    scaled(flat, g, x, m, i * LANES + v, r)
            for v in range(rem):
                scaled(flat, g, x, m, n_vec * LANES + v, r)

    if lead == 2:
        @T.prim_func(check_well_formed=False)
        def prologue3(x_raw: T.handle, g: T.Buffer((k,), "float32")):
            B, S = T.int64(), T.int64()
            xr = T.match_buffer(x_raw, (B, S, k), "float32")
            if checked:
                assert B * S == M, "x_raw's B * S is not the output's rows"
            flat = T.decl_buffer((M, k), "float32", data=xr.data)
            normed_rows(flat, g)

        return prologue3

    @T.prim_func(check_well_formed=False)
    def prologue2(x_raw: T.handle, g: T.Buffer((k,), "float32")):
        xr = T.match_buffer(x_raw, (M, k), "float32")   # the kernel's M: x_raw gives it
        normed_rows(xr, g)

    return prologue2
