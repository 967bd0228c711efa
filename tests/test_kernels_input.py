"""The input-sparse (TEAL / WINA) kernels of every family against the IR semantics (`ir/input_sparse.py`): ARM NEON
under qemu and CUDA under the SIMT emulator (tests/simt.py); x86 is in test_sparsity_methods.py for float weights,
here for quantized ones (all three families). Rows of input channels no token keeps hold NaN, so a kernel that
read them would fail."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actsparse.ir.input_sparse import input_sparse_parts, input_sparse_reference

from .kernel_cases import QUANT_DTYPES, Call, cross_kernels, examples, ir_act, run_batch, run_native, simt_kernels

tvm = pytest.importorskip("tvm")

# the last: DeepSeek-V4's clamped SwiGLU (gate min(g, 10)·σ(min(g, 10)), up clip(u, ±10)), as any table activation
CASES = [(64, 53, "product", "silu", "identity"), (37, 70, "gate", "gelu_tanh", "relu"),
         (29, 45, "product", "clamped_silu10", "clip10")]


def _calls(rng, d, n, criterion, gate_act, up_act) -> list[Call]:
    calls = []
    for m in (1, 3):
        x = rng.standard_normal((m, d)).astype(np.float32)
        wg, wu = (rng.standard_normal((d, n)).astype(np.float32) for _ in range(2))
        wd = rng.standard_normal((n, d)).astype(np.float32)
        x_thr, h_thr = np.full(d, 0.7, np.float32), np.full(n, 0.5, np.float32)
        ref = input_sparse_reference(x, wg, wu, wd, x_thr, h_thr,
                                     {"gate_act": gate_act, "up_act": up_act, "criterion": criterion})
        dead = ~(np.abs(x) > x_thr).any(0)
        assert dead.any()
        wg[dead], wu[dead] = np.nan, np.nan
        calls.append(Call([x, wg, wu, wd, x_thr, h_thr, np.full((m, d), np.nan, np.float32)], ref,
                          np.abs(ref).max(), "float32"))
    return calls


def _jobs(target_name: str):
    from actsparse import targets
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.schedules import schedule_for

    sched = schedule_for(targets.get(target_name))
    rng = np.random.default_rng(0)
    return [(kernel("input", d, n, gate_act=g, up_act=u, criterion=c, dtype="float32", sched=sched),
             _calls(rng, d, n, c, g, u)) for d, n, c, g, u in CASES]


def _check(jobs, outs):
    for (_, calls), results in zip(jobs, outs):
        for call, out in zip(calls, results):
            np.testing.assert_allclose(out, call.ref, rtol=1e-4, atol=1e-4 * float(call.scale))


def _outputs(target_name: str, jobs) -> list:
    """Each job's calls run natively (x86) or under qemu (arm), one list of outputs per job."""
    if target_name == "x86":
        return [run_native(prim, calls) for prim, calls in jobs]
    return run_batch(cross_kernels([p for p, _ in jobs]), jobs)


def test_input_sparse_kernel_on_x86_matches_the_reference():
    jobs = _jobs("x86")
    _check(jobs, _outputs("x86", jobs))


def test_input_sparse_kernel_on_arm_matches_the_reference():
    jobs = _jobs("arm")
    _check(jobs, _outputs("arm", jobs))


def test_input_sparse_kernel_on_cuda_matches_the_reference_under_simt():
    jobs = _jobs("cuda")
    _check(jobs, run_batch(simt_kernels([p for p, _ in jobs]), jobs))


# --- quantized weights (q8_0 / q4_0 / q4_1): the three matrices stored as blocks along their stored rows ---------
# Hypothesis draws the layout, sizes that 32 does not divide (a partial last block along n_ff for gate/up and
# along d for down; task slices of whole blocks, some empty) and the activations; each example's calls hold 0%
# active (no input channel kept), 100% active (every channel and neuron kept) and a random set. The reference is
# float64 on the dequantized weights; an h value within float32 rounding of its threshold may go either way,
# so its whole term is slack. Rows of channels no token keeps are all 0xFF bytes (a NaN scale): reading one fails.
INPUT_ACTS = [("silu", "identity", "product"), ("gelu_tanh", "relu", "gate"), ("relu", "identity", "gate")]
ragged = st.integers(1, 100).filter(lambda n: n % 32)


