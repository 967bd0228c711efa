"""Predictor mode: activation statistics, the three predictors and their cutoffs, the compiled graph (predictor
scores -> index list -> indexed kernel) against the reference interpreter, the report, and the bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest

import actsparse
from actsparse.errors import ActsparseError, ModeError
from actsparse.ir import evaluate
from actsparse.ir.predictor import pack_sign_bits, sign_scores
from actsparse.passes import run_pipeline
from actsparse.passes.activation_stats import neuron_cdf
from actsparse.passes.canonicalize import Canonicalize
from actsparse.passes.detect_gated_mlp import DetectGatedMLP
from actsparse.passes.predictors import PredictorError, allocate_ranks, cutoff_for_recall
from actsparse.passes.sparsify_predictor import SparsifyPredictor
from actsparse.runtime import Report

from .helpers import gated_mlp_graph, mlp_input

D, N = 40, 72


def _calibration(samples=4, seq=128, d=D):
    return [(mlp_input(d=d, seq=seq, seed=s),) for s in range(samples)]


def test_sign_scores_count_sign_agreements_from_packed_bits():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 70)).astype(np.float32), rng.standard_normal((9, 70)).astype(np.float32)
    bits = pack_sign_bits(w)
    assert bits.shape == (9, 3) and bits.dtype == np.int32       # 70 bits -> 3 words, padding bits 0
    np.testing.assert_array_equal(sign_scores(x, bits, 70), (np.sign(x)[:, None] * np.sign(w)[None]).sum(-1))


def test_cutoff_is_the_largest_reaching_the_recall():
    rng = np.random.default_rng(1)
    scores, active = rng.standard_normal((200, 30)), rng.random((200, 30)) < 0.3
    for recall in (0.5, 0.9, 0.99, 1.0):
        t = cutoff_for_recall(scores, active, recall)
        got = ((scores > t) & active).sum() / active.sum()
        assert got >= recall
        higher = np.sort(scores[active])[np.searchsorted(np.sort(scores[active]), t, side="right")]
        assert ((scores > higher) & active).sum() / active.sum() < recall   # one positive fewer misses it


def test_ranks_share_the_byte_budget_by_density_and_cdf_is_monotone():
    ranks = allocate_ranks([0.1, 0.3], d=256, n_ff=[1024, 1024], budget=0.1)
    assert ranks[1] > 2 * ranks[0] and all(r % 8 == 0 for r in ranks)
    assert sum(r * (256 + 1024 + 1) for r in ranks) <= 0.1 * 2 * 3 * 256 * 1024
    cdf = neuron_cdf(np.array([0.9, 0.1, 0.0, 0.0]), points=5)
    assert cdf == pytest.approx([0.0, 0.9, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("kind", ["sign", "svd"])
def test_predictor_mode_compiles_to_the_indexed_kernel_and_matches_the_reference(kind, tmp_path):
    graph = gated_mlp_graph(d=D, n=N, act="relu", up_relu=True)
    held_out = mlp_input(d=D, seq=64, seed=99)
    cm = actsparse.compile(graph, (held_out,), mode="predictor", calibration=_calibration(), predictor=kind,
                           recall=0.95)
    assert cm.report.pass_stats["sparsify-predictor"] == {"drelu": 1}
    node = next(n for n in cm.graph.nodes if n.op == "sparse_gated_mlp")
    scores = node.inputs[4]   # a dReLU block: the AND of a gate and an up prediction
    assert node.attrs["mode"] == "predictor" and scores.op == "minimum"
    assert scores.inputs[0].op == ("sign_score" if kind == "sign" else "linear")
    for x in (held_out, mlp_input(d=D, seq=1, seed=5)):
        np.testing.assert_allclose(cm(x), evaluate(cm.graph, [x])[0], rtol=1e-4, atol=1e-5)
    block = cm.report.blocks[0]
    assert block.predictor == kind and block.calibrated_recall >= 0.95
    assert block.recall > 0.85 and 0.05 < block.predicted_sparsity < block.sparsity   # held out: near the target
    # the smallest rank (8) of a stacked [W_gate; W_up] factor is 18% of this tiny MLP; sign: 2 bits per weight
    assert block.rank == (None if kind == "sign" else 8) and 0 < block.predictor_bytes_pct < 20
    assert len(block.neuron_cdf) == 21 and len(block.firing_frequency) == N
    assert 0 < cm.report.output_rel_error < 0.5 and cm.report.top1_agreement is None   # not a language model
    assert Report.from_dict(cm.report.to_dict()).blocks[0].recall == block.recall
    assert "recall" in str(cm.report)
    if kind == "sign":   # the artifact carries the packed bits (i32 safetensors) and the kernels
        loaded = actsparse.load(cm.save(tmp_path / "sign.actsparse"))
        np.testing.assert_array_equal(loaded(held_out), cm(held_out))
        assert loaded.report.blocks[0].predictor == "sign"


def test_lowrank_predictor_trains_to_the_recall_and_its_graph_computes_the_prediction():
    graph = gated_mlp_graph(d=D, n=N, act="relu")
    passes = [Canonicalize(), DetectGatedMLP(),
              SparsifyPredictor(predictor="lowrank", recall=0.95, steps=200, budget=0.5, progress=False,
                                calibration=tuple(_calibration(samples=3)))]
    result = run_pipeline(graph, passes)
    assert result.stats["sparsify-predictor"] == {"reglu": 1}
    assert result.graph.count("relu") == 1 and result.graph.count("linear") == 2   # relu(x·Aᵀ)·Bᵀ + b
    node = next(n for n in result.graph.nodes if n.op == "sparse_gated_mlp")
    assert node.attrs["rank"] == 32 and node.attrs["calibrated_recall"] >= 0.95
    note = next(n for n in result.notes if n.get("kind") == "activation-statistics")
    assert note["calibrated_predicted_sparsity"] > 0.15       # an untrained predictor: ~5% at this recall
    x = mlp_input(d=D, seq=64, seed=77)
    y, y_dense = evaluate(result.graph, [x])[0], evaluate(graph, [x])[0]
    assert np.linalg.norm(y - y_dense) / np.linalg.norm(y_dense) < 0.3


def test_predictor_mode_needs_calibration_and_enough_of_it():
    graph = gated_mlp_graph(d=D, n=N)
    x = mlp_input(d=D, seq=8)
    with pytest.raises(ActsparseError, match="needs calibration data"):
        actsparse.compile(graph, (x,), mode="predictor")
    with pytest.raises(PredictorError, match=r"mlp: 100 calibration tokens are too few for a lowrank predictor"):
        actsparse.compile(graph, (x,), mode="predictor", calibration=[(mlp_input(d=D, seq=100),)])
    with pytest.raises(ActsparseError, match="unknown predictor 'magic'"):
        actsparse.compile(graph, (x,), mode="predictor", calibration=_calibration(1), predictor="magic")
    with pytest.raises(ActsparseError, match="apply to mode='predictor'"):
        actsparse.compile(graph, (x,), mode="exact", predictor="sign")


def test_unreachable_recall_and_non_relu_blocks_are_errors_naming_the_layer():
    x = mlp_input(d=D, seq=8)
    with pytest.raises(PredictorError, match=r"mlp: the sign predictor reaches recall 100\.0% only by predicting"):
        actsparse.compile(gated_mlp_graph(d=D, n=N), (x,), mode="predictor", calibration=_calibration(2),
                          predictor="sign", recall=1.0, sparsity=0.9)
    with pytest.raises(ModeError, match=r"mlp is swiglu.*relufy.*mode='threshold'"):
        actsparse.compile(gated_mlp_graph(d=D, n=N, act="silu"), (x,), mode="predictor",
                          calibration=_calibration(2), predictor="sign")


def test_report_plot_draws_the_neuron_cdf(tmp_path):
    graph = gated_mlp_graph(d=D, n=N, act="relu")
    passes = [Canonicalize(), DetectGatedMLP(),
              SparsifyPredictor(predictor="svd", recall=0.9, progress=False, calibration=tuple(_calibration(2)))]
    result = run_pipeline(graph, passes)
    from actsparse.runtime.report import build_report

    report = build_report("x86", "predictor", result.graph, graph, [mlp_input(d=D, seq=32)], result.stats,
                          result.notes)
    assert len(report.blocks[0].neuron_cdf) == 21 and report.blocks[0].recall is not None
    path = report.plot(str(tmp_path / "r.png"))
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[1] > 600       # two panels: sparsity bars and the CDF


def test_lowrank_training_under_torchrun_ddp_gives_the_single_process_predictor(tmp_path):
    """2 CPU processes (gloo) split every global batch; averaged gradients give the same predictor."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch

    from actsparse.passes.predictor_train import train_lowrank
    from actsparse.passes.predictors import Fitted

    from .ddp_worker import OPTIONS, problem

    out = tmp_path / "ddp.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    # --standalone: torchrun's own rendezvous takes a free port itself (a port picked here and released could be
    # taken by a parallel test before torchrun binds it)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(Path(__file__).parent / "ddp_worker.py"), str(out)],
                         env=env, timeout=240, capture_output=True, text=True)
    assert run.returncode == 0, f"torchrun exited {run.returncode}: {run.stderr[-3000:]}"
    ddp = dict(np.load(out))
    assert int(ddp.pop("world")) == 2
    rows, active = problem()
    torch.set_num_threads(1)
    single = train_lowrank(rows[:400], active[:400], **OPTIONS)

    def quality(arrays):
        p = Fitted("lowrank", arrays, OPTIONS["rank"], 0.0, 0.0, 0.0, 24)
        held_scores, held = p.scores(rows[400:]), active[400:]
        t = cutoff_for_recall(held_scores, held, 0.95)
        return 1 - float((held_scores > t).mean())        # predicted sparsity at 95% recall

    assert quality(single) > 0.3          # it learned something (an untrained one: ~0.05; the truth: ~0.5)
    assert abs(quality(ddp) - quality(single)) < 0.02
    for name in ("A", "B", "b"):
        np.testing.assert_allclose(ddp[name], single[name], rtol=1e-2, atol=1e-3)


