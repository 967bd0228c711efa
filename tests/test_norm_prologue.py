"""An input RMS norm computed in a kernel's prologue (codegen/kernels/norm_prologue.py, codegen/kernel_input.py): the
matcher finds the norms models write (and refuses what the prologue does not compute), every CPU kernel that reads
x first — linear, sibling linears, gate / up, the exact MLP — gives with the prologue what it gives on the norm
computed apart (x86 natively, ARM under qemu), and a decoder's step then calls no norm and reshapes no norm output,
its logits those of the unfused build and its greedy tokens transformers'."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import actsparse
from actsparse.frontends import import_torch
from actsparse.passes.match import input_rms_norm

from .helpers import vm_calls
from .kernel_cases import QUANT_DTYPES, examples, run_native
from .kernel_cases import kernel_weights as stored

pytest.importorskip("tvm")

EPS = 1e-5


class Normed(nn.Module):
    """norm(x) @ W^T with the norm written as `form` says."""

    def __init__(self, form: str, d: int = 24):
        super().__init__()
        self.form, self.w, self.lin = form, nn.Parameter(torch.rand(d) + 0.5), nn.Linear(d, 8, bias=False)

    def forward(self, x):
        f, w = self.form, self.w
        if f == "llama":    # transformers' LlamaRMSNorm
            h = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))
        elif f == "div":     # ONNX exports: x / sqrt(v)
            h = x / torch.sqrt((x * x).mean(-1, keepdim=True) + EPS) * w
        elif f == "unweighted":
            h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
        elif f == "half":    # the norm at another precision: not what the prologue computes
            h = w * (x.half() * torch.rsqrt(x.half().pow(2).mean(-1, keepdim=True) + EPS)).float()
        elif f == "gemma":   # (1 + w): a computed weight (canonicalize folds it first: test_passes_golden.py)
            h = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)) * (1.0 + w)
        else:                # a layer norm
            h = nn.functional.layer_norm(x, (x.shape[-1],), w)
        return self.lin(h)


@pytest.mark.parametrize("form, found", [("llama", "weighted"), ("div", "weighted"), ("unweighted", "plain"),
                                         ("half", None), ("gemma", None), ("layer", None)])
def test_the_matcher_finds_the_rms_norms_models_write(form, found):
    graph = import_torch(Normed(form).eval(), (torch.randn(1, 3, 24),))
    linear = next(n for n in graph.nodes if n.op == "linear")
    match = input_rms_norm(linear.inputs[0])
    if found is None:
        assert match is None
        return
    x, gamma, eps = match
    assert x is graph.inputs[0] and eps == pytest.approx(EPS)
    assert (gamma is not None) == (found == "weighted")


def _schedule(target: str):
    """The target's schedule without the int8 dot: x not rounded, so the two builds agree to float32 sums."""
    from actsparse import targets
    from actsparse.codegen.schedules import schedule_for

    return replace(schedule_for(targets.get(target)), int8_dot="")


def _case(rng, kind: str, M: int, k: int, dtype: str, sched):
    """(the kernel, its arguments after x, the output shapes)."""
    from actsparse.codegen.kernels import kernel

    def kernel_weights(ws, dtype):   # (the float16 weights as the kernel takes them)
        return stored([w.astype(np.float16) for w in ws] if dtype == "float16" else ws, dtype)

    if kind == "linear":
        (w,), _ = kernel_weights([rng.standard_normal((11, k)).astype(np.float32)], dtype)
        return kernel("linear", k, 11, dtype=dtype, sched=sched), [w], [(M, 11)]
    if kind == "linears":
        ws, _ = kernel_weights([rng.standard_normal((n, k)).astype(np.float32) for n in (7, 5)], dtype)
        bs = [rng.standard_normal(n).astype(np.float32) for n in (7, 5)]
        return kernel("linears", k, (7, 5), dtype=dtype, sched=sched, bias=True), [*ws, *bs], [(M, 7), (M, 5)]
    if kind == "gate_up":
        ws, _ = kernel_weights([rng.standard_normal((9, k)).astype(np.float32) for _ in range(2)], dtype)
        return (kernel("gate_up", k, 9, gate_act="silu", up_act="identity", dtype=dtype, sched=sched), ws,
                [(M, 9)])
    ws, _ = kernel_weights([rng.standard_normal((40, k)).astype(np.float32) for _ in range(3)], dtype)
    return kernel("exact", k, 40, gate_act="relu", up_act="identity", dtype=dtype, sched=sched), ws, [(M, k)]