def arm_sizes(low: int, high: int):
    """Sizes for the qemu runs: above one group of 32, never a multiple of it (a tail group in every row)."""
    return st.integers(low, high).filter(lambda n: n % 32)


# the activations' steepest slope (gelu_tanh's, 1.13; silu 1.10, relu / identity 1): an error e in a pre-activation
# moves the activation by at most SLOPE * e
SLOPE = 1.13


def quant_input_reference(x, wg_t, wu_t, wd_t, x_thr, h_thr, gate_act, up_act, criterion, rounded=None):
    """(out, scale, slack, err_h) of the input-sparse kernel in float64 on the dequantized weights; `rounded`: the
    bounds (e_g, e_u) [M, n] of the gate / up sums' integer rounding (integer axpy), which widen the masks' margin
    and the slack."""
    x, wg_t, wu_t, wd_t = (np.asarray(a, np.float64) for a in (x, wg_t, wu_t, wd_t))
    xs = np.where(np.abs(x) > x_thr, x, 0)
    gabs, uabs = np.abs(xs) @ np.abs(wg_t), np.abs(xs) @ np.abs(wu_t)
    a, b = ir_act(gate_act, xs @ wg_t), ir_act(up_act, xs @ wu_t)
    h = a * b
    e_a, e_b = (np.zeros_like(h), np.zeros_like(h)) if rounded is None else (SLOPE * rounded[0], SLOPE * rounded[1])
    err_h = e_a * (np.abs(b) + e_b) + np.abs(a) * e_b
    score, err = (a, 4e-5 * gabs + e_a) if criterion == "gate" else (h, 4e-5 * gabs * (uabs + 1) + err_h)
    near = np.abs(np.abs(score) - h_thr) <= err + 1e-6
    out = np.where(np.abs(score) > h_thr, h, 0) @ wd_t
    slack = 1.01 * ((np.abs(h) + err_h) * near + err_h) @ np.abs(wd_t)
    return out, (gabs * uabs) @ np.abs(wd_t), slack, err_h


def quant_input_calls(rng, d, n, dtype, gate_act, up_act, criterion, int8_axpy=False) -> list[Call]:
    """int8_axpy: the kernel's axpys round their coefficients to int8 (x86 VNNI, codegen/kernels/quant_axpy8.py):
    gate / up's bound (tests/test_kernels_axpy8.py: `down_bound`, on |x| kept) widens the masks' margin and joins
    the slack through h, the down axpy's (on the unmasked |h| plus its error) joins the slack."""
    from actsparse.ir.quant import quantize

    from .axpy8_cases import down_bound

    calls = []
    for m, case in ((1, "none"), (3, "all"), (2, "random")):
        x = rng.standard_normal((m, d)).astype(np.float32)
        qs = [quantize(rng.standard_normal(shape).astype(np.float32), dtype) for shape in ((d, n), (d, n), (n, d))]
        blobs, (wg, wu, wd) = [q.blob.copy() for q in qs], [q.dequantize() for q in qs]
        if case == "none":
            x_thr, h_thr = np.full(d, np.inf, np.float32), np.zeros(n, np.float32)
        elif case == "all":
            x_thr, h_thr = np.zeros(d, np.float32), np.full(n, -1.0, np.float32)
        else:
            x_thr = rng.uniform(0, 1.5, d).astype(np.float32)
            h_thr = rng.uniform(0, 1.0, n).astype(np.float32)
        xs = np.where(np.abs(x) > x_thr, x, 0).astype(np.float64)
        rounded = tuple(down_bound(np.abs(xs), q.blob, dtype, n) for q in qs[:2]) if int8_axpy else None
        ref, scale, slack, err_h = quant_input_reference(x, wg, wu, wd, x_thr, h_thr, gate_act, up_act, criterion,
                                                         rounded)
        if int8_axpy:
            h = ir_act(gate_act, xs @ wg) * ir_act(up_act, xs @ wu)
            slack = slack + down_bound(np.abs(h) + err_h, qs[2].blob, dtype, d)
        dead = ~(np.abs(x) > x_thr).any(0)
        blobs[0][dead], blobs[1][dead] = 0xFF, 0xFF   # a NaN scale in every block of a skipped channel's row
        calls.append(Call([x, *blobs, x_thr, h_thr, np.full((m, d), np.nan, np.float32)], ref, scale, dtype, slack))
    return calls