def test_sign_predictor_golden_ir_and_full_recall_is_exact_on_its_calibration_rows():
    """Golden after-IR of a fused dReLU block in predictor mode (sign); at recall 1.0 every neuron that fires on the
    calibration rows is predicted there, so on those rows the block computes exactly the dense result."""
    from .test_passes_golden import _check_golden, _inputs, _load

    graph = _load("drelu_fused")
    calibration = [tuple(_inputs(graph, seed=s)) for s in range(20)]   # [2, 8] each: 40 tokens
    passes = [Canonicalize(), DetectGatedMLP(),
              SparsifyPredictor(predictor="sign", recall=1.0, progress=False, calibration=tuple(calibration))]
    result = run_pipeline(graph, passes)
    assert result.stats["sparsify-predictor"] == {"drelu": 1}
    from actsparse.ir import print_graph

    _check_golden("drelu_fused", "predictor-sign", print_graph(result.graph))
    for sample in calibration:
        np.testing.assert_allclose(evaluate(result.graph, sample)[0], evaluate(graph, sample)[0], rtol=1e-4,
                                   atol=1e-5)


def test_compile_for_cuda_in_predictor_mode_uses_the_cuda_sign_and_scored_kernels():
    """Predictor mode picks the kernels by the target's schedule: the CUDA sign kernel and the scored MLP kernel
    (which flags the predicted neurons itself: no select launch)."""
    import re

    from actsparse.codegen.cuda_support import cuda_source

    from .kernel_cases import require_nvcc

    require_nvcc()
    graph = gated_mlp_graph(d=32, n=48, act="relu")
    cm = actsparse.compile(graph, (mlp_input(d=32, seq=3),), target="cuda", mode="predictor",
                           calibration=_calibration(2, seq=32, d=32), predictor="sign", recall=0.9)
    source = cuda_source(cm.executable.mod)
    launches = set(re.findall(r"__global__ void __launch_bounds__\(\d+\) (actsparse_\w+?)_kernel", source))
    for prefix in ("actsparse_signscore_d32_n48", "actsparse_cuda_gmlp_scored_d32_f48"):
        assert any(name.startswith(prefix) for name in launches), (prefix, launches)
    assert not any(name.startswith("actsparse_select") for name in launches), launches
    assert "__popc" in source


