"""Shared by the kernel tests of every target: inputs with a chosen active-neuron set, numpy references, tolerances,
hypothesis strategies, and per-target runners that cache built kernels for the whole session.

Inputs: x > 0 and the gate rows of inactive neurons < 0, so an inactive neuron's gate is negative for every token
(exactly 0 after relu/fatrelu with threshold >= 0) and exact mode must skip it; active neurons get random-sign
gate rows. References are computed in float64 from the weights as the kernel sees them (fp16 weights: the
fp16-rounded values), and compared within the dtype's tolerance, scaled by the sum of the absolute terms (a
float32 sum's error bound), so cancellation in the reference never makes a tolerance meaningless.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import strategies as st

QUANT_DTYPES = ("q8_0", "q4_0", "q4_1")  # quantized weight layouts (ir.quant): the reference uses their exact values
RTOL = {"float32": 1e-4, "float16": 1e-3, **dict.fromkeys(QUANT_DTYPES, 1e-4)}
DTYPES = ("float32", "float16")
KINDS = ("exact", "indexed", "dense", "linear", "threshold")
GELU_C = 0.7978845608028654


# --- activations and references --------------------------------------------------------------------------------
def act(kind: str, v: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """The activations as the IR defines them: `gelu` is the erf form, `gelu_tanh` the tanh one."""
    if kind == "relu":
        return np.maximum(v, 0)
    if kind == "fatrelu":
        return np.where(v > threshold, v, 0)
    if kind == "relu2":
        return np.square(np.maximum(v, 0))
    if kind == "relu6":
        return np.clip(v, 0, 6)
    if kind == "unit":  # a non-gated MLP's up factor
        return np.ones_like(v)
    if kind == "silu":
        return v / (1 + np.exp(-v))
    if kind == "gelu":
        from scipy.special import erf

        return 0.5 * v * (1 + erf(v / np.sqrt(2)))
    if kind == "gelu_tanh":
        return 0.5 * v * (1 + np.tanh(GELU_C * (v + 0.044715 * v**3)))
    return v


ir_act = act  # every kernel family computes the IR's activations (one activation table)


def f64(*arrays):
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def mlp_reference(x, wg, wu, wd_t, gate_act="relu", up_act="identity", threshold=0.0, mask=None):
    """(out, scale): the gated MLP in float64 and the sum of its absolute terms (the error scale).
    mask [M, n_ff] (indexed mode): 1 for the neurons a token computes, 0 elsewhere."""
    x, wg, wu, wd_t = f64(x, wg, wu, wd_t)
    h = act(gate_act, x @ wg.T, threshold) * act(up_act, x @ wu.T)
    g_scale = np.abs(x) @ np.abs(wg).T
    g_scale = 2 * g_scale**2 if gate_act == "relu2" else g_scale  # relu2: |g|² and twice g's relative error
    u_scale = np.ones_like(g_scale) if up_act == "unit" else np.abs(x) @ np.abs(wu).T
    terms = g_scale * u_scale  # bounds |act(g)| * |u| and their errors
    if mask is not None:
        h, terms = h * mask, terms * mask
    return h @ wd_t, terms @ np.abs(wd_t)


def threshold_reference(x, wg, wu, wd_t, gate_act, up_act, threshold, criterion, h_cut=None):
    """(out, scale, slack) of the threshold kernel in float64 (`h_cut`: criterion 'gate' then a cut on |h|, as a
    routed threshold expert's). A value within float32 rounding of a threshold may fall on either side in the kernel,
    so such (token, neuron) pairs add their whole term to `slack`."""
    x, wg, wu, wd_t = f64(x, wg, wu, wd_t)
    a, u = ir_act(gate_act, x @ wg.T, threshold), act(up_act, x @ wu.T)
    terms = (np.abs(x) @ np.abs(wg).T) * (np.abs(x) @ np.abs(wu).T)
    dot_err = 1e-5 * (np.abs(x) @ np.abs(wg).T)  # float32 error of the gate dot, before the activation
    if criterion == "gate":
        keep = np.abs(a) > threshold
        near = np.abs(np.abs(a) - threshold) <= dot_err * 4 + 1e-6
        h = np.where(keep, a, 0) * u
        if h_cut is not None:
            near |= np.abs(np.abs(h) - h_cut) <= 1e-5 * terms * 4 + 1e-6
            h = np.where(np.abs(h) > h_cut, h, 0)
    else:
        full = a * u
        keep = np.abs(full) > threshold
        near = np.abs(np.abs(full) - threshold) <= 1e-5 * terms * 4 + 1e-6
        h = np.where(keep, full, 0)
    slack = (np.abs(a * u) * near) @ np.abs(wd_t)
    return h @ wd_t, terms @ np.abs(wd_t), slack * 1.01


def linear_reference(x, w, b=None):
    x, w = f64(x, w)
    out = x @ w.T + (0 if b is None else b)
    return out, np.abs(x) @ np.abs(w).T + (0 if b is None else np.abs(b))


def assert_close(out, ref, scale, dtype, slack=0.0):
    """|out - ref| <= rtol * (scale + 1e-3 * max scale) + slack: the float32 summation error bound, times the
    dtype's tolerance (fp16 weights: the reference already uses the fp16-rounded weights), plus what terms the
    reference cannot decide (threshold kernels) may add."""
    rtol = RTOL[dtype]
    bound = rtol * (scale + 1e-3 * max(float(np.max(scale, initial=0.0)), 1.0)) + slack
    err = np.abs(out.astype(np.float64) - ref)
    assert np.all(np.isfinite(out)), "non-finite output"
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else ()
    assert np.all(err <= bound), f"max excess at {worst}: got {out[worst]}, want {ref[worst]} (bound {bound[worst]})"


# --- inputs --------------------------------------------------------------------------------------------------------
def mlp_inputs(rng, M, d, n_ff, dtype, active: np.ndarray, gate_act="relu"):
    """x [M, d] float32 and (w_gate, w_up, w_down_t) [n_ff, d] in `dtype`: neurons outside `active` (indices) have
    a negative gate for every token; for ReLU-family gates, active ones a positive gate for at least one token."""
    x = (np.abs(rng.standard_normal((M, d))) + 0.1).astype(np.float32)
    wg = rng.standard_normal((n_ff, d)).astype(np.float32)
    mask = np.zeros(n_ff, bool)
    mask[active] = True
    wg[~mask] = -np.abs(wg[~mask])
    if gate_act in ("relu", "fatrelu", "relu2", "relu6"):
        wg[mask] = np.abs(wg[mask])
    wu = rng.standard_normal((n_ff, d)).astype(np.float32)
    wd_t = rng.standard_normal((n_ff, d)).astype(np.float32)
    return x, [w.astype(dtype) if dtype not in QUANT_DTYPES else w for w in (wg, wu, wd_t)]


def kernel_weights(ws, dtype):
    """(arrays the kernel takes, float arrays the reference uses): quantized blobs and their dequantized values
    for a quantized layout, the weights themselves otherwise."""
    if dtype not in QUANT_DTYPES:
        return list(ws), list(ws)
    from actsparse.ir.quant import quantize

    qs = [quantize(w, dtype) for w in ws]
    return [q.blob for q in qs], [q.dequantize() for q in qs]


def index_inputs(sets: list[np.ndarray], n_ff: int):
    """idx [M, K] int32 (padded past count with n_ff - 1, which the kernel must ignore) and count [M] int32."""
    K = max([len(s) for s in sets] + [1])
    idx = np.full((len(sets), K), n_ff - 1, np.int32)
    for m, s in enumerate(sets):
        idx[m, : len(s)] = s
    mask = np.zeros((len(sets), n_ff))
    for m, s in enumerate(sets):
        mask[m, s] = 1
    return idx, np.array([len(s) for s in sets], np.int32), mask


# --- strategies ----------------------------------------------------------------------------------------------------
@st.composite
def neuron_sets(draw, n: int, shuffle: bool = False) -> np.ndarray:
    """A set of neuron indices out of n: empty, full, random at any density, or clustered contiguous runs."""
    kind = draw(st.sampled_from(["empty", "full", "random", "clustered"]))
    if kind == "empty":
        chosen = np.zeros(0, np.int64)
    elif kind == "full":
        chosen = np.arange(n)
    elif kind == "random":
        density = draw(st.floats(0.0, 1.0))
        seed = draw(st.integers(0, 2**31 - 1))
        chosen = np.flatnonzero(np.random.default_rng(seed).random(n) < density)
    else:
        runs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 12)), min_size=1, max_size=4))
        chosen = np.unique(np.concatenate([np.arange(s, min(n, s + length)) for s, length in runs]))
    if shuffle and len(chosen) > 1:
        chosen = np.random.default_rng(draw(st.integers(0, 2**31 - 1))).permutation(chosen)
    return chosen.astype(np.int32)


dims = st.integers(1, 70)
tokens = st.integers(1, 5)


def examples(divisor: int) -> int:
    """Examples for a property whose every example builds kernels: the profile's max_examples // divisor."""
    from hypothesis import settings

    return max(2, settings.default.max_examples // divisor)


# --- calls ------------------------------------------------------------------------------------------------------
@dataclass
class Call:
    """One kernel call: its arguments (the output last, NaN-filled) and the reference to compare with."""

    args: list
    ref: np.ndarray
    scale: np.ndarray
    dtype: str
    slack: np.ndarray | float = 0.0

    def check(self, out):
        assert_close(out, self.ref, self.scale, self.dtype, self.slack)


def criterion_of(acts) -> str:
    return acts[3] if len(acts) > 3 else "gate"


def x_seen(x, x8: bool):
    """x as the kernel's row dots see it: rounded to 8-bit blocks on the int8-dot path (`ir.quant.round_x8`)."""
    if not x8:
        return x
    from actsparse.ir.quant import round_x8

    return round_x8(x)


def mlp_call(kind, rng, M, d, n_ff, dtype, acts, active, token_sets=None, x8=False, down_dtype=None) -> Call:
    """acts: (gate_act, up_act, threshold), and the criterion for the threshold kernel. x8: the kernel's gate / up
    dots take x rounded to 8-bit blocks (the reference does too). down_dtype: w_down_t's layout where it is not
    `dtype` (both quantized)."""
    gate_act, up_act, threshold = acts[:3]
    x, ws = mlp_inputs(rng, M, d, n_ff, dtype, active, gate_act)
    if down_dtype in (None, dtype):
        kw, ws = kernel_weights(ws, dtype)
    else:
        (kw, ws), (kd, wd) = kernel_weights(ws[:2], dtype), kernel_weights(ws[2:], down_dtype)
        kw, ws = kw + kd, ws + wd
    out = np.full((M, d), np.nan, np.float32)
    xr = x_seen(x, x8)
    if kind == "threshold":
        ref, scale, slack = threshold_reference(xr, *ws, gate_act, up_act, threshold, criterion_of(acts))
        return Call([x, *kw, out], ref, scale, dtype, slack)
    if kind == "indexed":
        idx, count, mask = index_inputs(token_sets, n_ff)
        ref, scale = mlp_reference(xr, *ws, gate_act, up_act, threshold, mask)
        return Call([x, *kw, idx, count, out], ref, scale, dtype)
    ref, scale = mlp_reference(xr, *ws, gate_act, up_act, threshold)
    return Call([x, *kw, out], ref, scale, dtype)


def linear_call(rng, M, k, n, dtype, bias, x8=False) -> Call:
    x = rng.standard_normal((M, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(dtype if dtype not in QUANT_DTYPES else np.float32)
    (kw,), (w,) = kernel_weights([w], dtype)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    ref, scale = linear_reference(x_seen(x, x8), w, b)
    return Call([x, kw, *([b] if bias else []), np.full((M, n), np.nan, np.float32)], ref, scale, dtype)


def primfunc(kind, d, n_ff, dtype, sched, acts=("relu", "identity", 0.0), bias=False, down_dtype=None):
    from actsparse.codegen.kernels import kernel

    if kind == "linear":
        return kernel("linear", d, n_ff, dtype=dtype, sched=sched, bias=bias)
    gate_act, up_act, threshold = acts[:3]
    extra = {"criterion": criterion_of(acts)} if kind == "threshold" else {}
    extra |= {"down_dtype": down_dtype} if down_dtype else {}
    return kernel(kind, d, n_ff, gate_act=gate_act, up_act=up_act, threshold=threshold, dtype=dtype, sched=sched,
                  **extra)


# --- per-target runners, caching builds for the session ------------------------------------------------------------
_NATIVE: dict = {}
_CROSS: dict = {}


def run_native(prim, calls: list, target=None, outputs: int | None = None):
    """Build (cached) for this machine's x86 target and run every call (a Call, or a plain argument list); returns
    each call's output (its last argument), or with `outputs` the list of its last `outputs` arguments."""
    import tvm

    from actsparse import targets
    from actsparse.codegen.kernels.common import build_standalone

    target = target or targets.get("x86")
    key = (str(prim.attrs["global_symbol"]), str(target.tvm))
    if key not in _NATIVE:
        _NATIVE[key] = build_standalone(prim, target.tvm_target())
    outs = []
    for call in calls:
        tensors = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in getattr(call, "args", call)]
        _NATIVE[key](*tensors)
        got = [t.numpy() for t in tensors[len(tensors) - (outputs or 1):]]
        outs.append(got if outputs else got[0])
    return outs


def require_cross_tools():
    from .cross import missing_reason

    reason = missing_reason("aarch64")
    if reason:
        pytest.skip(f"ARM tests need qemu-aarch64 and aarch64-linux-gnu-gcc: {reason}")


def cross_kernels(prims, target=None):
    """CrossKernels for these PrimFuncs (built, linked and cached once per session)."""
    from actsparse import targets

    from .cross import CrossKernels

    require_cross_tools()
    target = target or targets.get("arm")
    key = (tuple(str(p.attrs["global_symbol"]) for p in prims), str(target.tvm))
    if key not in _CROSS:
        _CROSS[key] = CrossKernels(list(prims), target)
    return _CROSS[key]


def run_cross(prim, calls: list[Call], target=None):
    """Run every call of one kernel under qemu in one emulator process; returns the outputs."""
    kernels = cross_kernels([prim], target)
    name = str(prim.attrs["global_symbol"])
    results = kernels.run([(name, c.args, [len(c.args) - 1]) for c in calls])
    return [r[0] for r in results]


def require_nvcc():
    from actsparse.codegen.cuda_support import nvcc_path

    if nvcc_path() is None:
        pytest.skip("CUDA compile tests need nvcc (CUDA toolkit)")


def cuda_build(prims, target=None):
    """Build PrimFuncs for CUDA in one module (nvcc runs once); returns (module, CUDA source)."""
    from actsparse import targets
    from actsparse.codegen.cuda_support import cuda_source
    from actsparse.codegen.kernels.common import build_kernels

    require_nvcc()
    target = target or targets.get("cuda")
    module = build_kernels(list(prims), target.tvm_target())
    return module, cuda_source(module.mod)


_SIMT: dict = {}


def simt_kernels(prims, target=None):
    """SimtKernels (tests/simt.py: CUDA kernels built by TVM + nvcc, run by the SIMT emulator), cached."""
    from actsparse import targets

    from . import simt

    require_nvcc()
    reason = simt.missing()
    if reason:
        pytest.skip(f"the CUDA emulator needs {reason}")
    target = target or targets.get("cuda")
    key = (tuple(str(p.attrs["global_symbol"]) for p in prims), str(target.tvm))
    if key not in _SIMT:
        _SIMT[key] = simt.SimtKernels(list(prims), target)
    return _SIMT[key]


def run_batch(kernels, jobs: list[tuple[object, list[Call]]]):
    """Run (primfunc, calls) jobs on HarnessKernels in one process; returns the outputs per job."""
    from actsparse.codegen.kernels.scratch import scratch_arrays

    flat = [(str(prim.attrs["global_symbol"]), [*c.args, *scratch_arrays(prim, c.args)], [len(c.args) - 1])
            for prim, calls in jobs for c in calls]
    results = iter(kernels.run(flat))
    return [[next(results)[0] for _ in calls] for _, calls in jobs]


def check_on_simt(jobs: list[tuple[object, list[Call]]]) -> None:
    """Run (primfunc, calls) jobs under the SIMT emulator in one process and check every call."""
    for (_, calls), outs in zip(jobs, run_batch(simt_kernels([prim for prim, _ in jobs]), jobs)):
        for call, out in zip(calls, outs):
            call.check(out)


def check_on_gpu(jobs: list[tuple[object, list[Call]]]) -> None:
    """Run (primfunc, calls) jobs on a lent GPU (tests/test_kernels_cuda.py's runner) and check every call."""
    from .test_kernels_cuda import run_gpu

    for prim, calls in jobs:
        for call, out in zip(calls, run_gpu(prim, calls)):
            call.check(out)


def has_gpu() -> bool:
    from actsparse.targets.cuda import gpu_device

    return gpu_device() is not None


THOROUGH = os.environ.get("ACTSPARSE_HYPOTHESIS") == "thorough"
