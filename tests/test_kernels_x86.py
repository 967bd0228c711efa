"""The x86 TIR kernels (codegen/kernels) against numpy, on the host CPU, at small odd sizes.

Sizes are not multiples of the vector lanes (d=37, n_ff=53) so every vector tail and task split runs.
M in {1, 3, 5, 9} covers decode and prefill (token blocks of 4 plus leftover tokens); the schedules cover
1 to 8 rows per step (lists shorter than, equal to and not a multiple of a step) and 2 or 3 threads.
"""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from actsparse.codegen.kernels.common import build_standalone  # noqa: E402
from actsparse.codegen.kernels.gathered_mlp import sparse_gated_mlp_indexed  # noqa: E402
from actsparse.codegen.kernels.linear import linear  # noqa: E402
from actsparse.codegen.kernels.schedule import CpuSchedule  # noqa: E402
from actsparse.codegen.kernels.sparse_mlp import dense_gated_mlp, sparse_gated_mlp  # noqa: E402

D, N_FF = 37, 53
SCHEDS = {
    "avx512": CpuSchedule(lanes=16, threads=2),
    "avx2-3t-1row": CpuSchedule(lanes=8, threads=3, rows=1, accumulators=3, prefetch=False, vector_registers=16),
    "sse-8rows": CpuSchedule(lanes=4, threads=2, rows=8, accumulators=2, token_block=3, vector_registers=16),
}


def host_target():
    """The host CPU as a TVM target (targets/x86.py will own this)."""
    from tvm.target import codegen

    return tvm.target.Target({"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": 2})


_CACHE = {}


def run(primfunc, *arrays, out_shape):
    key = str(primfunc.attrs["global_symbol"])
    if key not in _CACHE:
        _CACHE[key] = build_standalone(primfunc, host_target())
    out = tvm.runtime.tensor(np.full(out_shape, np.nan, "float32"))
    _CACHE[key](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays], out)
    return out.numpy()


def make_mlp(rng, M, active_frac, dtype="float32"):
    """x > 0 and, for inactive neurons, gate rows < 0: their gate is negative for every token.
    Active neurons get random-sign gate rows (active for some tokens). Returns x, weights, active mask."""
    x = np.abs(rng.standard_normal((M, D))).astype("float32") + 0.1
    wg = rng.standard_normal((N_FF, D)).astype("float32")
    n_active = int(round(active_frac * N_FF))
    active = np.zeros(N_FF, bool)
    active[rng.choice(N_FF, n_active, replace=False)] = True
    wg[~active] = -np.abs(wg[~active])
    if active_frac == 1.0:
        wg = np.abs(wg)
    wu = rng.standard_normal((N_FF, D)).astype("float32")
    wd_t = rng.standard_normal((N_FF, D)).astype("float32")
    ws = [w.astype(dtype) for w in (wg, wu, wd_t)]
    return x, ws, active


def reference(x, wg, wu, wd_t, gate_act, up_act, threshold=0.0):
    g = x.astype("float64") @ wg.astype("float64").T
    u = x.astype("float64") @ wu.astype("float64").T
    if gate_act == "relu":
        g = np.maximum(g, 0)
    elif gate_act == "fatrelu":
        g = np.where(g > threshold, g, 0)
    elif gate_act == "silu":
        g = g / (1 + np.exp(-g))
    if up_act == "relu":
        u = np.maximum(u, 0)
    return g * u @ wd_t.astype("float64")


