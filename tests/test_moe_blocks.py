"""The MoE blocks of DeepSeek-V3, gpt-oss and Cohere-2-MoE end to end (issue 16, item 5): imported, their experts
detected, routed where the routed kernel can run them (or kept all-experts with a note naming why), and the
rewritten graph equal to torch (interpreter, fp32, rtol 1e-4).

- DeepSeek-V3: sigmoid routing scores with a correction bias added for the choice only, group-limited top-k
  (n_group=2, topk_group=1: `scatter_` of a group mask), a shared expert beside the routed ones. Routed.
- gpt-oss: attention sinks (a learned logit per head joined to the scores), biased experts (gate/up biases in
  the block, the down bias added after it), a clamped SwiGLU. Routed with its biases (`routed_moe{bias}`).
- DBRX and JetMoE: expert layouts frontends/moe.py rewrites per expert (a [E·n, d] matrix; a split by counts).
- Cohere-2-MoE: Cohere's parallel block (attention and MLP both read one norm of x) with routed experts. Routed.
- LongCat-Flash style: experts with transformers' interface but not its decorator, and identity ("zero") experts
  past the last expert's weights (frontends/moe.py).
- Ergo: relu² experts, each followed by its own expert's norm. Kept all-experts (plain MLPs: no routed kernel).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from actsparse.frontends.hf import CausalLMLogits  # noqa: E402
from actsparse.frontends.moe import per_expert_routing  # noqa: E402
from actsparse.frontends.torch_export import import_torch  # noqa: E402
from actsparse.ir import evaluate  # noqa: E402
from actsparse.passes import pipeline_for, run_pipeline  # noqa: E402
from actsparse.scripts.arch_table import build_tiny, example_ids, tiny_config  # noqa: E402

torch.set_num_threads(1)


def _deepseek_v3_group_limited():
    """DeepSeek-V3 with 2 expert groups of which each token may use 1, and a nonzero choice bias."""
    from transformers import DeepseekV3ForCausalLM

    config = tiny_config("deepseek_v3")
    config.n_group, config.topk_group = 2, 1
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight") or not p.any():  # router and experts start at zero
                p.normal_(0.0, 0.5 if name.endswith("mlp.gate.weight") else 0.02)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.tensor([-1.0, -1.0, 1.0, 1.0]))  # favours group 1
    return model


def _deepseek_v3_calibrated():
    """(model, ids, calibration, graph): `_deepseek_v3_group_limited`, its example ids, 24 random-id calibration
    samples of their shape and its imported graph."""
    model = _deepseek_v3_group_limited()
    ids = example_ids(model)
    rng = np.random.default_rng(0)
    calibration = [(rng.integers(0, model.config.vocab_size, ids.shape),) for _ in range(24)]
    return model, ids, calibration, import_torch(CausalLMLogits(model).eval(), (ids,))


def _auto(model):
    ids = example_ids(model)
    wrapped = CausalLMLogits(model).eval()
    with torch.no_grad():
        want = wrapped(ids).numpy()
    run = run_pipeline(import_torch(wrapped, (ids,)), pipeline_for("auto"))
    got = evaluate(run.graph, [ids.numpy()])[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    return run, want


def test_deepseek_v3_sigmoid_group_limited_routing_with_a_shared_expert_runs_routed():
    model = _deepseek_v3_group_limited()
    run, want = _auto(model)
    assert run.stats["detect-gated-mlp"]["moe-expert"] == 4  # the one MoE layer's 4 experts (layer 0 is dense)
    assert run.stats["route-moe"] == {"routed-moe": 1, "routed-experts": 4}
    routed = [n for n in run.graph.nodes if n.op == "routed_moe"]
    assert [n.attrs["experts"] for n in routed] == [4]
    shared = [n for n in run.graph.nodes if n.op in ("gated_mlp", "sparse_gated_mlp") and "shared_experts" in n.loc]
    assert len(shared) == 1  # the shared expert stays a block of its own, beside the routed sum
    with torch.no_grad():  # the choice bias matters here: without it the routing (and so the logits) differ
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.zero_()
        unbiased = CausalLMLogits(model).eval()(example_ids(model)).numpy()
    assert not np.allclose(unbiased, want, rtol=1e-4)


def test_gpt_oss_biased_experts_run_routed_and_match_torch_compiled():
    import actsparse

    model = build_tiny("gpt_oss")
    run, want = _auto(model)  # its attention sinks import too
    detected = run.stats["detect-gated-mlp"]
    assert detected["moe-expert"] == 8 and detected["biased"] == 8
    assert run.stats["route-moe"] == {"routed-moe": 2, "routed-experts": 8, "routed-biased": 2}
    routed = [n for n in run.graph.nodes if n.op == "routed_moe"]
    assert [(n.attrs["bias"], n.attrs["mode"], len(n.inputs)) for n in routed] == [(True, "dense", 9)] * 2
    assert not any(n.op == "gated_mlp" for n in run.graph.nodes)  # no expert left in the all-experts form
    ids = example_ids(model)
    compiled = actsparse.compile(run.graph, (ids.numpy(),), mode="auto")  # the biased routed kernel
    np.testing.assert_allclose(np.asarray(compiled(ids.numpy())), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("arch, layers", [("dbrx", 2), ("jetmoe", 2)])
def test_dbrx_and_jetmoe_expert_layouts_import_and_run_routed(arch, layers):
    """DBRX's [E·n, d] expert matrices with a loop over the experts hit, JetMoE's tokens split by per-expert counts
    (its MLP experts and its mixture-of-attention): rewritten per expert by frontends/moe.py's LAYOUTS."""
    run, _ = _auto(build_tiny(arch))
    experts = build_tiny(arch).config.to_dict()
    experts = experts.get("ffn_config", {}).get("moe_num_experts") or experts.get("num_local_experts")
    assert run.stats["detect-gated-mlp"]["gated-mlp"] == layers * experts
    assert run.stats["route-moe"] == {"routed-moe": layers, "routed-experts": layers * experts}
    assert run.graph.count("routed_moe") == layers


