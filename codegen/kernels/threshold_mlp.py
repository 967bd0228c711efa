"""Threshold-mode gated-MLP kernels for CPUs: a variant of the exact kernel (`sparse_mlp.py`) for any activation.

Training-free sparsity (CATS, TEAL, TurboSparse's top-k%) calls a neuron inactive for a token when its
activation is small rather than zero. Buffers are those of the exact kernel (x [M, d], w_gate / w_up /
w_down_t [n_ff, d], out [M, d]); per token m:

    criterion "gate"     (CATS)       a = act_g(w_gate[j]·x[m]);  a = a if |a| > t else 0;  h = a · act_u(w_up[j]·x[m])
    criterion "product"  (top-k%, TEAL) h = act_g(w_gate[j]·x[m]) · act_u(w_up[j]·x[m]);  h = h if |h| > t else 0
    out[m] = Σ_j h[m, j] · w_down_t[j]

act_g is any of relu / fatrelu / silu / gelu (erf) / gelu_tanh / identity (fatrelu uses the same t, which is
what the pass gives it: a ReLU-family block in threshold mode is FATReLU at t). Structure, as in the exact
kernel: in one parallel region each task streams its contiguous gate rows (dense), masks the activations, and
lists the neurons some token keeps; "gate" then gathers only the listed up rows, "product" needs every up row
(the criterion reads u) and compacts the kept h in place. A second region splits the output columns over the
tasks and streams the listed down rows. So "gate" reads gate + (1 - s)·(up + down), "product" gate + up +
(1 - s)·down bytes, at sparsity s. The result equals numpy's masked computation up to float32 summation order
(an activation within rounding of t may fall on either side).
"""

from __future__ import annotations

from functools import cache

from tvm.script import tirx as T

from .common import activation, axpy_macro, dots_macro, ir_activation, symbol, threshold_tag, zero_columns_macro
from .schedule import CpuSchedule
from .sparse_mlp import check_mlp

THRESHOLD_GATE_ACTS = ("relu", "fatrelu", "silu", "gelu", "gelu_tanh", "identity")
CRITERIA = ("gate", "product")


def check_threshold(gate_act: str, criterion: str) -> None:
    """One clear error for a threshold kernel request no kernel can serve (shared with the CUDA kernel)."""
    if gate_act not in THRESHOLD_GATE_ACTS:
        raise ValueError(f"gate_act must be one of {THRESHOLD_GATE_ACTS}, got {gate_act!r}")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


@cache
def threshold_gated_mlp(d: int, n_ff: int, *, gate_act: str = "silu", up_act: str = "identity",
                        threshold: float = 0.0, criterion: str = "gate", dtype: str = "float32",
                        sched: CpuSchedule):
    """Threshold-mode gated MLP: (x, w_gate, w_up, w_down_t, out), see the module docstring."""
    check_mlp(d, n_ff, "relu", up_act, dtype)
    check_threshold(gate_act, criterion)
    threads, R = sched.threads, sched.rows
    nper = (n_ff + threads - 1) // threads
    thr = T.float32(float(threshold))
    zero = T.float32(0)
    act_g, act_u = ir_activation(gate_act, threshold), activation(up_act)
    name = symbol("gmlp", "thr", criterion, f"d{d}", f"f{n_ff}", gate_act.replace("_", ""), up_act,
                  f"t{threshold_tag(threshold)}", dtype, sched.tag)
    axpy_all, _ = axpy_macro(d, dtype, sched, gathered=True)
    zero_cols = zero_columns_macro(d, sched)

    product = criterion == "product"
    if product:
        gate_dots, _ = dots_macro(d, dtype, sched, gathered=False, store=act_g)
    else:
        gate_dots, _ = dots_macro(d, dtype, sched, gathered=False,
                                  store=lambda s: T.if_then_else(T.abs(act_g(s)) > thr, act_g(s), zero))
    up_dots, _ = dots_macro(d, dtype, sched, gathered=not product)

    @T.prim_func
    def kernel(x_h: T.handle, w_gate: T.Buffer((n_ff, d), dtype), w_up: T.Buffer((n_ff, d), dtype),
               w_down_t: T.Buffer((n_ff, d), dtype), out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        M = T.int64()
        x = T.match_buffer(x_h, (M, d), "float32")
        out = T.match_buffer(out_h, (M, d), "float32")
        g = T.alloc_buffer((M, n_ff), "float32")  # activated gate by neuron ("gate": already masked)
        # h by slot, task t's slots from t * nper ("product": first by neuron, then compacted in place to slots)
        h = T.alloc_buffer((M, n_ff), "float32")
        idx = T.alloc_buffer((n_ff,), "int32")
        cnt = T.alloc_buffer((threads,), "int32")
        # 1) per task: gate over its contiguous rows (product: up too), list the neurons some token keeps
        for t in T.parallel(threads):
            c = T.alloc_buffer((1,), "int32", scope="global")
            live = T.alloc_buffer((1,), "int32", scope="global")
            c[0] = 0
            j0: T.let = t * nper
            nj: T.let = T.max(T.min(nper, n_ff - j0), 0)
            for st in range((nj + R - 1) // R):
                gate_dots(w_gate, x, M, idx, j0, st * R, nj, g, j0)
                if product:
                    up_dots(w_up, x, M, idx, j0, st * R, nj, h, j0)
                for r in range(T.min(R, nj - st * R)):
                    live[0] = 0
                    for m in range(M):
                        if product:
                            h[m, j0 + st * R + r] = g[m, j0 + st * R + r] * act_u(h[m, j0 + st * R + r])
                            if T.abs(h[m, j0 + st * R + r]) > thr:
                                live[0] = 1
                            else:
                                h[m, j0 + st * R + r] = zero
                        elif g[m, j0 + st * R + r] != zero:
                            live[0] = 1
                    if live[0] != 0:
                        if product:
                            # slot j0 + c <= this neuron's column: compaction never overwrites an unread column
                            for m in range(M):
                                h[m, j0 + c[0]] = h[m, j0 + st * R + r]
                        idx[j0 + c[0]] = j0 + st * R + r
                        c[0] = c[0] + 1
            nl: T.let = c[0]
            cnt[t] = nl
            if not product:  # "gate": only the listed neurons' up rows
                for st in range((nl + R - 1) // R):
                    up_dots(w_up, x, M, idx, j0, st * R, nl, h, j0)
                    for r in range(T.min(R, nl - st * R)):
                        for m in range(M):
                            h[m, j0 + st * R + r] = g[m, idx[j0 + st * R + r]] * act_u(h[m, j0 + st * R + r])
        # 2) down: task t owns a slice of the output columns and streams that slice of every listed row
        for t in T.parallel(threads):
            zero_cols(t, out, M)
            for t2 in range(threads):
                n2: T.let = cnt[t2]
                for st in range((n2 + R - 1) // R):
                    axpy_all(w_down_t, idx, t2 * nper, st * R, n2, h, t2 * nper, t, out, M)

    return kernel.with_attr("global_symbol", name)
