"""Detection that generalizes, on real architectures: every gated MLP of each transformers architecture is found
(the pass statistics prove which rewrite fired), plain MLPs never are, and the rewritten graphs compute what torch
computes. The hand-written rewrite forms and spellings: tests/test_detection_forms.py.

Evidence per case, cheapest first: the pipeline's counts and the reference interpreter on the rewritten graph
(every architecture, its default activation in mode "auto" and its ReLU twin in mode "exact"); then one
end-to-end compile per architecture, compared with torch. Models are tiny (hidden 32, intermediate 64, 2 layers,
vocab 128) and share kernel sizes, so kernels are built once.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import actsparse
from actsparse.frontends import CausalLMLogits, import_hf
from actsparse.ir import evaluate
from actsparse.passes import pipeline_for, run_pipeline

from .test_detection_forms import SEQ, D, N, _close, _torch_out

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

SMALL = dict(hidden_size=D, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=N,
             vocab_size=128, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
GPT2 = dict(n_embd=D, n_layer=2, n_head=4, n_positions=64, vocab_size=128, pad_token_id=0, bos_token_id=1,
            eos_token_id=2)
QWEN2_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=N // 2, shared_expert_intermediate_size=N,
                 norm_topk_prob=True, mlp_only_layers=[1])  # layer 0: 4 experts + a shared expert; layer 1 dense
ARCHS = {  # case -> (architecture, config, the ReLU twin's override, detect-gated-mlp counts in mode "auto")
    "llama": ("Llama", {}, {"hidden_act": "relu"}, {"gated-mlp": 2, "swiglu": 2}),
    "mistral": ("Mistral", {"sliding_window": 4}, {"hidden_act": "relu"}, {"gated-mlp": 2, "swiglu": 2}),
    "qwen2": ("Qwen2", {}, {"hidden_act": "relu"}, {"gated-mlp": 2, "swiglu": 2}),
    "gemma": ("Gemma", {"head_dim": 8}, {"hidden_act": "relu"}, {"gated-mlp": 2, "geglu": 2}),
    "gemma2": ("Gemma2", {"head_dim": 8}, {"hidden_activation": "relu"}, {"gated-mlp": 2, "geglu": 2}),
    "phi3": ("Phi3", {}, {"hidden_act": "relu"}, {"gated-mlp": 2, "swiglu-fused": 2}),
    "mixtral": ("Mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}, {"hidden_act": "relu"},
                {"gated-mlp": 8, "swiglu-fused": 8, "moe-expert": 8}),
    "qwen2-moe": ("Qwen2Moe", QWEN2_MOE, {"hidden_act": "relu"},
                  {"gated-mlp": 6, "swiglu-fused": 4, "swiglu": 2, "moe-expert": 4}),
    "gpt2": ("GPT2", {}, {"activation_function": "relu"}, {"plain-mlp": 2}),  # the negative case
}
OTHER_ARCHS = {  # outside the list: nothing in actsparse names them (detection and interpreter only)
    "qwen3-moe": ("Qwen3Moe", {"head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
                  {}, {"gated-mlp": 8, "swiglu-fused": 8, "moe-expert": 8}),
    "starcoder2": ("Starcoder2", {}, {}, {"plain-mlp": 2}),  # biased c_fc / c_proj nn.Linear, gelu_tanh
}
# one end-to-end compile per architecture: "exact" compiles the ReLU twin, "auto" the default activation
END_TO_END = {"llama": "exact", "phi3": "exact", "mixtral": "exact", "mistral": "auto", "qwen2": "auto",
              "gemma": "auto", "gemma2": "auto", "qwen2-moe": "auto", "gpt2": "auto"}


def _hf_model(case: str, relu: bool = False) -> nn.Module:
    arch, overrides, relu_override, _ = {**ARCHS, **OTHER_ARCHS}[case]
    config = {**(GPT2 if arch == "GPT2" else SMALL), **overrides, **(relu_override if relu else {})}
    model_cls = transformers.GPT2LMHeadModel if arch == "GPT2" else getattr(transformers, f"{arch}ForCausalLM")
    torch.manual_seed(0)
    return CausalLMLogits(model_cls(getattr(transformers, f"{arch}Config")(**config))).eval()


def _relu_counts(counts: dict) -> dict:
    return {k.replace("swiglu", "reglu").replace("geglu", "reglu"): v for k, v in counts.items()}


def _ids(seq: int = SEQ, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, 128, (1, seq), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def hf():
    """(case, relu) -> (torch model, imported graph), each imported once per test module."""
    cache = {}

    def get(case: str, relu: bool = False):
        if (case, relu) not in cache:
            model = _hf_model(case, relu)
            cache[case, relu] = model, import_hf(model.model, seq_len=SEQ)
        return cache[case, relu]
    return get


# --- architectures ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(ARCHS) + list(OTHER_ARCHS))
def test_architecture_blocks_are_detected_per_pattern(hf, case):
    model, graph = hf(case)
    result = run_pipeline(graph, pipeline_for("auto"))
    counts = {**ARCHS, **OTHER_ARCHS}[case][3]
    assert result.stats["detect-gated-mlp"] == counts
    blocks = [n for n in result.graph.nodes if n.op == "gated_mlp"]
    routed = [n for n in result.graph.nodes if n.op == "routed_moe"]
    assert len(blocks) + sum(n.attrs["experts"] for n in routed) == counts.get("gated-mlp", 0)
    if "geglu" in counts:
        assert {n.attrs["gate_act"] for n in blocks} == {"gelu_tanh"}  # gelu_pytorch_tanh, Gemma's default
    if "moe-expert" in counts:  # every expert was detected, then each MoE layer's experts run routed, in one op
        assert result.stats["route-moe"] == {"routed-moe": len(routed), "routed-experts": counts["moe-expert"]}
        assert [n.attrs["experts"] for n in routed if ".layers.0." in n.loc] == [4]
        assert all(n.loc.endswith("mlp.experts") and n.attrs["mode"] == "dense" for n in routed)
        assert not any(n.attrs.get("expert", -1) >= 0 for n in blocks)  # no expert left in the all-experts form
        assert not any("forward" in m.__dict__ for m in model.modules())  # the export-time forward is undone
    ids = _ids(seq=7)  # not the export's length: the sequence stays symbolic through every rewrite
    _close(evaluate(result.graph, [ids.numpy()])[0], _torch_out(model, ids))


@pytest.mark.parametrize("case", list(ARCHS))
def test_relu_twin_is_exactly_sparse(hf, case):
    model, graph = hf(case, relu=True)
    result = run_pipeline(graph, pipeline_for("exact"))
    counts = _relu_counts(ARCHS[case][3])
    assert result.stats["detect-gated-mlp"] == counts
    n_blocks, n_plain = counts.get("gated-mlp", 0), counts.get("plain-mlp", 0)  # relu GPT-2: non-gated, exact too
    assert result.stats["sparsify-exact"] == {**({"reglu": n_blocks} if n_blocks else {}),
                                              **({"relu-mlp": n_plain} if n_plain else {})}
    routed_experts = sum(n.attrs["experts"] for n in result.graph.nodes if n.op == "routed_moe")
    assert routed_experts == counts.get("moe-expert", 0)  # experts run routed, each exactly sparse
    assert result.graph.count("sparse_gated_mlp") + routed_experts == n_blocks + n_plain
    assert result.graph.count("gated_mlp") == 0
    ids = _ids(seed=2)
    _close(evaluate(result.graph, [ids.numpy()])[0], _torch_out(model, ids))


@pytest.mark.parametrize("case", list(END_TO_END))
def test_architecture_compiles_end_to_end(hf, case):
    mode = END_TO_END[case]
    model, graph = hf(case, relu=mode == "exact")
    ids = _ids(seed=3)
    # one case goes through the torch API (torch in, torch out); the others reuse the imported graph
    cm = actsparse.compile(model, (ids,), mode=mode) if case == "mixtral" else \
        actsparse.compile(graph, (ids.numpy(),), mode=mode)
    out = cm(ids) if case == "mixtral" else cm(ids.numpy())
    _close(out.numpy() if case == "mixtral" else out, _torch_out(model, ids))
    if case != "mixtral":  # the graph is symbolic in the sequence length: another length runs too
        _close(cm(_ids(9, seed=4).numpy()), _torch_out(model, _ids(9, seed=4)))

    counts = ARCHS[case][3]
    rows = cm.report.blocks
    assert len(rows) == counts.get("gated-mlp", 0) + counts.get("plain-mlp", 0)
    if case == "gpt2":
        assert [(r.location, r.pattern, r.mode, r.n_ff) for r in rows] == [
            ("transformer.h.0.mlp", "plain-mlp", "dense", 4 * D), ("transformer.h.1.mlp", "plain-mlp", "dense", 4 * D)]
        assert all("non-gated" in r.reason for r in rows)
    elif mode == "exact":
        assert {r.pattern for r in rows} == {"reglu"} and {r.mode for r in rows} == {"exact"}
    else:
        assert {r.mode for r in rows} == {"dense"} and all("not exactly sparse" in r.reason for r in rows)
    if case in ("mixtral", "qwen2-moe"):
        experts = sorted((r.location, r.expert) for r in rows if r.expert is not None)
        assert experts[:4] == [(f"model.layers.0.mlp.experts.{e}", e) for e in range(4)]
        assert "(expert 3)" in str(cm.report)
    if case == "qwen2-moe":
        assert {r.pattern for r in rows} == {"swiglu-fused", "swiglu"}  # experts fused, shared expert + dense not
