"""The CPU scored kernel (codegen/kernels/scored_mlp.py: predictor mode's ReLU-family MLP, the neuron list made
inside) against numpy, and against the select + listed kernel pair it replaces, at small odd sizes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

tvm = pytest.importorskip("tvm")

from actsparse.codegen.kernels.gathered_mlp import sparse_gated_mlp_listed  # noqa: E402
from actsparse.codegen.kernels.predictor_kernels import select_active  # noqa: E402
from actsparse.codegen.kernels.scored_mlp import scored_gated_mlp  # noqa: E402

from .test_kernels_int8 import cpu_sched, host_sched  # noqa: E402
from .test_kernels_x86 import N_FF, SCHEDS, D, run  # noqa: E402


def _case(rng, M, dtype, listed_frac):
    """x, the three weights (gate rows of mixed sign: some listed neurons fire, some do not) and scores listing
    about `listed_frac` of the neurons per token (per-token lists differ, so a neuron listed by one token only
    must count as 0 for the others)."""
    x = rng.standard_normal((M, D)).astype("float32")
    wg, wu, wd_t = (rng.standard_normal((N_FF, D)).astype(dtype) for _ in range(3))
    scores = rng.standard_normal((M, N_FF)).astype("float32")
    scores[rng.random((M, N_FF)) > listed_frac] = -5.0
    return x, wg, wu, wd_t, scores


def _reference(x, wg, wu, wd_t, scores, cutoff, gate_act, threshold):
    f = [w.astype("float64") for w in (wg, wu, wd_t)]
    g = x.astype("float64") @ f[0].T
    g = np.where(g > threshold, g, 0.0) if gate_act == "fatrelu" else np.maximum(g, 0.0)
    return ((g * (x.astype("float64") @ f[1].T)) * (scores > cutoff)) @ f[2]


@pytest.mark.parametrize("sched,dtype,gate_act,M,listed", [
    (SCHEDS["avx512"], "float32", "relu", 1, 0.3),
    (SCHEDS["avx512"], "float16", "relu", 4, 0.5),
    (SCHEDS["avx2-3t-1row"], "float32", "fatrelu", 3, 0.4),
    (SCHEDS["sse-8rows"], "float16", "relu", 5, 1.0),
    (SCHEDS["avx2-3t-1row"], "float16", "relu", 2, 0.0),
], ids=["avx512-f32-M1", "avx512-f16-M4", "avx2-fatrelu-M3", "sse-f16-all-listed", "avx2-none-listed"])
def test_scored_kernel_computes_each_tokens_listed_neurons(sched, dtype, gate_act, M, listed):
    rng = np.random.default_rng(M)
    x, wg, wu, wd_t, scores = _case(rng, M, dtype, listed)
    cutoff, threshold = np.array([0.25], "float32"), 0.3 if gate_act == "fatrelu" else 0.0
    kw = dict(gate_act=gate_act, up_act="identity", threshold=threshold, dtype=dtype, sched=sched)
    out = run(scored_gated_mlp(D, N_FF, **kw), x, wg, wu, wd_t, scores, cutoff, out_shape=(M, D))
    ref = _reference(x, wg, wu, wd_t, scores, cutoff[0], gate_act, threshold)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max() + 1e-6)
    if listed == 0.0:
        assert np.array_equal(out, np.zeros((M, D), "float32"))
    # the pair it replaces (select, then the listed kernel) gives the same result up to summation order
    idx, count = np.zeros((M, N_FF), "int32"), np.zeros(M, "int32")
    for m in range(M):
        chosen = np.flatnonzero(scores[m] > cutoff[0])
        idx[m, :len(chosen)], count[m] = chosen, len(chosen)
    pair = run(sparse_gated_mlp_listed(D, N_FF, **kw), x, wg, wu, wd_t, idx, count, out_shape=(M, D))
    np.testing.assert_allclose(out, pair, rtol=1e-5, atol=1e-5 * np.abs(ref).max() + 1e-6)


def test_select_kernel_lists_what_the_scored_kernel_reads():
    """select's own semantics, kept for non-ReLU gates (the indexed path)."""
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((3, N_FF)).astype("float32")
    import tvm as tvm_

    from actsparse.codegen.kernels.common import build_standalone

    from .test_kernels_x86 import host_target

    mod = build_standalone(select_active(N_FF, sched=SCHEDS["avx512"]), host_target())
    idx, count = tvm_.runtime.tensor(np.zeros((3, N_FF), "int32")), tvm_.runtime.tensor(np.zeros(3, "int32"))
    mod(tvm_.runtime.tensor(scores), tvm_.runtime.tensor(np.zeros(1, "float32")), idx, count)
    for m in range(3):
        chosen = np.flatnonzero(scores[m] > 0)
        assert count.numpy()[m] == len(chosen)
        assert np.array_equal(idx.numpy()[m, :len(chosen)], chosen)


