"""Gemma 3n's per-token cutoff gate, gelu_tanh(relu(P - mean(P) - z·std(P))), is exactly zero wherever P is below
the cutoff: found by what it computes (activation_analysis.classify_shifted: the shift summed off the subgraph, the
activation probed against the table), run in exact mode (sparse_gated_mlp{mode='cutoff'}: the gate dense, the up and
down rows of the active neurons only), equal to torch; a leaky variant is not exactly sparse and stays dense."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import actsparse
from actsparse.ir import evaluate
from actsparse.passes import pipeline_for, run_pipeline

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)
Z = 1.6448536  # the normal quantile of 0.95, as Gemma 3n's 95% target sparsity


class CutGates(nn.Module):
    """Two cut-gate MLPs in other spellings than Gemma 3n's: var().sqrt() with the cutoff added on the other side
    (-c + P), then (P - mean) - z·std with torch.std. `leaky`: the first gate's relu becomes a leaky relu."""

    def __init__(self, d=16, n=64, leaky=False):
        super().__init__()
        self.leaky = leaky
        self.gate1, self.up1, self.down1 = nn.Linear(d, n, bias=False), nn.Linear(d, n, bias=False), nn.Linear(n, d)
        self.gate2, self.up2, self.down2 = (nn.Linear(d, n, bias=False), nn.Linear(d, n, bias=False),
                                            nn.Linear(n, d, bias=False))

    def forward(self, x):
        p = self.gate1(x)
        c = p.mean(-1, keepdim=True) + p.var(-1, keepdim=True, unbiased=False).sqrt() * Z
        shifted = -c + p
        cut = torch.where(shifted > 0, shifted, 0.01 * shifted) if self.leaky else F.relu(shifted)  # leaky: slope 0.01
        x = x + self.down1(F.gelu(cut, approximate="tanh") * self.up1(x))
        p = self.gate2(x)
        a = F.gelu(F.relu((p - p.mean(-1, keepdim=True)) - Z * torch.std(p, -1, keepdim=True, unbiased=False)),
                   approximate="tanh")
        return x + self.down2(a * self.up2(x))


def _blocks(model, x, mode="exact", target=None):
    from actsparse.frontends.torch_export import import_torch

    graph = import_torch(model, (x,))
    return graph, run_pipeline(graph, pipeline_for(mode, target))


def test_other_spellings_of_the_cutoff_run_exact_and_match_torch():
    torch.manual_seed(0)
    model, x = CutGates().eval(), torch.randn(1, 6, 16)
    with torch.no_grad():
        want = model(x).numpy()
    cm = actsparse.compile(model, (x,), mode="exact")
    assert cm.report.pass_stats["sparsify-exact"] == {"geglu-cutoff": 2}
    assert [n.attrs["mode"] for n in cm.graph.nodes if n.op == "sparse_gated_mlp"] == ["cutoff", "cutoff"]
    np.testing.assert_allclose(np.asarray(cm(x.numpy())), want, rtol=1e-4, atol=1e-5)
    rows = [b for b in cm.report.blocks if b.pattern == "geglu-cutoff"]
    assert len(rows) == 2 and all(b.mode == "exact" and b.sparsity > 0.8 for b in rows)  # ~95% by construction