def assert_close(out, ref, rtol=1e-4):
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("sched,acts", [
    (SCHEDS["avx512"], ("relu", "identity")),
    (SCHEDS["avx512"], ("relu", "relu")),
    (SCHEDS["avx2-3t-1row"], ("relu", "identity")),
    (SCHEDS["sse-8rows"], ("relu", "relu")),
], ids=["avx512-reglu", "avx512-drelu", "avx2-reglu", "sse-drelu"])
@pytest.mark.parametrize("M", [1, 3, 5])
@pytest.mark.parametrize("active_frac", [1.0, 0.5, 0.0])
def test_exact_matches_numpy_and_dense(sched, M, active_frac, acts):
    rng = np.random.default_rng(M * 100 + int(active_frac * 10))
    x, (wg, wu, wd_t), _ = make_mlp(rng, M, active_frac)
    kw = dict(gate_act=acts[0], up_act=acts[1], dtype="float32", sched=sched)
    exact = run(sparse_gated_mlp(D, N_FF, **kw), x, wg, wu, wd_t, out_shape=(M, D))
    dense = run(dense_gated_mlp(D, N_FF, **kw), x, wg, wu, wd_t, out_shape=(M, D))
    ref = reference(x, wg, wu, wd_t, *acts)
    assert_close(exact, ref)
    assert_close(exact, dense)
    if active_frac == 0.0:
        assert np.array_equal(exact, np.zeros_like(exact))  # all gates negative -> exactly zero


@pytest.mark.parametrize("M", [1, 3])
def test_exact_never_reads_inactive_up_and_down_rows(M):
    rng = np.random.default_rng(7)
    x, (wg, wu, wd_t), active = make_mlp(rng, M, 0.5)
    wu[~active] = np.nan  # any read of an inactive neuron's up/down row would poison the output
    wd_t[~active] = np.nan
    out = run(sparse_gated_mlp(D, N_FF, sched=SCHEDS["avx512"]), x, wg, wu, wd_t, out_shape=(M, D))
    wu[~active] = 0
    wd_t[~active] = 0
    assert_close(out, reference(x, wg, wu, wd_t, "relu", "identity"))


@pytest.mark.parametrize("M", [1, 3])
def test_exact_fatrelu_threshold(M):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((M, D)).astype("float32")
    wg, wu, wd_t = (rng.standard_normal((N_FF, D)).astype("float32") for _ in range(3))
    thr = 2.5  # |g| ~ sqrt(37): roughly a third of the gates pass
    kw = dict(gate_act="fatrelu", up_act="identity", threshold=thr, sched=SCHEDS["avx512"])
    out = run(sparse_gated_mlp(D, N_FF, **kw), x, wg, wu, wd_t, out_shape=(M, D))
    ref = reference(x, wg, wu, wd_t, "fatrelu", "identity", thr)
    assert_close(out, ref)
    g = x @ wg.T
    assert 0.1 < (g > thr).mean() < 0.6


@pytest.mark.parametrize("sched,kernel", [
    (SCHEDS["avx512"], sparse_gated_mlp),
    (SCHEDS["avx2-3t-1row"], sparse_gated_mlp),
    (SCHEDS["sse-8rows"], dense_gated_mlp),
], ids=["exact-avx512", "exact-avx2", "dense-sse"])
@pytest.mark.parametrize("M", [1, 5])
def test_fp16_weights_accumulate_in_fp32(sched, M, kernel):
    rng = np.random.default_rng(3)
    x, ws, _ = make_mlp(rng, M, 0.5, dtype="float16")
    out = run(kernel(D, N_FF, gate_act="relu", up_act="relu", dtype="float16", sched=sched), x, *ws,
              out_shape=(M, D))
    ref = reference(x, *[w.astype("float32") for w in ws], "relu", "relu")
    assert_close(out, ref)