def _normed(x_raw, g, k):
    flat = x_raw.reshape(-1, k)
    r = (np.float32(1) / np.sqrt((flat.astype(np.float64) ** 2).sum(-1, keepdims=True) / k + EPS)).astype(np.float32)
    return flat * r * (g if g is not None else np.float32(1))


@settings(max_examples=examples(3), suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(("linear", "linears", "gate_up", "exact")),
       dtype=st.sampled_from(("float32", "float16", *QUANT_DTYPES)), k=st.integers(1, 90),
       M=st.sampled_from((1, 3)), lead=st.sampled_from((1, 2)), weighted=st.booleans(), seed=st.integers(0, 999))
def test_x86_kernels_with_the_prologue_equal_them_on_the_norm_computed_apart(kind, dtype, k, M, lead, weighted, seed):
    from actsparse.codegen.kernels.norm_prologue import with_rms_prologue

    if dtype == "float16":
        dtype = "float32" if kind == "exact" else dtype
    rng = np.random.default_rng(seed)
    prim, rest, outs = _case(rng, kind, M, k, dtype, _schedule("x86"))
    x_raw = (rng.standard_normal((M, k) if lead == 1 else (1, M, k)) * 3).astype(np.float32)
    g = (rng.random(k) + 0.5).astype(np.float32) if weighted else None
    if kind == "exact":   # some neurons fire: x > 0 after the norm, gate rows of either sign
        x_raw = np.abs(x_raw)
    fused = with_rms_prologue(prim, k, EPS, lead, weighted)
    assert str(fused.attrs["global_symbol"]).startswith(str(prim.attrs["global_symbol"]))
    want = _run(prim, [_normed(x_raw, g, k), *rest], outs)
    got = _run(fused, [x_raw, *([g] if weighted else []), *rest], outs)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(b).max(initial=0))))


def _run(prim, args, outs):
    """prim run on this machine on args and NaN-filled outputs of the shapes `outs`: those outputs."""
    return run_native(prim, [[*args, *(np.full(s, np.nan, np.float32) for s in outs)]], outputs=len(outs))[0]


def test_a_prologue_refuses_a_kernel_whose_first_parameter_is_not_x_and_a_call_of_other_rows():
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.kernels.norm_prologue import with_rms_prologue

    prim = kernel("linear", 16, 4, dtype="float32", sched=_schedule("x86"))
    with pytest.raises(ValueError, match=r"first parameter is not x \[M, 20\] float32"):
        with_rms_prologue(prim, 20, EPS, 2, True)
    fused = with_rms_prologue(prim, 16, EPS, 2, False)
    w = np.ones((4, 16), np.float32)
    with pytest.raises(Exception, match="B \\* S is not the output's rows"):   # 2 x 3 rows in, 5 rows out
        _run(fused, [np.ones((2, 3, 16), np.float32), w], [(5, 4)])


@settings(max_examples=1, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(QUANT_DTYPES), k=st.integers(33, 60), seed=st.integers(0, 99))
def test_arm_kernels_with_the_prologue_equal_them_under_qemu(dtype, k, seed):
    from actsparse.codegen.kernels.norm_prologue import with_rms_prologue

    from .kernel_cases import cross_kernels

    rng = np.random.default_rng(seed)
    prim, rest, outs = _case(rng, "gate_up", 2, k, dtype, _schedule("arm"))
    fused = with_rms_prologue(prim, k, EPS, 2, True)
    x_raw, g = rng.standard_normal((1, 2, k)).astype(np.float32), (rng.random(k) + 0.5).astype(np.float32)
    out = len(rest) + 1
    (want,), (got,) = cross_kernels([prim, fused]).run([
        (str(prim.attrs["global_symbol"]), [_normed(x_raw, g, k), *rest, np.full(outs[0], np.nan, np.float32)], [out]),
        (str(fused.attrs["global_symbol"]), [x_raw, g, *rest, np.full(outs[0], np.nan, np.float32)], [out + 1])])
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(want).max())))