def test_predictor_mode_decodes_through_the_generic_kv_cache_path():
    """The embedded model as a decoder (the generic KV-cache path) in predictor mode, calibrated on two windows of
    its training text: prefill and teacher-forced steps agree with the torch model's next-token choice on most
    held-out positions (the 99% goal is measured with more calibration data, BENCHMARKS.md)."""
    import torch

    from actsparse.models import as_transformers, load_tiny
    from actsparse.models.data import eval_windows, load_corpus

    torch.set_num_threads(1)
    model = as_transformers(load_tiny()).eval()
    corpus = load_corpus(cap_bytes=1 << 20)
    train, _ = eval_windows(corpus.train, 48, 2)
    held, _ = eval_windows(corpus.val, 40, 1)
    lm = actsparse.compile(model, mode="predictor", calibration=[w.numpy()[None] for w in train], predictor="sign",
                           recall=0.99, max_seq=64)
    assert lm.report.pass_stats["sparsify-predictor"] == {"drelu": 4}
    ids = held[0].numpy()[None].astype(np.int64)
    with torch.no_grad():
        dense = model(torch.from_numpy(ids)).logits[0].numpy()
    state = lm.prefill(ids[:, :8])
    choices = [int(np.argmax(state.logits))]
    for t in range(8, ids.shape[1] - 1):   # teacher-forced: feed the true next byte, compare the choice after it
        logits, state = lm.step(int(ids[0, t]), state)
        choices.append(int(np.argmax(logits)))
    agreement = float(np.mean(np.array(choices) == dense[7:ids.shape[1] - 1].argmax(-1)))
    assert agreement >= 0.85, agreement