@pytest.mark.parametrize("sched,dtype,gate_act", [
    (SCHEDS["avx512"], "float32", "relu"),
    (SCHEDS["avx2-3t-1row"], "float16", "silu"),
    (SCHEDS["sse-8rows"], "float32", "silu"),
    (SCHEDS["avx512"], "float16", "gelu"),
    (SCHEDS["avx2-3t-1row"], "float32", "gelu_tanh"),
], ids=["avx512-f32-relu", "avx2-f16-silu", "sse-f32-silu", "avx512-f16-gelu", "avx2-f32-gelu_tanh"])
def test_indexed_computes_only_listed_neurons(sched, dtype, gate_act):
    M, K = 3, 20
    rng = np.random.default_rng(5)
    x = rng.standard_normal((M, D)).astype("float32")
    wg, wu, wd_t = (rng.standard_normal((N_FF, D)).astype(dtype) for _ in range(3))
    count = np.array([K, 0, 9], "int32")
    idx = np.zeros((M, K), "int32")
    mask = np.zeros((M, N_FF))
    for m in range(M):
        chosen = np.sort(rng.choice(N_FF, count[m], replace=False))
        idx[m, : count[m]] = chosen
        idx[m, count[m]:] = N_FF - 1  # padding past count must be ignored
        mask[m, chosen] = 1
    kw = dict(gate_act=gate_act, up_act="identity", dtype=dtype, sched=sched)
    out = run(sparse_gated_mlp_indexed(D, N_FF, **kw), x, wg, wu, wd_t, idx, count, out_shape=(M, D))
    f32 = [w.astype("float32") for w in (wg, wu, wd_t)]
    g = x.astype("float64") @ f32[0].T.astype("float64")
    if gate_act == "relu":
        g = np.maximum(g, 0)
    elif gate_act == "silu":
        g = g / (1 + np.exp(-g))
    elif gate_act == "gelu":  # the erf form, as the IR (the activation table)
        from scipy.special import erf

        g = 0.5 * g * (1 + erf(g / np.sqrt(2)))
    else:
        g = 0.5 * g * (1 + np.tanh(0.7978845608028654 * (g + 0.044715 * g**3)))
    ref = (g * (x @ f32[1].T) * mask) @ f32[2]
    assert_close(out, ref)
    assert np.array_equal(out[1], np.zeros(D, "float32"))


@pytest.mark.parametrize("sched,dtype,bias", [
    (SCHEDS["avx512"], "float32", False),
    (SCHEDS["avx512"], "float16", True),
    (SCHEDS["avx2-3t-1row"], "float32", True),
    (SCHEDS["sse-8rows"], "float16", False),
], ids=["avx512-f32", "avx512-f16-bias", "avx2-f32-bias", "sse-f16"])
@pytest.mark.parametrize("M", [1, 3, 9])
def test_linear(sched, dtype, bias, M):
    k, n = D, N_FF
    rng = np.random.default_rng(M)
    x = rng.standard_normal((M, k)).astype("float32")
    w = rng.standard_normal((n, k)).astype(dtype)
    b = rng.standard_normal(n).astype("float32")
    args = (x, w, b) if bias else (x, w)
    out = run(linear(k, n, dtype=dtype, sched=sched, bias=bias), *args, out_shape=(M, n))
    ref = x.astype("float64") @ w.astype("float64").T + (b if bias else 0)
    assert_close(out, ref)


def test_linear_tiny_and_many_threads():
    sched = CpuSchedule(lanes=16, threads=4)
    x = np.arange(3, dtype="float32")[None]
    w = np.ones((2, 3), "float32")
    out = run(linear(3, 2, sched=sched), x, w, out_shape=(1, 2))
    assert np.array_equal(out, [[3.0, 3.0]])


def test_gated_mlps_with_more_threads_than_rows_and_columns():
    d, n_ff, M = 5, 3, 2
    sched = CpuSchedule(lanes=16, threads=4)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((M, d)).astype("float32")
    wg, wu, wd_t = (rng.standard_normal((n_ff, d)).astype("float32") for _ in range(3))
    ref = reference(x, wg, wu, wd_t, "relu", "identity")
    for kernel in (sparse_gated_mlp, dense_gated_mlp):
        assert_close(run(kernel(d, n_ff, sched=sched), x, wg, wu, wd_t, out_shape=(M, d)), ref)
    idx = np.tile(np.arange(n_ff, dtype="int32"), (M, 1))
    count = np.full(M, n_ff, "int32")
    out = run(sparse_gated_mlp_indexed(d, n_ff, sched=sched), x, wg, wu, wd_t, idx, count, out_shape=(M, d))
    assert_close(out, ref)