def quant_input_kernel(d, n, dtype, acts, sched, by_rows=None):
    from actsparse.codegen.kernels import kernel

    gate_act, up_act, criterion = acts
    split = {} if by_rows is None else {"by_rows": by_rows}   # (a CPU kernel's; the CUDA one has no such split)
    return kernel("input", d, n, gate_act=gate_act, up_act=up_act, criterion=criterion, dtype=dtype, sched=sched,
                  **split)


def check_quant(jobs, outs):
    for (prim, calls), results in zip(jobs, outs):
        for i, (call, out) in enumerate(zip(calls, results)):
            try:
                call.check(out)
            except AssertionError as err:
                raise AssertionError(f"{prim.attrs['global_symbol']} call {i}: {err}") from None


@settings(max_examples=examples(4), suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(QUANT_DTYPES), d=ragged, n=ragged, acts=st.sampled_from(INPUT_ACTS),
       seed=st.integers(0, 999), every_integer=st.booleans(), by_rows=st.sampled_from([None, 2]))
def test_x86_quantized_input_sparse_kernel_matches_the_dequantized_reference(dtype, d, n, acts, seed, every_integer,
                                                                              by_rows):
    """The target's schedule (its table gives this kernel the integer axpys on AVX512-VNNI and AVX2 hosts, else
    float) or every axpy integer where the host has an int8 dot (the A/B path, `ffn_sweep --axpy integer`); the work
    split by rows for every call (the L2's bound) or up to 2 tokens (the 3-token call by columns)."""
    from dataclasses import replace

    from actsparse import targets
    from actsparse.codegen.kernels.quant_axpy8 import uses_int8_axpy
    from actsparse.codegen.schedules import schedule_for

    sched = schedule_for(targets.get("x86"))
    sched = replace(sched, int8_axpy=True) if every_integer else sched
    prim = quant_input_kernel(d, n, dtype, acts, sched, by_rows)
    integer = uses_int8_axpy(dtype, sched, "input")
    calls = quant_input_calls(np.random.default_rng(seed), d, n, dtype, *acts, int8_axpy=integer)
    check_quant([(prim, calls)], [run_native(prim, calls)])


def _quant_jobs(target_name: str, d: int, n: int, seed: int):
    """One kernel per layout (activations rotated), all in one module; on a CPU target the second splits its work by
    rows up to 2 tokens only (its 3-token call by columns), the others for every call."""
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    sched, rng = schedule_for(targets.get(target_name)), np.random.default_rng(seed)
    cpu = target_name != "cuda"
    layouts = enumerate(zip(QUANT_DTYPES, INPUT_ACTS))
    return [(quant_input_kernel(d, n, dtype, acts, sched, 2 if cpu and i == 1 else None),
             quant_input_calls(rng, d, n, dtype, *acts)) for i, (dtype, acts) in layouts]


@settings(max_examples=1, suppress_health_check=[HealthCheck.too_slow])
@given(d=arm_sizes(33, 60), n=arm_sizes(33, 70), seed=st.integers(0, 99))
def test_arm_quantized_input_sparse_kernels_match_the_dequantized_reference_under_qemu(d, n, seed):
    jobs = _quant_jobs("arm", d, n, seed)
    check_quant(jobs, run_batch(cross_kernels([p for p, _ in jobs]), jobs))


@settings(max_examples=1, suppress_health_check=[HealthCheck.too_slow])
@given(d=st.integers(33, 50).filter(lambda d: d % 32), n=st.integers(33, 48).filter(lambda n: n % 32),
       seed=st.integers(0, 99))
def test_cuda_quantized_input_sparse_kernels_match_the_dequantized_reference_under_simt(d, n, seed):
    jobs = _quant_jobs("cuda", d, n, seed)
    check_quant(jobs, run_batch(simt_kernels([p for p, _ in jobs]), jobs))