def test_a_leaky_cutoff_is_not_exactly_sparse_and_stays_dense():
    torch.manual_seed(0)
    model, x = CutGates(leaky=True).eval(), torch.randn(1, 6, 16)
    _, run = _blocks(model, x, mode="auto")
    assert run.stats["detect-gated-mlp"] == {"unmatched-gate": 1, "geglu-cutoff": 1}
    assert run.stats.get("sparsify-exact") == {"geglu-cutoff": 1}  # the second block only
    with torch.no_grad():
        np.testing.assert_allclose(evaluate(run.graph, [x.numpy()])[0], model(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_a_cutoff_blocks_dense_twin_keeps_the_gate_and_matches_torch(quantize):
    """`actsparse bench` times an artifact against its dense twin (passes/densify.py, runtime/bench.dense_twin): a cut
    block's twin is `cutoff-dense`, which keeps the activated gate as its input (no dense kernel can cut the gate) and
    reads every up and down row; built and run on the CPU it gives torch's outputs (int8: the artifact's, which
    reads the same quantized rows); densify leaves it as it is."""
    from actsparse.passes.densify import Densify
    from actsparse.runtime.bench import dense_twin

    torch.manual_seed(0)
    model, x = CutGates().eval(), torch.randn(1, 6, 16)
    with torch.no_grad():
        want = model(x).numpy()
    cm = actsparse.compile(model, (x,), mode="exact", quantize=quantize)
    twin_run = run_pipeline(cm.graph, [Densify()])
    assert twin_run.stats["densify"] == {"geglu-cutoff": 2}
    twins = [n for n in twin_run.graph.nodes if n.op == "sparse_gated_mlp"]
    assert [(n.attrs["mode"], len(n.inputs)) for n in twins] == [("cutoff-dense", 5)] * 2
    assert run_pipeline(twin_run.graph, [Densify()]).stats.get("densify", {}) == {}
    twin = dense_twin(cm)
    calls = [line.split()[1] for line in twin.executable.as_text().splitlines() if line.strip().startswith("call ")]
    assert sum(c.startswith("actsparse_gmlp_cutoffdense_d16_f64_given") for c in calls) == 2, calls
    assert not any(c.startswith("actsparse_gmlp_cutoff_") for c in calls), calls
    if quantize:
        want = np.asarray(cm(x.numpy()))
    np.testing.assert_allclose(np.asarray(twin(x.numpy())), want, rtol=1e-4, atol=1e-5)


def test_a_target_without_the_cutoff_kernel_keeps_the_ops_with_a_reason():
    """CUDA has the cutoff kernel (tests/test_cutoff_cuda.py); a kernel family the variant declares none for keeps
    the graph's ops, with the reason in the report."""
    from dataclasses import replace

    from actsparse.passes.sparsify_exact import SparsifyExact

    torch.manual_seed(0)
    model, x = CutGates().eval(), torch.randn(1, 6, 16)
    graph, run = _blocks(model, x, mode="exact", target="cuda")
    assert run.stats["sparsify-exact"] == {"geglu-cutoff": 2}
    passes = [replace(p, kernel_family="metal") if isinstance(p, SparsifyExact) else p
              for p in pipeline_for("exact", "cuda")]
    run = run_pipeline(graph, passes)
    assert run.stats["sparsify-exact"] == {"kept-dense": 2}
    assert not run.graph.count("sparse_gated_mlp")
    reasons = [n["reason"] for n in run.notes if n.get("pattern") == "geglu-cutoff"]
    assert len(reasons) == 2 and all("no metal kernel for a per-token cutoff gate" in r for r in reasons)


def _gemma3n(pattern):
    from actsparse.scripts.arch_table import causal_lm_part, tiny_config

    config = tiny_config("gemma3n_text")
    config.activation_sparsity_pattern = pattern
    model_class = transformers.AutoModelForCausalLM._model_mapping[type(config)]
    torch.manual_seed(0)
    return model_class._from_config(causal_lm_part(config, model_class)).float().eval()


def test_gemma3n_cut_layers_are_found_and_match_torch():
    """Layer 0 cut at 95% (Gemma 3n's first layers), layer 1 not (a plain GeGLU: dense in auto mode)."""
    from actsparse.frontends.hf import CausalLMLogits
    from actsparse.scripts.arch_table import example_ids

    model = _gemma3n([0.95, 0.0])
    ids = example_ids(model)
    wrapped = CausalLMLogits(model).eval()
    with torch.no_grad():
        want = wrapped(ids).numpy()
    _, run = _blocks(wrapped, ids, mode="auto")
    assert run.stats["detect-gated-mlp"]["geglu-cutoff"] == 1 and run.stats["detect-gated-mlp"]["geglu"] == 1
    cut = [n for n in run.graph.nodes if n.op == "sparse_gated_mlp"]
    assert [(n.loc, n.attrs["mode"]) for n in cut] == [("model.layers.0.mlp", "cutoff")]
    np.testing.assert_allclose(evaluate(run.graph, [ids.numpy()])[0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_gemma3n_greedy_decoding_equals_transformers():
    from actsparse.scripts.arch_table import example_ids

    model = _gemma3n([0.95, 0.95])
    ids = example_ids(model)
    model.generation_config = transformers.GenerationConfig(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=torch.ones_like(ids))
    lm = actsparse.compile(model, mode="exact", max_seq=16)
    assert lm.report.pass_stats["sparsify-exact"] == {"geglu-cutoff": 2}
    assert torch.equal(lm.generate(ids, 6), expected)


@pytest.mark.parametrize("quantize, rtol", [("fp16", 2e-3), ("int8", 3e-2)])
def test_quantized_weights_run_the_cutoff_kernel(quantize, rtol):
    """The cutoff kernel reads the exact kernel's weight layouts: fp16 and int8 up/down rows (and the gate linear on
    the same stored gate); outputs as torch's within the storage's rounding."""
    torch.manual_seed(0)
    model, x = CutGates().eval(), torch.randn(1, 6, 16)
    with torch.no_grad():
        want = model(x).numpy()
    cm = actsparse.compile(model, (x,), mode="exact", quantize=quantize)
    assert cm.report.pass_stats["sparsify-exact"] == {"geglu-cutoff": 2}
    up = next(n for n in cm.graph.nodes if n.op == "sparse_gated_mlp").inputs[2]
    assert (up.dtype, up.attrs.get("layout")) == {"fp16": ("f16", None), "int8": ("f32", "q8_0")}[quantize]
    got = np.asarray(cm(x.numpy()))
    assert np.abs(got - want).max() <= rtol * np.abs(want).max()


@pytest.mark.parametrize("target", ["x86", "arm"])
def test_the_cutoff_kernel_reads_only_active_rows_and_matches_numpy(target):
    """The kernel alone, at sizes that are no multiple of the vector lanes or row steps, on x86 and (qemu) ARM: out =
    (a ⊙ x·W_upᵀ)·W_down_t over the neurons with a != 0; NaN in the up and down rows of inactive neurons (rows it must
    not read) leaves the output finite."""
    from actsparse import targets
    from actsparse.codegen.kernels import kernel
    from actsparse.codegen.schedules import schedule_for

    from .kernel_cases import cross_kernels, run_native

    d, n_ff, rng = 37, 53, np.random.default_rng(0)
    prim = kernel("cutoff", d, n_ff, up_act="identity", dtype="float32", sched=schedule_for(targets.get(target)))
    calls = []
    for m in (1, 3):
        x = rng.standard_normal((m, d)).astype(np.float32)
        w_gate, w_up, w_down_t = (rng.standard_normal((n_ff, d)).astype(np.float32) for _ in range(3))
        a = np.where(rng.random((m, n_ff)) < 0.2, rng.random((m, n_ff)), 0).astype(np.float32)
        idle = ~(a != 0).any(0)
        want = (a * (x @ w_up.T)) @ w_down_t
        w_up[idle], w_down_t[idle] = np.nan, np.nan
        calls.append(([x, w_gate, w_up, w_down_t, a, np.full((m, d), np.nan, np.float32)], want))
    if target == "x86":
        from .kernel_cases import Call

        outs = run_native(prim, [Call(args, want, np.ones(1), "float32") for args, want in calls])
    else:
        name = str(prim.attrs["global_symbol"])
        outs = [r[0] for r in cross_kernels([prim]).run([(name, args, [5]) for args, _ in calls])]
    for out, (_, want) in zip(outs, calls):
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