def test_cohere2_moe_parallel_block_runs_routed():
    run, _ = _auto(build_tiny("cohere2_moe"))
    assert run.stats["route-moe"] == {"routed-moe": 2, "routed-experts": 8}
    assert run.graph.count("routed_moe") == 2


class ZeroExperts(nn.Module):
    """LongCat-Flash's experts, small: 3 weighted experts and 2 identity ones, an eager loop over routed tokens."""

    def __init__(self, d=8, n=6, experts=3, zero=2):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(experts, 2 * n, d) * 0.3)
        self.down_proj = nn.Parameter(torch.randn(experts, d, n) * 0.3)
        self.act_fn, self.total_experts = nn.SiLU(), experts + zero

    def forward(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        for e in range(self.total_experts):
            token, k = torch.where(top_k_index == e)  # data-dependent: exported only once rewritten per expert
            x = hidden_states[token]
            if e < self.down_proj.shape[0]:
                gate, up = nn.functional.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
                x = nn.functional.linear(self.act_fn(gate) * up, self.down_proj[e])
            out.index_add_(0, token, x * top_k_weights[token, k, None])
        return out


class ZeroExpertMoE(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.router, self.experts = nn.Linear(d, 5), ZeroExperts(d)

    def forward(self, x):
        weights, index = self.router(x).softmax(-1).topk(2, dim=-1)
        return self.experts(x, index, weights)


def test_undecorated_experts_with_identity_experts_import_per_expert():
    torch.manual_seed(0)
    model, x = ZeroExpertMoE().eval(), torch.randn(7, 8)
    with torch.no_grad():
        want = model(x).numpy()
    with per_expert_routing(model) as patched:
        assert patched == 1  # recognised by the interface: forward(hidden_states, top_k_index, top_k_weights)
    graph = import_torch(model, (x,), dynamic_seq=False)
    np.testing.assert_allclose(evaluate(graph, [x.numpy()])[0], want, rtol=1e-4, atol=1e-5)
    run = run_pipeline(graph, pipeline_for("auto"))
    assert run.stats["detect-gated-mlp"]["moe-expert"] == 3


def test_ergo_experts_keep_the_norm_of_their_own_expert():
    """Ergo (transformers 5.25): relu² experts without a gate whose subclass's forward gives each route its own row
    and scales it by its expert's learned RMSNorm weight (`post_expert_norm(y, expert_ids)`) before the weighted
    sum. The per-expert form applies expert e's norm to expert e's output; without it the logits were off by 0.46
    of the largest. Every expert, the shared one and the dense layer's MLP are exact relu² blocks."""
    run, _ = _auto(build_tiny("ergo"))  # interpreter == torch
    assert run.stats["canonicalize"]["expert-weight"] == 2 * 4  # up and down of each of the 4 experts
    assert run.stats["sparsify-exact"] == {"relu2-mlp": 4 + 1 + 1}


def test_nemotron_h_relu2_experts_without_a_gate_run_routed_and_exact():
    """Nemotron-H's MoE: relu² experts without a gate (plain MLPs: sparsify-exact makes their up factor the constant
    1, `unit`, on the gate's own rows, which no CPU kernel reads). They route as they are: each token runs its top-k
    experts only, and of those only the active neurons' down rows (expert x neuron sparsity). The exact decoder
    (prefill and steps through the routed kernel) generates as transformers does."""
    import actsparse

    model = build_tiny("nemotron_h")
    ids = torch.randint(0, 100, (1, 7), generator=torch.Generator().manual_seed(0))
    expected = _greedy(model, ids, 8)
    lm = actsparse.compile(model, mode="exact", max_seq=20)
    assert lm.report.pass_stats["route-moe"] == {"routed-moe": 1, "routed-experts": 4}
    routed = [n for n in lm.module.graph.nodes if n.op == "routed_moe"]
    assert [(n.attrs["mode"], n.attrs["gate_act"], n.attrs["up_act"]) for n in routed] == [("exact", "relu2", "unit")]
    assert routed[0].inputs[1] is routed[0].inputs[2] or \
        routed[0].inputs[1].attrs["name"] == routed[0].inputs[2].attrs["name"]  # up: the gate's rows, never read
    assert lm.module.graph.count("sparse_gated_mlp") == 2  # the shared expert and the dense layer's MLP
    assert torch.equal(lm.generate(ids, 8), expected)


def test_threshold_mode_thresholds_routed_experts_on_their_tokens_and_the_shared_expert_by_its_method(monkeypatch):
    """Under a per-neuron method (CATS), DeepSeek-V3's routed SwiGLU experts take weighted CATS, a threshold per neuron
    calibrated on the tokens the
    router sends to its expert (passes/routed_thresholds.py), and route-moe stacks them into
    `routed_moe{mode=threshold}` (the CPU's routed kernel reads only the neurons some routed token keeps); the other
    blocks (its shared expert, its dense first layer) take the asked method. The thresholds are each expert's weighted
    scores' quantile on its own tokens, not on every token's, over each neuron's weight; the report says so per expert;
    compiled, it computes what its graph says."""
    import actsparse
    from actsparse.ir.activations import apply
    from actsparse.passes.routed_thresholds import ExpertScores, least_error_cuts, routed_reason

    model, ids, calibration, graph = _deepseek_v3_calibrated()
    from actsparse.passes import sparsify_threshold

    passes, collect = [], sparsify_threshold.collect_inputs
    monkeypatch.setattr(sparsify_threshold, "collect_inputs", lambda *a, **k: passes.append(1) or collect(*a, **k))
    cm = actsparse.compile(graph, (ids.numpy(),), mode="threshold", calibration=calibration, sparsity=0.3,
                           method="cats")
    assert passes == [1]   # one pass over the samples for the experts and the other blocks alike
    stats = cm.report.pass_stats
    assert stats["sparsify-threshold"]["routed-expert-thresholds"] == 4
    assert stats["route-moe"] == {"routed-moe": 1, "routed-experts": 4, "routed-thresholds": 1}
    (routed,) = [n for n in cm.graph.nodes if n.op == "routed_moe"]
    assert routed.attrs["mode"] == "threshold" and routed.attrs["method"] == "weighted-cats"
    thresholds = cm.graph.weights[routed.inputs[6].attrs["name"]]
    # the choice bias favours group 1 (experts 2, 3): experts 0 and 1 see no calibration token (on every token's
    # rows they would take a threshold), keep t = 0
    assert stats["sparsify-threshold"]["routed-expert-too-few-tokens"] == 2
    n_ff = routed.inputs[1].shape[0] // 4
    assert thresholds.shape == (2, 4 * n_ff) and (thresholds[:, :2 * n_ff] == 0).all()
    assert (thresholds[0, 2 * n_ff:] > 0).all()
    thresholded = {n.loc.rsplit(".", 1)[-1] for n in cm.graph.nodes
                   if n.op == "sparse_gated_mlp" and n.attrs["mode"] == "threshold"}
    assert thresholded == {"mlp", "shared_experts"}
    experts = [b for b in cm.report.blocks if b.expert is not None]
    assert [b.reason for b in experts][2:] == [routed_reason("cats")] * 2
    assert all(b.reason.startswith("a routed expert the calibration routed 0 tokens to") for b in experts[:2])
    assert [b.threshold for b in experts] == pytest.approx(np.median(thresholds[0].reshape(4, n_ff), axis=1).tolist())
    np.testing.assert_allclose(cm(ids.numpy()), evaluate(cm.graph, [ids.numpy()])[0], rtol=1e-4, atol=1e-5)
    # each t_i is the layer's gate cut τ_g over c_i = ‖W_down[:, i]‖·mean|u_i| (on the rows routed to expert e, not
    # on every row), each t'_i its cut on h τ_h over ‖W_down[:, i]‖, the pair least_error_cuts chooses from the scores
    # |silu(g)|·c·|r| and contributions |silu(g)·u|·‖W_down[:, i]‖·|r| of the experts' rows pooled: recomputed on
    # each expert's own calibration rows (its input where its routing weight is not 0), the dense graph's values
    dense = run_pipeline(graph, pipeline_for("dense")).graph
    layer = [n for n in dense.nodes if n.op == "routed_moe"][0]
    w_gate, w_up, w_down_t = (dense.weights[w.attrs["name"]] for w in layer.inputs[1:4])
    calibrated = run_pipeline(graph, pipeline_for("threshold", calibration=calibration, sparsity=0.3,
                                                  method="cats")).graph
    x_rows, weights = [], []
    for (sample,) in calibration:
        x, route_w, route_i = evaluate(dense, [sample], keep=list(layer.inputs[0:1]) + list(layer.inputs[4:6]))[1:]
        x_rows.append(x.reshape(-1, x.shape[-1]))   # a graph's compile keeps every position (a decoder's: not the sink)
        weights.append((route_w.reshape(-1, route_w.shape[-1]), route_i.reshape(-1, route_i.shape[-1])))
    x_all = np.concatenate(x_rows)
    route_w, route_i = np.concatenate([w for w, _ in weights]), np.concatenate([i for _, i in weights])
    scored = []
    for e in (2, 3):
        r = (route_w * (route_i == e)).sum(-1)
        own = r != 0
        rows = slice(e * n_ff, (e + 1) * n_ff)
        a, u = apply("silu", x_all[own] @ w_gate[rows].T), x_all[own] @ w_up[rows].T
        norms = np.linalg.norm(w_down_t[rows], axis=1)
        c = norms * np.abs(u).mean(0)
        assert own.sum() <= 512   # every row scored (routed_thresholds.SHARED_ROWS)
        scored.append(ExpertScores(c, norms, np.abs(a) * c * np.abs(r[own, None]),
                                   np.abs(a * u) * norms * np.abs(r[own, None]), 1.0))
    cuts = least_error_cuts(scored, 0.3)
    for e, s in zip((2, 3), scored):
        np.testing.assert_allclose(thresholds[0, e * n_ff:(e + 1) * n_ff], cuts.gate / s.weights, rtol=1e-3)
        np.testing.assert_allclose(thresholds[1, e * n_ff:(e + 1) * n_ff], cuts.h / s.down_norms, rtol=1e-3)
    assert calibrated.count("routed_moe") == 1


def test_threshold_mode_leaves_routed_experts_lossless_where_no_routed_kernel_takes_thresholds(monkeypatch):
    """A kernel family whose routed kernel takes no thresholds (here CUDA's, taken out of ir/moe.py's ROUTED_MODES):
    threshold mode keeps such experts dense and routed there, with the reason in a note, and calibrates the other
    blocks."""
    from actsparse.ir import moe
    from actsparse.ir.moe import routed_reason

    monkeypatch.setitem(moe.ROUTED_MODES, "threshold", ("cpu",))

    model, ids, calibration, graph = _deepseek_v3_calibrated()
    run = run_pipeline(graph, pipeline_for("threshold", "cuda", calibration=calibration, sparsity=0.3,
                                           method="wina"))
    assert run.stats["sparsify-threshold"]["kept-dense-routed-experts"] == 4
    (routed,) = [n for n in run.graph.nodes if n.op == "routed_moe"]
    assert routed.attrs["mode"] == "dense"
    reasons = {n["reason"] for n in run.notes if n.get("kind") == "kept-dense"}
    assert routed_reason("threshold", "dense", "cuda") in reasons


@pytest.mark.parametrize("target, method, mode", [("x86", "rotated-wina-greedy", "input"), ("arm", "wina", "input"),
                                                   ("x86", "teal-cats", "input"),
                                                   ("cuda", "rotated-wina-greedy", "threshold"),
                                                   ("x86", "topk", "threshold")])
def test_routed_experts_take_input_sparsity_where_a_routed_kernel_runs_it(monkeypatch, target, method, mode):
    """Asked to (`routed_experts="input"`), threshold mode's routed experts take the asked input method
    (passes/routed_input.py: `routed_moe{mode=input}`) where the target's routed kernel runs input-sparse experts (x86,
    ARM) and the method counts no fixed number per token; on CUDA (no such kernel) and under top-k they take the
    per-neuron cuts (`mode=threshold`), as they do unasked. The experts no calibration token reaches (DeepSeek-V3's
    choice bias: experts 0 and 1) keep thresholds 0, lossless."""
    from .test_routed_moe import routed_input_experts

    routed_input_experts(monkeypatch)
    model, ids, calibration, graph = _deepseek_v3_calibrated()
    run = run_pipeline(graph, pipeline_for("threshold", target, calibration=calibration, sparsity=0.3, method=method))
    (routed,) = [n for n in run.graph.nodes if n.op == "routed_moe"]
    assert routed.attrs["mode"] == mode
    stats = run.stats["sparsify-threshold"]
    assert stats["routed-expert-too-few-tokens"] == 2
    if mode == "threshold":
        assert stats["routed-expert-thresholds"] == 4 and "routed-expert-input" not in stats
        return
    assert stats["routed-expert-input"] == 4 and "routed-expert-thresholds" not in stats
    assert (routed.inputs[0].op == "linear") == method.startswith("rotated-")   # the layer's one rotation
    d, n = routed.inputs[0].shape[-1], routed.inputs[1].shape[1]
    x_thr, h_thr = (run.graph.weights[w.attrs["name"]] for w in routed.inputs[6:8])
    assert not x_thr[:2 * d].any() and not h_thr[:2 * n].any()   # experts 0, 1: every nonzero x and h kept
    assert x_thr[2 * d:].any() and h_thr[2 * n:].any()
    np.testing.assert_allclose(evaluate(run.graph, [ids.numpy()])[0], CausalLMLogits(model)(ids).detach().numpy(),
                               rtol=0.2, atol=0.2)   # lossy at 0.3, but the same model


def test_a_routed_layer_with_too_few_rows_for_its_basis_stays_unrotated(monkeypatch):
    """A rotated method whose MoE layer pools fewer than ROTATION_TOKENS_PER_CHANNEL calibration rows per channel
    fits no basis there (as a dense block): its experts read x as it is (`routed-layer-unrotated`)."""
    from actsparse.passes import routed_input

    from .test_routed_moe import routed_input_experts

    routed_input_experts(monkeypatch)
    monkeypatch.setattr(routed_input, "ROTATION_TOKENS_PER_CHANNEL", 1000)
    model, ids, calibration, graph = _deepseek_v3_calibrated()
    run = run_pipeline(graph, pipeline_for("threshold", "x86", calibration=calibration, sparsity=0.3,
                                           method="rotated-wina-greedy"))
    (routed,) = [n for n in run.graph.nodes if n.op == "routed_moe"]
    assert routed.attrs["mode"] == "input" and routed.inputs[0].op != "linear"
    assert run.stats["sparsify-threshold"]["routed-layer-unrotated"] == 1
    assert routed.attrs["rotation_share"] == 0.0


def test_phimoe_sparsemixer_routes_on_its_argmax_choices():
    """PhiMoE's sparsemixer picks its two experts by argmax, then argmax of the scores with the first masked, and
    concatenates them (no top-k): every id still lies in [0, E), so route-moe takes the concat of argmaxes as the
    routed indices (`_experts`); the routed decoder generates as transformers does."""
    import actsparse

    model = build_tiny("phimoe")
    ids = torch.randint(3, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    expected = _greedy(model, ids, 6)
    lm = actsparse.compile(model, mode="dense", max_seq=24)
    assert lm.report.pass_stats["route-moe"] == {"routed-moe": 2, "routed-experts": 8}
    (index,) = {n.inputs[5].op for n in lm.module.graph.nodes if n.op == "routed_moe"}
    assert index == "concat"
    assert torch.equal(lm.generate(ids, 6), expected)


def _greedy(model, ids, new: int):
    """transformers' greedy generate of exactly `new` tokens after `ids`."""
    import transformers

    model.generation_config = transformers.GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                                            pad_token_id=0)
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids))


