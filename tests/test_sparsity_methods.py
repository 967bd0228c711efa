"""Training-free sparsity methods (passes/sparsity_methods.py) and input sparsity (mode 'input'): the torch
forward replacements of the quality benchmark equal the compiled module, the input-sparse kernel equals the IR
semantics, the greedy allocation spends its budget where errors are cheap, calibration text is tokenized and
cached, and bad calibration is one clear error."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import actsparse
from actsparse.errors import ActsparseError
from actsparse.ir import evaluate
from actsparse.ir.input_sparse import input_sparse_reference, input_sparse_torch, keep_mask
from actsparse.ir.quant import dequantize
from actsparse.passes.block_weights import BlockWeights
from actsparse.passes.sparsity_methods import (
    DEFAULT_METHOD,
    LEVEL_STEP,
    CalibrationError,
    calibrate_blocks,
    greedy_allocation,
    method,
)

from .helpers import (
    assert_quantized_close,
    few_direction_inputs,
    gated_mlp_graph,
    int8_dot_here,
    mlp_input,
    paying_x86,
    x_as_dots_see,
)

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)


def _plans(graph):
    """The calibrated thresholds of a compiled graph, as the benchmark's `install` takes them."""
    plans = []
    for n in (n for n in graph.nodes if n.op == "sparse_gated_mlp"):
        if n.attrs["mode"] == "input":
            x_thr, h_thr = (graph.weights[w.attrs["name"]] for w in n.inputs[4:6])
            x = n.inputs[0]   # rotated-*: linear(x, @Qᵀ) in front, Qᵀ stored q8_0 (rotation.ROTATION_STORAGE)
            rotation = None
            if x.op == "linear":
                q = x.inputs[1]
                rotation = dequantize(graph.weights[q.attrs["name"]], q.attrs["layout"], q.shape[1]).T
            turn = None   # pca: orthogonal, the weights turn by Q itself; metric: by T⁻ᵀ (of T as stored)
            if rotation is not None and not np.allclose(rotation.T @ rotation, np.eye(len(rotation)), atol=0.05):
                turn = np.linalg.inv(rotation.astype(np.float64)).T
            plans.append(SimpleNamespace(x_thr=x_thr, h_thr=h_thr, attrs=dict(n.attrs), rotation=rotation, turn=turn))
        else:
            plans.append(SimpleNamespace(attrs={k: n.attrs[k] for k in ("mode", "threshold", "criterion")}))
    return plans


@pytest.mark.parametrize("name", ["wina-greedy", "teal-cats", "cats", "rotated-wina-greedy",
                                  "rotated-metric-wina-greedy", "topk", "topk-greedy", "rotated-topk-greedy"])
def test_benchmark_hooks_equal_the_compiled_module(name):
    from actsparse.benchmarks.threshold_frontier import install
    from actsparse.frontends import CausalLMLogits

    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, vocab_size=128,
                                      max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    model = CausalLMLogits(hf).eval()
    ids = [torch.randint(3, 128, (1, 24), generator=torch.Generator().manual_seed(s)) for s in range(5)]
    cm = actsparse.compile(model, (ids[0],), mode="threshold", calibration=[(i,) for i in ids[1:]], sparsity=0.5,
                           method=name)
    assert cm.graph.count("sparse_gated_mlp") == 2
    install(hf, _plans(cm.graph))
    with torch.no_grad():
        hooked = model(ids[0]).numpy()
    if name.startswith("rotated") and int8_dot_here("q8_0"):   # the q8_0 rotation's dot rounds x to 8 bits (VNNI)
        assert np.abs(cm(ids[0]).numpy() - hooked).max() <= 0.02 * np.abs(hooked).max()
    else:
        np.testing.assert_allclose(cm(ids[0]).numpy(), hooked, rtol=1e-4, atol=1e-4)
    install(hf, None)
    with torch.no_grad():
        assert np.abs(model(ids[0]).numpy() - hooked).max() > 1e-4   # the hooks did change the outputs