def test_global_symbols_are_unique_per_parameters():
    s = SCHEDS["avx512"]
    names = {
        str(f.attrs["global_symbol"])
        for f in [
            sparse_gated_mlp(D, N_FF, sched=s),
            sparse_gated_mlp(D, N_FF, sched=SCHEDS["avx2-3t-1row"]),
            sparse_gated_mlp(D, N_FF, up_act="relu", sched=s),
            sparse_gated_mlp(D, N_FF, gate_act="fatrelu", threshold=0.25, sched=s),
            sparse_gated_mlp(D, N_FF, gate_act="fatrelu", threshold=0.5, sched=s),
            sparse_gated_mlp(D, N_FF, dtype="float16", sched=s),
            dense_gated_mlp(D, N_FF, sched=s),
            sparse_gated_mlp_indexed(D, N_FF, sched=s),
            linear(D, N_FF, sched=s),
            linear(D, N_FF, sched=s, bias=True),
        ]
    }
    assert len(names) == 10
    assert all(n.isidentifier() and n.startswith("actsparse_") for n in names)


def test_register_blocks_fit_the_register_file():
    assert CpuSchedule(lanes=16, threads=2).block_rows == 4  # 4 rows x 4 tokens + 4 x + 1 w <= 32 zmm
    assert CpuSchedule(lanes=8, threads=2, vector_registers=16).block_rows == 2
    assert CpuSchedule(lanes=4, threads=2, rows=6, token_block=3, vector_registers=16).block_rows == 3
    assert CpuSchedule(lanes=8, threads=2, rows=5, token_block=8, vector_registers=16).block_rows == 1


def test_rows_in_flight_fit_the_l2_cache():
    """Long rows stream fewer at a time: a step's rows and the prefetched next ones fit half the L2."""
    from actsparse.codegen.kernels.sparse_mlp import sparse_gated_mlp

    sched = CpuSchedule(lanes=16, threads=2, l2_bytes=1 << 20)
    assert sched.fitted(4096, "float32") is sched  # 2 x 8 rows x 16 KB = 256 KB <= 512 KB
    assert sched.fitted(16384, "float32").rows == 4 and sched.fitted(16384, "float16").rows == 8
    assert sched.fitted(1 << 20, "float32").rows == 1
    assert CpuSchedule(lanes=16, threads=2).fitted(1 << 20, "float32").rows == 8  # L2 unknown: as given
    # the kernel is built with the fitted schedule (its symbol says so)
    assert "t2r4a1" in str(sparse_gated_mlp(16384, 64, sched=sched).attrs["global_symbol"])
    assert "t2r8a1" in str(sparse_gated_mlp(4096, 64, sched=sched).attrs["global_symbol"])


def test_bad_parameters_are_rejected():
    s = SCHEDS["avx512"]
    with pytest.raises(ValueError, match="gate_act"):
        sparse_gated_mlp(D, N_FF, gate_act="silu", sched=s)  # exact mode needs a ReLU-family gate
    with pytest.raises(ValueError, match="dtype"):
        linear(D, N_FF, dtype="int8", sched=s)
    with pytest.raises(ValueError, match="lanes"):
        CpuSchedule(lanes=12, threads=2)


def test_kernel_is_callable_from_relax_with_symbolic_tokens():
    from tvm import relax

    s = SCHEDS["avx512"]
    prim = sparse_gated_mlp(D, N_FF, sched=s)
    bb = relax.BlockBuilder()
    m = tvm.tirx.Var("m", "int64")
    x = relax.Var("x", relax.TensorType((m, D), "float32"))
    ws = [relax.Var(n, relax.TensorType((N_FF, D), "float32")) for n in ("wg", "wu", "wd_t")]
    with bb.function("main", [x, *ws]):
        gv = bb.add_func(prim, str(prim.attrs["global_symbol"]))
        with bb.dataflow():
            y = bb.emit(relax.call_tir(gv, [x, *ws], relax.TensorType((m, D), "float32")))
            bb.emit_output(y)
        bb.emit_func_output(y)
    ex = tvm.compile(bb.get(), target=host_target())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    rng = np.random.default_rng(0)
    for M in (1, 4):
        xa, (wg, wu, wd_t), _ = make_mlp(rng, M, 0.5)
        out = vm["main"](*[tvm.runtime.tensor(a) for a in (xa, wg, wu, wd_t)]).numpy()
        assert_close(out, reference(xa, wg, wu, wd_t, "relu", "identity"))