class ChoiceMoE(nn.Module):
    """Three SwiGLU experts weighted by Σ_k V[:, k]·(I[:, k] == e), I chosen by `choose` from the router's scores."""

    def __init__(self, choose):
        super().__init__()
        torch.manual_seed(0)
        self.router = nn.Linear(16, 3, bias=False)
        shapes = ((16, 24), (16, 24), (24, 16))
        self.experts = nn.ModuleList(nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in shapes) for _ in range(3))
        self.choose = choose

    def forward(self, x):
        scores = self.router(x).softmax(-1)
        v, i = self.choose(scores)
        out = 0
        for e, (gate, up, down) in enumerate(self.experts):
            out = out + down(nn.functional.silu(gate(x)) * up(x)) * (v * (i == e)).sum(-1, keepdim=True)
        return out


@pytest.mark.parametrize("choose, routes", [
    (lambda s: torch.topk(s, 2, dim=-1), True),
    (lambda s: s.max(-1, keepdim=True), True),   # argmax, one expert
    (lambda s: (torch.cat([s.max(-1, keepdim=True)[0]] * 2, -1),
                torch.cat([s.argmax(-1, keepdim=True), (s * 0.5).argmax(-1, keepdim=True)], -1)), True),
    (lambda s: (s, torch.arange(3).expand(3, 3) * (s > -1)), False),   # ids the pass cannot bound to [0, E)
])
def test_route_moe_takes_indices_bounded_to_the_experts(choose, routes):
    """The routed indices may be a top-k's, an argmax's (its axis kept) or their concat: each id lies in [0, E), so
    the routed sum equals the all-experts one; indices computed otherwise (here arange times a mask) are left
    all-experts. Routed or not, the graph computes the module."""
    model = ChoiceMoE(choose).eval()
    x = torch.randn(3, 16)
    graph = import_torch(model, (x,), dynamic_seq=False)
    run = run_pipeline(graph, pipeline_for("dense"))
    assert run.stats.get("route-moe", {}).get("routed-moe", 0) == (1 if routes else 0)
    with torch.no_grad():
        np.testing.assert_allclose(evaluate(run.graph, [x.numpy()])[0], model(x).numpy(), rtol=1e-4, atol=1e-5)