def test_the_integer_input_kernel_runs_its_axpys_on_vpdpbusd():
    """Where the target's table gives "input" the integer axpy (x86 AVX512-VNNI) the kernel's axpys take vpdpbusd;
    without it none does (the kernel has no row dots), and the two kernels' symbols differ. Gate / up and down are
    the same macro over 96 columns here, so the three inlined axpys hold the same count each. Compiled only
    (znver4): any host."""
    import tvm

    from actsparse.codegen.kernels.schedule import CpuSchedule

    counts = {}
    for table in (("input",), ()):
        sched = CpuSchedule(lanes=16, threads=2, int8_dot="vpdpbusd512", int8_axpy=table)
        prim = quant_input_kernel(96, 96, "q4_0", INPUT_ACTS[0], sched)
        lib = tvm.compile(tvm.IRModule({"main": prim}), target=tvm.target.Target({"kind": "llvm", "mcpu": "znver4"}))
        asm = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
        counts[table] = (asm.count("vpdpbusd\t"), str(prim.attrs["global_symbol"]))
    (integer, sym_i), (floating, sym_f) = counts[("input",)], counts[()]
    assert floating == 0 and integer >= 3 and integer % 3 == 0 and sym_i != sym_f, counts


def test_the_input_kernel_reads_no_up_rows_for_a_unit_up_factor():
    """A non-gated MLP's block (up_act `unit`: threshold mode's GPT-2 / Falcon MLPs) gives its gate matrix as the up
    input too; the kernel never reads it a second time (its TIR names w_up_t only as a parameter, where a gated
    kernel reads it as often as w_gate_t) and equals the reference, an up matrix of NaN given."""
    from actsparse import targets
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.schedules import schedule_for

    rng = np.random.default_rng(3)
    d, n = 40, 70
    prim = kernel("input", d, n, gate_act="gelu_tanh", up_act="unit", criterion="product", dtype="float32",
                  sched=schedule_for(targets.get("x86")))
    calls = []
    for m in (1, 3):
        x = rng.standard_normal((m, d)).astype(np.float32)
        wg, wd = rng.standard_normal((d, n)).astype(np.float32), rng.standard_normal((n, d)).astype(np.float32)
        x_thr, h_thr = np.full(d, 0.7, np.float32), np.full(n, 0.3, np.float32)
        ref = input_sparse_reference(x, wg, wg, wd, x_thr, h_thr,
                                     {"gate_act": "gelu_tanh", "up_act": "unit", "criterion": "product"})
        assert 0 < np.count_nonzero(ref)
        calls.append(Call([x, wg, np.full_like(wg, np.nan), wd, x_thr, h_thr, np.full((m, d), np.nan, np.float32)],
                          ref, np.abs(ref).max(), "float32"))
    _check([(prim, calls)], [run_native(prim, calls)])
    assert prim.script().count("w_up_t") == 1 and prim.script().count("w_gate_t") > 1


# --- top-k (a fixed count per token: `x_keep` / `h_keep`, codegen/kernels/top_k.py's radix select) ---------------
# thresholds drawn per channel, so the ranking is by |v| / thr, not |v|; counts from one to beyond the width, each
# side alone and both; rows of channels no token keeps hold NaN, so a kernel that read them would fail
TOP_K = [(1, 1), (9, 20), (0, 7), (5, 0), (64, 53), (100, 200)]


def _top_k_calls(rng, d, n, x_keep, h_keep, gate_act="silu", up_act="identity", criterion="product") -> list[Call]:
    calls = []
    for m in (1, 3):
        x = rng.standard_normal((m, d)).astype(np.float32)
        wg, wu = (rng.standard_normal((d, n)).astype(np.float32) for _ in range(2))
        wd = rng.standard_normal((n, d)).astype(np.float32)
        x_thr, h_thr = rng.uniform(0.2, 1.5, d).astype(np.float32), rng.uniform(0.2, 1.0, n).astype(np.float32)
        attrs = {"gate_act": gate_act, "up_act": up_act, "criterion": criterion, "x_keep": x_keep, "h_keep": h_keep}
        keep_x, keep_h, _ = input_sparse_parts(x, wg, wu, x_thr, h_thr, attrs)
        if x_keep:   # the count, per token (distinct ratios: no ties)
            assert (keep_x.sum(-1) == min(x_keep, d)).all()
        if h_keep:
            assert (keep_h.sum(-1) == min(h_keep, n)).all()
        ref = input_sparse_reference(x, wg, wu, wd, x_thr, h_thr, attrs)
        dead = ~keep_x.any(0)
        wg[dead], wu[dead] = np.nan, np.nan
        calls.append(Call([x, wg, wu, wd, x_thr, h_thr, np.full((m, d), np.nan, np.float32)], ref,
                          np.abs(ref).max(), "float32"))
    return calls