def test_a_decoders_step_calls_no_norm_and_decodes_as_the_unfused_build_and_transformers(monkeypatch):
    """A tiny Llama (SwiGLU) under int4: each layer's q / k / v and gate / up take their norms in their prologues —
    no norm call, no reshape of a norm's output — and its logits equal the build with the fusion off; in fp32
    greedy decoding equals transformers' token for token."""
    import transformers

    from actsparse.codegen import kernel_input
    from actsparse.codegen.kernels.norm_prologue import prologue_suffix

    config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=96, vocab_size=128,
                                      max_position_embeddings=64, initializer_range=0.1)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.tensor([[5, 17, 33, 2, 9]])
    lm = actsparse.compile(model, mode="dense", max_seq=32)
    want = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert lm.generate(ids, max_new_tokens=8).tolist() == want.tolist()

    fused = actsparse.compile(model, mode="dense", max_seq=32, quantize="int4")
    monkeypatch.setattr(kernel_input, "FUSE_INPUT_NORMS", False)
    apart = actsparse.compile(model, mode="dense", max_seq=32, quantize="int4")
    calls, calls_apart = _step_calls(fused, ids), _step_calls(apart, ids)
    # per layer q / k / v and gate / up; the final norm stays a call (the LM head reads its last position)
    assert sum(c.endswith(prologue_suffix(1e-6, 2, True)) for c in calls) == 4, calls
    assert sum(c.startswith("fused_mean_square") for c in calls) == 1, calls
    assert sum(c.startswith("fused_mean_square") for c in calls_apart) == 5, calls_apart
    assert sum(c == "vm.builtin.reshape" for c in calls) < sum(c == "vm.builtin.reshape" for c in calls_apart)
    logits = [np.asarray(b.step(3, b.prefill(ids.numpy()))[0]) for b in (fused, apart)]
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-4, atol=1e-4)


def _step_calls(lm, ids) -> list[str]:
    """The VM calls of one decode step after the prompt `ids`."""
    state = lm.prefill(ids.numpy())
    return vm_calls(lm.module, lambda: lm.step(7, state))[1]


def test_a_prologues_symbol_says_its_eps_exactly_and_its_arguments_read_back_as_the_kernels_x():
    """Two norms whose eps differ as float32 (the kernel's) get two kernels; the runtime (report, step profile) reads a
    fused call's arguments back as the kernel's x, normed as the prologue norms it."""
    from actsparse.codegen.kernels.norm_prologue import prologue_of, prologue_suffix, unfused_args

    assert prologue_suffix(1.5e-6, 2, True) != prologue_suffix(1.501e-6, 2, True)
    eps = float(np.float32(1.5e-6))
    assert prologue_of("actsparse_linear_k8_n4" + prologue_suffix(eps, 2, True)) == (eps, 2, True)
    assert prologue_of("actsparse_linear_k8_n4" + prologue_suffix(eps, 1, False)) == (eps, 1, False)
    assert prologue_of("actsparse_linear_k8_n4") is None
    rng = np.random.default_rng(0)
    x_raw, g, w = rng.standard_normal((1, 3, 8)).astype(np.float32), rng.random(8).astype(np.float32), object()
    x, *rest = unfused_args("k" + prologue_suffix(eps, 2, True), [x_raw, g, w])
    want = x_raw[0] / np.sqrt((x_raw[0].astype(np.float64) ** 2).mean(-1, keepdims=True) + eps) * g
    np.testing.assert_allclose(x, want, rtol=1e-6)
    assert rest == [w] and unfused_args("k", [x_raw, g, w])[1] is g