def test_torch_mirror_and_top_k_equal_the_numpy_reference():
    rng = np.random.default_rng(0)
    d, n = 24, 40
    x = rng.standard_normal((7, d)).astype(np.float32)
    wg, wu, wd = (rng.standard_normal(s).astype(np.float32) for s in ((n, d), (n, d), (d, n)))
    x_thr, h_thr = np.abs(rng.standard_normal(d)).astype(np.float32), np.abs(rng.standard_normal(n)).astype(np.float32)
    for attrs in ({"x_keep": 0, "h_keep": 0, "criterion": "product"}, {"x_keep": 9, "h_keep": 13, "criterion": "gate"}):
        attrs = {"gate_act": "silu", "up_act": "identity", **attrs}
        ref = input_sparse_reference(x, wg.T, wu.T, wd.T, x_thr, h_thr, attrs)
        got = input_sparse_torch(*map(torch.from_numpy, (x, wg, wu, wd, x_thr, h_thr)), attrs, torch.nn.functional.silu)
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-5)
    mask = keep_mask(x, x_thr, 9)
    assert (mask.sum(-1) == 9).all()   # a fixed count per token
    # a tie at the k-th ratio keeps all of its entries; a ratio of 0 or NaN is never kept, whatever k is
    row = np.array([[3.0, 1.0, 2.0, 2.0, 0.0, np.nan]], np.float32)
    assert keep_mask(row, np.ones(6, np.float32), 2).tolist() == [[True, False, True, True, False, False]]
    assert keep_mask(row, np.ones(6, np.float32), 6).tolist() == [[True, True, True, True, False, False]]