def _top_k_jobs(target_name: str):
    from actsparse import targets
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.schedules import schedule_for

    sched, rng = schedule_for(targets.get(target_name)), np.random.default_rng(7)
    return [(kernel("input", 64, 53, gate_act="silu", up_act="identity", criterion="product", dtype="float32",
                    sched=sched, x_keep=kx, h_keep=kh), _top_k_calls(rng, 64, 53, kx, kh)) for kx, kh in TOP_K]


@pytest.mark.parametrize("target_name", ["x86", "arm"])
def test_top_k_input_kernel_matches_the_reference(target_name):
    jobs = _top_k_jobs(target_name)
    _check(jobs, _outputs(target_name, jobs))


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
def test_x86_quantized_top_k_input_kernel_keeps_the_k_largest_inputs(dtype):
    """Top-k on x over quantized rows (every neuron kept: no h rounding at a boundary) against float64 on the
    dequantized weights; the skipped channels' rows are NaN-scaled blocks, so reading one fails."""
    from actsparse import targets
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.schedules import schedule_for
    from actsparse.ir.quant import quantize

    d, n, x_keep = 45, 70, 11
    rng = np.random.default_rng(3)
    prim = kernel("input", d, n, gate_act="gelu_tanh", up_act="identity", criterion="product", dtype=dtype,
                  sched=schedule_for(targets.get("x86")), x_keep=x_keep, h_keep=n)
    x = rng.standard_normal((2, d)).astype(np.float32)
    qs = [quantize(rng.standard_normal(shape).astype(np.float32), dtype) for shape in ((d, n), (d, n), (n, d))]
    blobs, (wg, wu, wd) = [q.blob.copy() for q in qs], [q.dequantize().astype(np.float64) for q in qs]
    x_thr, h_thr = rng.uniform(0.2, 1.5, d).astype(np.float32), np.full(n, 0.5, np.float32)
    keep_x = input_sparse_parts(x, wg, wu, x_thr, h_thr, {"gate_act": "gelu_tanh", "up_act": "identity",
                                                          "x_keep": x_keep, "h_keep": n})[0]
    assert (keep_x.sum(-1) == x_keep).all()
    xs = np.where(keep_x, x, 0).astype(np.float64)
    ref = (ir_act("gelu_tanh", xs @ wg) * (xs @ wu)) @ wd
    blobs[0][~keep_x.any(0)], blobs[1][~keep_x.any(0)] = 0xFF, 0xFF
    out = run_native(prim, [Call([x, *blobs, x_thr, h_thr, np.full((2, d), np.nan, np.float32)], ref, 1.0,
                                 dtype)])[0]
    np.testing.assert_allclose(out, ref, rtol=0.05, atol=0.05 * np.abs(ref).max())


def test_top_k_on_cuda_is_one_clear_error():
    from actsparse import targets
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.schedules import schedule_for
    from actsparse.errors import ActsparseError

    with pytest.raises(ActsparseError, match="top-k .* has no CUDA kernel yet .* threshold method"):
        kernel("input", 64, 53, gate_act="silu", dtype="float32", sched=schedule_for(targets.get("cuda")),
               x_keep=5, h_keep=5)


def routed_calls(calls: list[Call]) -> list[Call]:
    """Each input-kernel call as the routed input kernel's (`routed_input.py`): its block as expert 1 of 2, every
    token routed to it with weight 1, expert 0's rows NaN (never read: no token chose it) and its thresholds
    garbage. The routed kernel runs the same steps at expert 1's row offsets, so the result (and the integer axpy's
    slack) is the call's."""
    def stacked(a: np.ndarray, filler) -> np.ndarray:
        return np.concatenate([np.full_like(a, filler), a])

    out = []
    for c in calls:
        x, gate, up, down, x_thr, h_thr, dest = c.args
        m = len(x)
        nan = 0xFF if gate.dtype == np.uint8 else np.nan   # a quantized blob: NaN scales in every block
        out.append(Call([x, *(stacked(w, nan) for w in (gate, up, down)), np.ones((m, 1), np.float32),
                         np.ones((m, 1), np.int64), stacked(x_thr, -1.0), stacked(h_thr, -1.0), dest], c.ref,
                        c.scale, c.dtype, c.slack))
    return out