def test_each_moe_expert_gets_its_own_predictor():
    """Experts weighted without a top-k (no routing to run on): a predictor each."""
    from actsparse.runtime.report import build_report

    from .test_passes_golden import _inputs, _load

    graph = _load("moe_batched_experts")
    calibration = tuple(tuple(_inputs(graph, seq=16, seed=s)) for s in range(8))
    result = run_pipeline(graph, [Canonicalize(), DetectGatedMLP(), SparsifyPredictor(
        predictor="svd", recall=0.9, progress=False, calibration=calibration)])
    assert result.stats["sparsify-predictor"] == {"reglu": 2}
    nodes = [n for n in result.graph.nodes if n.op == "sparse_gated_mlp"]
    assert [n.attrs["expert"] for n in nodes] == [0, 1] and nodes[0].inputs[4] is not nodes[1].inputs[4]
    report = build_report("x86", "predictor", result.graph, graph, _inputs(graph, seq=16, seed=99), result.stats,
                          result.notes)
    assert [b.expert for b in report.blocks] == [0, 1] and all(b.recall > 0.7 for b in report.blocks)


@pytest.mark.parametrize("mode, options", [("predictor", {"predictor": "svd", "recall": 0.9})])
def test_lossy_modes_run_relu_family_routed_moe_experts_exact_and_routed(mode, options):
    """No routed kernel takes a predictor: such experts would run all-experts, E/k times the routed experts' reads.
    A ReLU-family expert is exactly sparse, so predictor mode runs it exact (lossless, its zero neurons skipped),
    route-moe routes it, the report says why; the compiled graph equals the original. (Threshold mode thresholds
    routed experts where the routed kernel takes thresholds: tests/test_routed_moe.py.)"""
    from actsparse.ir.moe import routed_reason

    from .test_passes_golden import _inputs, _load

    graph = _load("moe_routed")
    calibration = tuple(tuple(_inputs(graph, seq=16, seed=s)) for s in range(8))
    x = _inputs(graph, seq=16, seed=99)
    cm = actsparse.compile(graph, tuple(x), mode=mode, calibration=calibration, **options)
    assert cm.report.pass_stats[f"sparsify-{mode}"] == {"exact-routed-experts": 3}
    (routed,) = [n for n in cm.graph.nodes if n.op == "routed_moe"]
    assert routed.attrs["mode"] == "exact" and cm.graph.count("sparse_gated_mlp") == 0
    assert [(b.expert, b.reason) for b in cm.report.blocks] == [(e, routed_reason(mode, "exact")) for e in (0, 1, 2)]
    np.testing.assert_allclose(cm(*x), evaluate(graph, x)[0], rtol=1e-4, atol=1e-5)


def test_predictor_mode_keeps_a_routed_expert_with_an_infinite_weight_dense_as_exact_mode_does():
    """An expert run exact would skip the inactive neuron whose down weight is Inf, hiding the NaN 0 * Inf gives:
    both modes keep it dense (the same guard, sparsify_exact.exact_block), so the outputs equal the reference's,
    NaN for NaN."""
    from .test_passes_golden import _inputs, _load

    graph = _load("moe_routed")
    graph.weights["experts.1.down.weight"][2, 5] = np.inf
    calibration = tuple(tuple(_inputs(graph, seq=16, seed=s)) for s in range(8))
    x = _inputs(graph, seq=16, seed=99)
    reference = evaluate(graph, x)[0]
    assert np.isnan(reference).any()
    with np.errstate(invalid="ignore"):
        for mode, stats, options in (
                ("exact", {"reglu": 2, "kept-dense": 1}, {}),
                ("predictor", {"exact-routed-experts": 3, "kept-dense": 1},
                 {"calibration": calibration, "predictor": "svd", "recall": 0.9})):
            cm = actsparse.compile(graph, tuple(x), mode=mode, **options)
            assert cm.report.pass_stats[f"sparsify-{mode}"] == stats
            assert cm.graph.count("gated_mlp") == 1 and cm.graph.count("sparse_gated_mlp") == 2
            np.testing.assert_allclose(cm(*x), reference, rtol=1e-4, atol=1e-5)