def test_input_sparse_kernel_matches_the_reference_and_skips():
    tvm = pytest.importorskip("tvm")
    from actsparse.codegen.kernels.common import build_standalone
    from actsparse.codegen.kernels.input_sparse_mlp import input_sparse_gated_mlp
    from actsparse.codegen.kernels.schedule import CpuSchedule

    from .test_kernels_x86 import host_target

    d, n = 37, 53
    rng = np.random.default_rng(1)
    cases = [("product", "silu", "identity", CpuSchedule(lanes=16, threads=2)),
             ("gate", "gelu_tanh", "relu", CpuSchedule(lanes=8, threads=3, rows=1, accumulators=3, prefetch=False,
                                                        vector_registers=16))]
    # by_rows: the work split by rows up to that many tokens (None: the L2's bound, both calls), else by columns
    for (criterion, gate_act, up_act, sched), by_rows in itertools.product(cases, (None, 3)):
        fn = build_standalone(input_sparse_gated_mlp(d, n, gate_act=gate_act, up_act=up_act, criterion=criterion,
                                                     sched=sched, by_rows=by_rows), host_target())
        for m in (1, 5):
            x = rng.standard_normal((m, d)).astype(np.float32)
            wg, wu = (rng.standard_normal((d, n)).astype(np.float32) for _ in range(2))
            wd = rng.standard_normal((n, d)).astype(np.float32)
            x_thr = np.full(d, 0.7, np.float32)
            h_thr = np.full(n, 0.5, np.float32)
            attrs = {"gate_act": gate_act, "up_act": up_act, "criterion": criterion}
            ref = input_sparse_reference(x, wg, wu, wd, x_thr, h_thr, attrs)
            # the kernel must not read skipped rows: NaN in every row of a channel no token keeps
            dead = ~(np.abs(x) > x_thr).any(0)
            assert dead.any()
            wg[dead], wu[dead] = np.nan, np.nan
            out = tvm.runtime.tensor(np.full((m, d), np.nan, np.float32))
            fn(*[tvm.runtime.tensor(np.ascontiguousarray(v)) for v in (x, wg, wu, wd, x_thr, h_thr)], out)
            np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_greedy_allocation_spends_the_budget_where_errors_are_cheap():
    rng = np.random.default_rng(2)
    d, n = 16, 32
    blocks, rows = [], []
    for scale in (1.0, 1.0):
        wg, wu = (rng.standard_normal((n, d)).astype(np.float32) / 4 for _ in range(2))
        blocks.append(BlockWeights(wg, wu, rng.standard_normal((d, n)).astype(np.float32) * scale, "silu"))
        rows.append(rng.standard_normal((256, d)).astype(np.float32))
    rows[1][:, : d // 2] *= 0.01   # block 1: half its inputs are tiny, so x sparsity there is nearly free
    levels = greedy_allocation(blocks, rows, method("teal-greedy"), 0.3, progress=False)
    shares = blocks[0].byte_shares()
    for sx, sh in levels:   # every block skips its share of the budget, no more than one step beyond
        assert 0.3 - 1e-9 <= sx * shares[0] + sh * shares[1] < 0.3 + LEVEL_STEP
    assert levels[1][0] >= levels[0][0] + 0.2   # block 1 spends its budget on its cheap x
    assert levels[1][1] < levels[0][1]          # and block 0 on h instead
    plans = calibrate_blocks(blocks, rows, "teal-greedy", 0.3, progress=False)
    assert np.mean([p.effective for p in plans]) == pytest.approx(0.3, abs=0.05)
    # topk-greedy: the same allocation as counts per token (block 1 keeps fewer inputs), each block at its budget
    counts = calibrate_blocks(blocks, rows, "topk-greedy", 0.3, progress=False)
    assert counts[1].x_keep < counts[0].x_keep and counts[1].h_keep > counts[0].h_keep
    for p in counts:
        assert p.effective == pytest.approx(0.3, abs=LEVEL_STEP)


@pytest.mark.parametrize("name", ["teal", "wina", "teal-cats", "topk"])
def test_error_curves_equal_the_level_by_level_block_errors(name):
    from actsparse.passes.greedy_allocation import error_curves
    from actsparse.passes.input_thresholds import dense_out, input_thresholds, relative_error

    rng = np.random.default_rng(3)
    d, n = 24, 48
    bw = BlockWeights(*(rng.standard_normal(s).astype(np.float32) / 4 for s in ((n, d), (n, d), (d, n))), "silu")
    rows = (rng.standard_normal((200, d)) * np.linspace(0.1, 3, d)).astype(np.float32)
    levels = np.arange(0, 0.951, 0.1)
    m, dense = method(name), dense_out(bw, rows)
    cx, ch = error_curves(bw, rows, m, levels)
    np.testing.assert_allclose(cx, [relative_error(bw, rows, dense, input_thresholds(bw, rows, m, lv, 0.0))
                                    for lv in levels], rtol=1e-6)
    np.testing.assert_allclose(ch, [relative_error(bw, rows, dense, input_thresholds(bw, rows, m, 0.0, lv))
                                    for lv in levels], rtol=1e-6)
    assert cx[0] == ch[0] == 0.0 and cx[-1] > 0.01 and ch[-1] > 0.01   # the levels do cost


def test_bad_calibration_is_one_clear_error():
    from actsparse.passes.pipeline import parse_pipeline

    with pytest.raises(ValueError, match="unknown storage 'int3'; valid: fp32, fp16, int8, int4"):
        parse_pipeline("sparsify-threshold{storage=int3}")
    graph = gated_mlp_graph(act="silu")
    short = [(mlp_input(seq=8, seed=s),) for s in range(2)]   # 16 tokens
    with pytest.raises(ActsparseError, match=r"gave 16 tokens at mlp; sparsity 0.5 needs at least 32"):
        actsparse.compile(graph, (mlp_input(),), mode="threshold", calibration=short, sparsity=0.5, method="wina")
    enough = [(mlp_input(seq=64, seed=s),) for s in range(2)]
    with pytest.raises(ActsparseError, match="sparsity 0.97 is out of reach: no matrix is sparsified beyond 0.95"):
        actsparse.compile(graph, (mlp_input(),), mode="threshold", calibration=enough * 10, sparsity=0.97,
                          method="wina-greedy")
    huge = gated_mlp_graph(act="silu")
    huge.weights["mlp.up.weight"][:] = 1e38   # float32 overflow in the activations
    with pytest.raises(ActsparseError, match="activations overflow"):
        actsparse.compile(huge, (mlp_input(),), mode="threshold", calibration=enough, sparsity=0.5, method="teal")
    assert issubclass(CalibrationError, ActsparseError)


def test_default_method_reports_effective_sparsity():
    graph = gated_mlp_graph(act="silu")
    held_out = mlp_input(seq=64, seed=50)
    cm = actsparse.compile(graph, (held_out,), mode="threshold", sparsity=0.5,
                           calibration=[(mlp_input(seq=64, seed=s),) for s in range(2, 8)])
    block = cm.report.blocks[0]
    assert block.method == DEFAULT_METHOD and block.mode == "input"
    assert abs(cm.report.effective_sparsity - 0.5) < 0.08 and block.input_sparsity > 0
    assert "effective" in str(cm.report) and "weight bytes not" in str(cm.report)
    np.testing.assert_allclose(cm(held_out), evaluate(cm.graph, [held_out])[0], rtol=1e-4, atol=1e-5)


def test_text_windows_are_cached_and_keyed_by_their_inputs(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from actsparse.passes.calibration_data import text_windows

    words = ["the", "cat", "sat", "on", "a", "mat", "[UNK]"]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on a mat " * 20)
    windows = text_windows([text], tokenizer, window=8, max_windows=5, directory=tmp_path / "cache")
    assert len(windows) == 5 and windows[0][0].shape == (1, 8) and windows[0][0][0, :3].tolist() == [0, 1, 2]
    cached = list((tmp_path / "cache" / "windows").glob("*.safetensors"))
    assert len(cached) == 1 and cached[0].with_suffix(".json").exists()
    again = text_windows([text], tokenizer, window=8, max_windows=5, directory=tmp_path / "cache")
    assert all((a[0] == b[0]).all() for a, b in zip(windows, again))
    text.write_text("a mat " * 40)   # changed text: a new key, not the stale entry
    changed = text_windows([text], tokenizer, window=8, max_windows=5, directory=tmp_path / "cache")
    assert changed[0][0][0, 0] == 4 and len(list((tmp_path / "cache" / "windows").glob("*.safetensors"))) == 2
    with pytest.raises(CalibrationError, match="shorter than one window"):
        text.write_text("the cat")
        text_windows([text], tokenizer, window=8, directory=tmp_path / "cache")


def test_text_windows_begin_with_bos_where_the_tokenizer_puts_one(tmp_path):
    """A tokenizer that starts every text with BOS (Gemma's, Llama's): each window is BOS and then `window` - 1
    tokens of text, the text running on from one window to the next; one that does not: text only."""
    tokenizers = pytest.importorskip("tokenizers")
    from actsparse.passes.calibration_data import bos_prefix, text_windows

    words = ["<bos>", "the", "cat", "sat", "on", "a", "mat", "[UNK]"]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    with_bos = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<bos>")
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on a mat " * 20)
    assert bos_prefix(with_bos) == [0]
    windows = [w[0][0].tolist() for w in text_windows([text], with_bos, window=4, max_windows=3,
                                                       directory=tmp_path / "cache")]
    assert windows == [[0, 1, 2, 3], [0, 4, 5, 6], [0, 1, 2, 3]]
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="$A")
    plain = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<bos>")
    assert bos_prefix(plain) == []
    assert text_windows([text], plain, window=4, max_windows=1, directory=tmp_path / "cache")[0][0][0].tolist() \
        == [1, 2, 3, 4]
    with pytest.raises(CalibrationError, match="no room for text after the tokenizer's BOS"):
        text_windows([text], with_bos, window=1, directory=tmp_path / "cache")


def test_rotated_method_turns_the_input_and_beats_the_plain_one_on_correlated_inputs():
    """rotated-wina-greedy: a linear(x, @Qᵀ) in front of the input-sparse block, gate/up turned alike, the compiled
    module equal to the IR, the rotation's bytes paid from the budget, and on inputs whose energy sits in a few
    directions (as LLM activations) a much smaller output error than wina-greedy at the same effective sparsity."""
    graph = gated_mlp_graph(d=48, n=96, act="silu")
    rng = np.random.default_rng(3)
    basis = rng.standard_normal((6, 48)).astype(np.float32)

    def correlated(seq, seed):
        r = np.random.default_rng(seed)
        return (r.standard_normal((1, seq, 6)) @ basis + 0.05 * r.standard_normal((1, seq, 48))).astype(np.float32)

    calibration = [(correlated(128, s),) for s in range(4)]
    held_out = correlated(32, 99)
    dense = evaluate(graph, [held_out])[0]
    errors = {}
    for name in ("wina-greedy", "rotated-wina-greedy"):
        cm = actsparse.compile(graph, (held_out,), mode="threshold", calibration=calibration, sparsity=0.4,
                               method=name)
        node = next(n for n in cm.graph.nodes if n.op == "sparse_gated_mlp")
        assert node.attrs["mode"] == "input"
        seen = x_as_dots_see(held_out, "q8_0") if name.startswith("rotated") else held_out   # the q8_0 Q's dot (VNNI)
        np.testing.assert_allclose(cm(held_out), evaluate(cm.graph, [seen])[0], rtol=1e-4, atol=1e-5)
        errors[name] = float(np.linalg.norm(cm(held_out) - dense) / np.linalg.norm(dense))
        block = cm.report.blocks[0]
        if name.startswith("rotated"):
            rotation = node.inputs[0].inputs[1]
            assert node.inputs[0].op == "linear" and rotation.shape == (48, 48)
            assert rotation.attrs["layout"] == "q8_0" and cm.report.pass_stats["sparsify-threshold"]["rotation-int8"]
            share = 48 * 48 * 34 / 32 / (3 * 48 * 96 * 4)   # Q in q8_0, the block in fp32
            assert node.attrs["rotation_share"] == pytest.approx(share, abs=1e-4)
            assert block.effective_calibrated == pytest.approx(0.4, abs=0.03)   # net of the rotation's bytes
        else:
            assert node.inputs[0].op == "input"
    assert errors["rotated-wina-greedy"] < 0.5 * errors["wina-greedy"], errors
    # where Q's share does not fit beside the budget (0.92 + 4.4% > 0.95), or on inputs with no preferred
    # directions (rotating gains nothing and costs Q's bytes), the block is calibrated as it is
    isotropic = [(np.random.default_rng(s).standard_normal((1, 128, 48)).astype(np.float32),) for s in range(4)]
    for sparsity, data in ((0.92, calibration), (0.4, isotropic)):
        cm = actsparse.compile(graph, (held_out,), mode="threshold", calibration=data, sparsity=sparsity,
                               method="rotated-wina-greedy")
        node = next(n for n in cm.graph.nodes if n.op == "sparse_gated_mlp")
        assert node.inputs[0].op == "input" and "rotation_share" not in node.attrs, sparsity
        assert cm.report.blocks[0].effective_calibrated == pytest.approx(sparsity, abs=0.03)


@pytest.mark.parametrize("quantize, q_layout, share", [("int4", "q8_0", 48 * 48 * 34 / (3 * 48 * 96 * 18)),
                                                       ("fp16", "q8_0", 48 * 48 * 34 / 32 / (3 * 48 * 96 * 2))])
def test_rotation_is_stored_and_priced_as_its_table_says_under_quantize(quantize, q_layout, share):
    """quantize= keeps the rotation at ROTATION_STORAGE's kind (int8 under int4), calibration prices Q's bytes
    against the block in that storage, and the compiled module equals the IR."""
    graph = gated_mlp_graph(d=48, n=96, act="silu")
    calibration = few_direction_inputs(samples=3)   # energy in a few directions: the rotation pays
    x = calibration[0][0][:, :16]
    cm = actsparse.compile(graph, (x,), mode="threshold", calibration=calibration, sparsity=0.3,
                           method="rotated-wina-greedy", quantize=quantize, target=paying_x86())
    node = next(n for n in cm.graph.nodes if n.op == "sparse_gated_mlp")
    rotation = node.inputs[0].inputs[1]
    assert rotation.attrs.get("layout", "dense") == q_layout
    assert cm.graph.weights[rotation.attrs["name"]].dtype == np.uint8
    assert node.attrs["rotation_share"] == pytest.approx(share, abs=1e-4)
    assert cm.report.blocks[0].effective_calibrated == pytest.approx(0.3, abs=0.03)   # net of Q's bytes
    assert cm.report.pass_stats["sparsify-threshold"]["rotation-int8"] == 1   # quantize leaves it as it is
    seen = x_as_dots_see(x, "q8_0")   # the q8_0 rotation's dot rounds x to 8 bits on VNNI
    if quantize == "int4":  # and the down projection its coefficients (VNNI: codegen/kernels/quant_axpy8.py)
        assert_quantized_close(cm(x), evaluate(cm.graph, [seen])[0], rtol=1e-3, atol=1e-4)
    else:
        np.testing.assert_allclose(cm(x), evaluate(cm.graph, [seen])[0], rtol=1e-3, atol=1e-4)


def test_metric_rotation_makes_components_uncorrelated_and_weight_columns_orthonormal():
    """rotated-metric-*'s basis: x' = x·T has a diagonal Gram matrix on the calibration rows, W' = W·T⁻ᵀ orthonormal
    columns, and the block's gate/up pre-activations are unchanged (W'·x'ᵀ = W·xᵀ)."""
    from actsparse.passes.rotation import metric_rotation, rotated, weight_turn

    rng = np.random.default_rng(0)
    w_gate, w_up, w_down = (rng.standard_normal(shape).astype(np.float32) for shape in ((40, 16), (40, 16), (16, 40)))
    bw = BlockWeights(w_gate, w_up, w_down, "silu")
    rows = (rng.standard_normal((256, 4)) @ rng.standard_normal((4, 16)) + 0.1 * rng.standard_normal((256, 16)))
    t = metric_rotation(rows.astype(np.float32), bw, 16)
    turned, turned_rows = rotated(bw, rows.astype(np.float32), t, weight_turn(t))
    w = np.concatenate([turned.w_gate, turned.w_up]).astype(np.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(16), atol=2e-3)
    gram = turned_rows.astype(np.float64).T @ turned_rows
    off = gram - np.diag(np.diag(gram))
    assert np.abs(off).max() < 1e-2 * np.abs(np.diag(gram)).max()
    assert np.all(np.diff(np.diag(gram)) <= 1e-3 * gram[0, 0])   # largest first
    np.testing.assert_allclose(turned_rows @ turned.w_gate.T, rows @ bw.w_gate.T, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(weight_turn(t).T @ t.astype(np.float32), np.eye(16), atol=1e-4)


def test_calibration_leaves_each_samples_first_positions_out_where_asked():
    """A decoder's calibration skips each sample's first SINK_POSITIONS rows (the attention sink: no decode step is
    one) where asked, here 3; the index of the rows kept (which the Fisher weights are looked up by) counts every
    row, skipped too."""
    from actsparse.passes import run_pipeline
    from actsparse.passes.calibrate import SINK_POSITIONS, TokenSteps, _positions, collect_inputs
    from actsparse.passes.canonicalize import Canonicalize
    from actsparse.passes.detect_gated_mlp import DetectGatedMLP

    graph = run_pipeline(gated_mlp_graph(act="silu"), [Canonicalize(), DetectGatedMLP()]).graph
    block = next(n for n in graph.nodes if n.op == "gated_mlp")
    samples = []
    for s in range(3):
        x = mlp_input(seq=7, seed=s)
        x[0, :, 1] = np.arange(7)   # each row says its position
        samples.append((x,))
    rows, index = collect_inputs(graph, [block], samples, progress=False, with_index=True, skip_positions=3)
    assert rows[0].shape == (3 * 4, 24) and (rows[0][:, 1] >= 3).all()
    assert index[0].tolist() == [i + 7 * s for s in range(3) for i in range(3, 7)]
    assert len(collect_inputs(graph, [block], samples, progress=False)[0]) == 21   # none skipped unless asked
    # fed token by token: a call's number is its position
    calls = [np.zeros((1, 1, 24)) for _ in range(5)]
    assert _positions(calls, True).tolist() == [0, 1, 2, 3, 4] and TokenSteps is not None
    assert _positions([np.zeros((2, 3, 24))], False).tolist() == [0, 1, 2, 0, 1, 2] and SINK_POSITIONS == 1


def test_calibration_keeps_a_routed_blocks_own_rows_with_their_weights_and_counts_every_one():
    """`collect_inputs(routing=)`: a block's rows where its routing weight is 0 are left out; the RoutedRows beside
    them hold the kept rows' weights (aligned, also after the max_tokens sample) and how many rows were routed to it
    in all (its share of its layer's reads), not how many were kept."""
    from actsparse.ir import Graph, Node, TensorType
    from actsparse.passes import run_pipeline
    from actsparse.passes.calibrate import collect_inputs
    from actsparse.passes.canonicalize import Canonicalize
    from actsparse.passes.detect_gated_mlp import DetectGatedMLP

    graph = run_pipeline(gated_mlp_graph(act="silu"), [Canonicalize(), DetectGatedMLP()]).graph
    block = next(n for n in graph.nodes if n.op == "gated_mlp")
    x = block.inputs[0]
    weight = Node("slice", (x,), {"axis": x.type.rank - 1, "start": 1, "end": 2, "step": 1},
                  TensorType((*x.shape[:-1], 1), x.dtype))
    graph = Graph(graph.inputs, (*graph.outputs, weight), graph.weights)   # in the graph, as a router's weight is
    samples = []
    for s in range(3):
        xs = mlp_input(seq=7, seed=s)
        xs[0, :, 1] = np.where(np.arange(7) % 2 == 0, 0.0, np.arange(7) + 10.0 * s)   # routed: the odd positions
        samples.append((xs,))
    rows, index, routed = collect_inputs(graph, [block], samples, progress=False, with_index=True, routing=[weight])
    assert index[0].tolist() == [i + 7 * s for s in range(3) for i in (1, 3, 5)]
    assert routed[0].tokens == 9 and routed[0].weights.tolist() == rows[0][:, 1].tolist()
    rows, routed = collect_inputs(graph, [block], samples, max_tokens=4, progress=False, routing=[weight])
    assert len(rows[0]) == 4 and routed[0].tokens == 9 and (routed[0].weights == rows[0][:, 1]).all()
    rows, routed = collect_inputs(graph, [block], samples, progress=False, routing=[None])
    assert len(rows[0]) == 21 and routed == [None]