def test_scored_kernel_refuses_a_gate_that_is_not_relu_family():
    with pytest.raises(ValueError, match="ZERO_BELOW|gate_act must be one of"):
        scored_gated_mlp(D, N_FF, gate_act="silu", sched=SCHEDS["avx512"])


@pytest.mark.parametrize("layout,M", [("q8_0", 1), ("q4_0", 3)])
def test_scored_kernel_reads_quantized_rows(layout, M):
    """quantize='int8'|'int4' after predictor mode: the kernel streams the blocks (float x on this schedule) and
    equals the float reference on the dequantized weights, in the one-token and the token-blocked paths."""
    from actsparse.ir.quant import quantize

    d = 64  # whole blocks of 32
    rng = np.random.default_rng(11)
    x = rng.standard_normal((M, d)).astype("float32")
    q = [quantize(rng.standard_normal((N_FF, d)).astype("float32"), layout) for _ in range(3)]
    scores = rng.standard_normal((M, N_FF)).astype("float32")
    cutoff = np.zeros(1, "float32")
    kernel = scored_gated_mlp(d, N_FF, dtype=layout, sched=SCHEDS["avx512"])
    out = run(kernel, x, *[w.blob for w in q], scores, cutoff, out_shape=(M, d))
    ref = _reference(x, *[w.dequantize() for w in q], scores, 0.0, "relu", 0.0)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("sched,dtype,gate_act,M,block,ahead", [
    (SCHEDS["avx512"], "float16", "relu", 1, 8, True),
    (SCHEDS["avx512"], "float32", "relu", 3, 0, False),
    (SCHEDS["avx2-3t-1row"], "float16", "fatrelu", 2, 2, False),
], ids=["avx512-f16-M1-blocks-ahead", "avx512-f32-M3", "avx2-fatrelu-M2"])
def test_certified_kernel_scores_inside_and_equals_the_scored_kernel(sched, dtype, gate_act, M, block, ahead):
    """The bound predictor's scores computed in the kernel (blocks of `block` neurons scored ahead of the gate
    rows read; `ahead`: listed rows prefetched whole): the output equals the scored kernel fed numpy's scores,
    and the dense MLP (the bound drops no active neuron)."""
    from actsparse.codegen.kernels.scored_mlp import certified_gated_mlp
    from actsparse.passes.certified_gate import certified_scores, certify_gate

    d = 96  # whole q8_0 groups
    rng = np.random.default_rng(5 + M)
    x = rng.standard_normal((M, d)).astype("float32")
    wg, wu, wd_t = (rng.standard_normal((N_FF, d)).astype(dtype) for _ in range(3))
    arrays = certify_gate(wg.astype("float32"))
    threshold = 0.5 if gate_act == "fatrelu" else 0.0
    cutoff = np.array([threshold], "float32")
    scores = certified_scores(arrays, x).astype("float32")
    assert 0 < (scores <= threshold).mean() < 1  # some neurons certified, some listed
    kw = dict(gate_act=gate_act, up_act="identity", threshold=threshold, dtype=dtype, sched=sched)
    out = run(certified_gated_mlp(d, N_FF, block=block, ahead=ahead, **kw), x, wg, wu, wd_t, arrays["w8"],
              arrays["coef"], cutoff, out_shape=(M, d))
    scored = run(scored_gated_mlp(d, N_FF, **kw), x, wg, wu, wd_t, scores, cutoff, out_shape=(M, d))
    ref = _reference(x, wg, wu, wd_t, np.ones_like(scores), 0.0, gate_act, threshold)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(out, scored, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@settings(max_examples=5, deadline=None)
@given(dot=st.sampled_from(["vpdpbusd512", "vpdpbusd256"]), d=st.sampled_from([33, 75, 96]), M=st.integers(1, 3),
       near=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_certified_kernel_with_int16_scores_equals_dense(dot, d, M, near, seed):
    """The certified kernel scoring against x rounded to int16 (vpdpwssd, codegen/kernels/score_int16.py) at odd
    sizes equals the dense MLP (the bound drops no active neuron; `near`: token 0's gates within rounding of 0,
    compared with the scored kernel listing every neuron: the same fp32 gate dots), and with coefficients that put
    the last token's scores at ±1 at random it equals the scored kernel fed numpy's scores: the in-kernel int16
    scores are the right ones (that listing drops active neurons, so a wrong score would show)."""
    from actsparse.codegen.kernels.scored_mlp import certified_gated_mlp
    from actsparse.ir.quant import dequantize
    from actsparse.passes.certified_gate import certified_scores, certify_gate

    sched = host_sched(dot)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M, d)).astype("float32")
    wg, wu, wd_t = (rng.standard_normal((N_FF, d)).astype("float16") for _ in range(3))
    if near:  # shift each gate row along x[0]: token 0's gates ~0, either sign
        g0 = wg.astype(np.float64) @ x[0].astype(np.float64)
        wg = (wg - np.outer(g0 / (x[0].astype(np.float64) @ x[0]), x[0])).astype("float16")
    arrays = certify_gate(wg.astype("float32"))
    kw = dict(gate_act="relu", up_act="identity", dtype="float16", sched=sched)
    kernel, scored = certified_gated_mlp(d, N_FF, block=16, **kw), scored_gated_mlp(d, N_FF, **kw)  # int16: default
    assert str(kernel.attrs["global_symbol"]).startswith("actsparse_gmlp_certifiedb16sw_")
    cutoff = np.zeros(1, "float32")
    out = run(kernel, x, wg, wu, wd_t, arrays["w8"], arrays["coef"], cutoff, out_shape=(M, d))
    dense = run(scored, x, wg, wu, wd_t, np.ones((M, N_FF), "float32"), cutoff, out_shape=(M, d))
    ref = _reference(x, wg, wu, wd_t, np.ones((M, N_FF), "float32"), 0.0, "relu", 0.0)
    np.testing.assert_allclose(dense, ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max())
    np.testing.assert_allclose(out, dense, rtol=1e-5, atol=1e-6 * np.abs(dense).max())
    target = np.where(rng.random(N_FF) < 0.5, 1.0, -1.0)
    t = M - 1  # the token whose scores are forced (not a `near` one unless M is 1)
    approx = x[t].astype(np.float64) @ dequantize(arrays["w8"], "q8_0", d).astype(np.float64).T
    forced = dict(arrays, coef=((target - approx) / np.linalg.norm(x[t])).astype("float32"))
    scores = certified_scores(forced, x).astype("float32")
    out1 = run(kernel, x, wg, wu, wd_t, arrays["w8"], forced["coef"], cutoff, out_shape=(M, d))
    listed = run(scored, x, wg, wu, wd_t, scores, cutoff, out_shape=(M, d))
    np.testing.assert_allclose(out1, listed, rtol=1e-5, atol=1e-6 * np.abs(dense).max())
    if not (near and t == 0):  # the forced listing drops active neurons of token t: a wrong score would show
        assert np.abs(out1[t] - dense[t]).max() > 1e-3 * np.abs(dense[t]).max()


def test_int16_scores_run_on_vpdpwssd():
    """The int16 score pass's code: byte codes widened to int16 (vpmovsxbw) into the 2-way int16 dot (vpdpwssd;
    LLVM writes the first of a chain, whose start is 0, as vpmaddwd, the same dot), and none of the float path's
    widening to int32 (vpmovsxbd); the float path has them the other way round."""
    from dataclasses import replace

    import tvm as tvm_

    from actsparse.codegen.kernels.scored_mlp import certified_gated_mlp

    sched, alderlake = cpu_sched("vpdpbusd256")  # two dots per group: the chained vpdpwssd shows; compiled only
    asm = {}
    for int16 in (True, False):   # the schedule's score pass (target data), flipped as benchmarks/scored_ab.py does
        prim = certified_gated_mlp(96, N_FF, dtype="float16",
                                   sched=replace(sched, certified_scores="int16" if int16 else "float"))
        lib = tvm_.compile(tvm_.IRModule({"main": prim}), target=alderlake)
        asm[int16] = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
    assert "vpdpwssd" in asm[True] and "vpmovsxbw" in asm[True] and "vpmovsxbd" not in asm[True]
    assert "vpdpwssd" not in asm[False] and "vpmovsxbd" in asm[False]