def test_predictor_mode_with_fp16_weights_matches_the_reference():
    """fp16 weights (fp32 accumulation): the svd predictor's linears and the indexed kernel read fp16 rows."""
    from actsparse.ir import parse_graph, print_graph

    f32 = gated_mlp_graph(d=D, n=N, act="relu")
    text = print_graph(f32).replace(f"f32[{N},{D}]", f"f16[{N},{D}]").replace(f"f32[{D},{N}]", f"f16[{D},{N}]")
    graph = parse_graph(text, {k: v.astype(np.float16) for k, v in f32.weights.items()})
    held_out = mlp_input(d=D, seq=16, seed=99)
    cm = actsparse.compile(graph, (held_out,), mode="predictor", calibration=_calibration(2), predictor="svd",
                           recall=0.95)
    assert cm.graph.weights["mlp.gate.weight.predictor.A"].dtype == np.float16
    np.testing.assert_allclose(cm(held_out), evaluate(cm.graph, [held_out])[0], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind, most", [("svd", 0.8), ("sign", 0.95)])   # sign ignores magnitudes: a weak test
def test_and_predictor_of_a_drelu_block_predicts_fewer_neurons_than_gate_only_at_the_same_recall(kind, most):
    """dReLU fires where gate AND up are positive (here about a quarter of the neurons, the gate alone half):
    predicting both, with the cutoff pair placed at the recall, keeps far fewer neurons than the gate alone."""
    from actsparse.passes.predictors import cutoffs_for_recall_and, fit_block

    rng = np.random.default_rng(3)
    d, n = 32, 64
    w_gate, w_up = rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((n, d)).astype(np.float32)
    rows = (rng.standard_normal((2000, d)) * rng.uniform(0.2, 3.0, d)).astype(np.float32)   # anisotropic x
    active = (rows @ w_gate.T > 0) & (rows @ w_up.T > 0)
    gate_only = fit_block(kind, "mlp", w_gate, rows, active, rank=24, recall=0.95)
    both = fit_block(kind, "mlp", w_gate, rows, active, rank=24, recall=0.95, w_up=w_up)
    assert "shift" in both.arrays and "shift" not in gate_only.arrays
    assert gate_only.recall >= 0.95 and both.recall >= 0.95
    kept_gate, kept_both = 1 - gate_only.predicted_sparsity, 1 - both.predicted_sparsity
    assert kept_gate >= 0.45 and kept_both < most * kept_gate, (kept_gate, kept_both)
    # the single score min(s_gate, s_up + shift) > cutoff is exactly the pair test
    s_gate, s_up = both.parts(rows)
    t_up = both.cutoff - float(both.arrays["shift"][0])
    np.testing.assert_array_equal(both.scores(rows) > both.cutoff, (s_gate > both.cutoff) & (s_up > t_up))
    chosen = fit_block(kind, "mlp", w_gate, rows, active, rank=24, recall=0.95, w_up=w_up, gate_only_rank=24)
    assert chosen.predicted_sparsity == max(gate_only.predicted_sparsity, both.predicted_sparsity)
    t_g, t_u = cutoffs_for_recall_and(s_gate, s_up, active, 0.9)
    assert ((s_gate > t_g) & (s_up > t_u) & active).sum() >= 0.9 * active.sum()


def test_svd_whitening_with_fewer_calibration_rows_than_inputs_keeps_the_held_out_recall():
    """128 calibration rows of x in 512 dims: unshrunk whitening amplifies the directions never seen (held-out
    recall 0.86 at a 0.95 target); shrunk toward its diagonal by d / tokens it keeps ~0.95."""
    from actsparse.passes.predictors import fit_block

    rng = np.random.default_rng(0)
    d, n, r = 512, 1024, 64
    u, v = rng.standard_normal((n, r)), rng.standard_normal((d, r))
    w_gate = ((u @ v.T / np.sqrt(r) + 0.3 * rng.standard_normal((n, d))) / np.sqrt(d)).astype(np.float32)
    x = rng.standard_normal((2128, d)).astype(np.float32)
    active = x @ w_gate.T > 0.5
    p = fit_block("svd", "mlp", w_gate, x[:128], active[:128], rank=64, recall=0.95)
    predicted, held = p.scores(x[128:]) > p.cutoff, active[128:]
    assert (predicted & held).sum() / held.sum() > 0.92