def routed_input_jobs(target_name: str, d: int, n: int, seed: int, by_rows=None):
    """The routed input kernel (2 experts) per layout, on `quant_input_calls`' cases (none / all / random kept),
    with the target's schedule (its integer axpys where its table gives "input" them); `by_rows` the kernel's."""
    from actsparse import targets
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.kernels.quant_axpy8 import uses_int8_axpy
    from actsparse.codegen.schedules import schedule_for

    sched, rng = schedule_for(targets.get(target_name)), np.random.default_rng(seed)
    jobs = []
    for dtype, (gate_act, up_act, criterion) in zip(("float32", *QUANT_DTYPES), INPUT_ACTS * 2):
        prim = kernel("routed-input", d, n, 2, gate_act=gate_act, up_act=up_act, criterion=criterion, dtype=dtype,
                      sched=sched, by_rows=by_rows)
        calls = (float_input_calls(rng, d, n, gate_act, up_act, criterion) if dtype == "float32" else
                 quant_input_calls(rng, d, n, dtype, gate_act, up_act, criterion,
                                   int8_axpy=uses_int8_axpy(dtype, sched, "input")))
        jobs.append((prim, routed_calls(calls)))
    return jobs


def float_input_calls(rng, d, n, gate_act, up_act, criterion) -> list[Call]:
    """Float32 calls of the input kernel: random thresholds, the reference on the same arrays."""
    calls = []
    for m in (1, 3):
        x = rng.standard_normal((m, d)).astype(np.float32)
        wg, wu, wd = (rng.standard_normal(shape).astype(np.float32) / 4 for shape in ((d, n), (d, n), (n, d)))
        x_thr, h_thr = rng.uniform(0, 1.5, d).astype(np.float32), rng.uniform(0, 0.5, n).astype(np.float32)
        attrs = {"gate_act": gate_act, "up_act": up_act, "criterion": criterion}
        ref = input_sparse_reference(x, wg, wu, wd, x_thr, h_thr, attrs)
        calls.append(Call([x, wg, wu, wd, x_thr, h_thr, np.full((m, d), np.nan, np.float32)], ref,
                          np.full(d, max(1.0, np.abs(ref).max())), "float32"))
    return calls


@settings(max_examples=examples(2), suppress_health_check=[HealthCheck.too_slow])
@given(d=ragged, n=ragged, seed=st.integers(0, 999), by_rows=st.sampled_from([None, 2]))
def test_x86_routed_input_kernel_runs_the_input_steps_at_its_experts_offsets(d, n, seed, by_rows):
    """The routed input kernel (routed_moe{mode=input}) on the host's schedule: float32 and every quantized layout
    (the integer axpys where the target's table gives them), 0% / 100% / some channels kept, sizes not multiples of
    32; expert 0's NaN rows never read; the work split by rows for every call or up to 2 tokens."""
    jobs = routed_input_jobs("x86", d, n, seed, by_rows)
    check_quant(jobs, [run_native(prim, calls) for prim, calls in jobs])


@settings(max_examples=1, suppress_health_check=[HealthCheck.too_slow])
@given(d=arm_sizes(33, 60), n=arm_sizes(33, 70), seed=st.integers(0, 99))
def test_arm_routed_input_kernel_matches_the_reference_under_qemu(d, n, seed):
    jobs = routed_input_jobs("arm", d, n, seed)
    check_quant(jobs, run_batch(cross_kernels([p for p, _ in jobs]), jobs))


@pytest.mark.parametrize("by_rows", [-1, 1.5, True])
def test_a_bad_row_split_bound_is_one_clear_error(by_rows):
    from actsparse import targets
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.schedules import schedule_for

    sched = schedule_for(targets.get("x86"))
    for args in (("input", 64, 53), ("routed-input", 64, 53, 2)):
        with pytest.raises(ValueError, match="by_rows must be None"):
            kernel(*args, gate_act="silu", dtype="float32", sched=sched, by_rows=by_rows)
