"""The torch.export frontend: imported graphs compute what torch computes, verify, and print/parse back.

Models are tiny (hidden 64, 2 layers, 4 heads, 2 kv heads, intermediate 128, vocab 128) so each import takes a
couple of seconds; graphs are shape-polymorphic in `seq`, so each is also run at a second sequence length.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from actsparse.frontends import FrontendError, UnsupportedOpError, import_hf, import_torch
from actsparse.frontends.errors import SymbolicShapeError
from actsparse.frontends.torch_export import export_program
from actsparse.frontends.torch_importer import Importer
from actsparse.ir import evaluate, parse_graph, print_graph, verify

transformers = pytest.importorskip("transformers")

torch.set_num_threads(1)
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=128, max_position_embeddings=64, pad_token_id=0)
LINEARS_PER_LAYER = 7  # q, k, v, o, gate, up, down


def _hf_model(name: str, **overrides) -> nn.Module:
    config_cls = getattr(transformers, f"{name}Config")
    model_cls = getattr(transformers, f"{name}ForCausalLM")
    torch.manual_seed(0)
    return model_cls(config_cls(**{**SMALL, **overrides})).eval()


def _assert_matches_torch(graph, forward, lengths=(7, 11), vocab=128):
    generator = torch.Generator().manual_seed(1)
    for seq in lengths:
        ids = torch.randint(0, vocab, (1, seq), generator=generator)
        with torch.no_grad():
            expected = forward(ids).numpy()
        (got,) = evaluate(graph, [ids.numpy()])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def _assert_round_trips(graph):
    text = print_graph(graph)
    assert print_graph(verify(parse_graph(text, dict(graph.weights)))) == text


HF_CASES = {
    "llama-relu-tied": ("Llama", dict(hidden_act="relu", tie_word_embeddings=True)),
    "llama-silu-untied": ("Llama", dict(hidden_act="silu", tie_word_embeddings=False)),
    "mistral": ("Mistral", dict(sliding_window=4)),
    "qwen2": ("Qwen2", dict()),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_hf_causal_lm_imports_and_matches_eager(case):
    name, overrides = HF_CASES[case]
    model = _hf_model(name, **overrides)
    graph = import_hf(model, seq_len=7)

    assert [str(i.type) for i in graph.inputs] == ["i64[1,seq]"]
    _assert_matches_torch(graph, lambda ids: model(input_ids=ids, use_cache=False).logits)
    verify(graph)
    _assert_round_trips(graph)
    assert graph.count("linear") == LINEARS_PER_LAYER * SMALL["num_hidden_layers"] + 1
    assert "model.layers.0.mlp.gate_proj.weight" in graph.weights
    gate = next(n for n in graph.nodes if n.op == "linear" and n.inputs[1].attrs["name"].endswith("gate_proj.weight"))
    assert gate.loc.startswith("model.layers.0.mlp.gate_proj (")
    if overrides.get("tie_word_embeddings"):
        assert "lm_head.weight" not in graph.weights  # the head reads the embedding: one shared weight
    biased = sum(1 for n in graph.nodes if n.op == "linear" and len(n.inputs) == 3)
    assert biased == (3 * SMALL["num_hidden_layers"] if name == "Qwen2" else 0)  # Qwen2: q/k/v carry a bias


def test_static_import_fixes_the_sequence_length():
    model = _hf_model("Llama", num_hidden_layers=1)
    graph = import_hf(model, seq_len=5, dynamic_seq=False)
    assert [str(i.type) for i in graph.inputs] == ["i64[1,5]"]
    _assert_matches_torch(graph, lambda ids: model(input_ids=ids, use_cache=False).logits, lengths=(5,))


def test_embedded_tiny_model_imports_and_matches_eager():
    tiny = pytest.importorskip("actsparse.models")
    torch.manual_seed(0)
    config = tiny.TinyConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_ff=128, max_seq=32, mlp_act="relu")
    model = tiny.TinyLlama(config).eval()
    graph = import_torch(model, (torch.zeros(1, 7, dtype=torch.long),))

    _assert_matches_torch(graph, model)
    _assert_round_trips(graph)
    assert graph.count("linear") == LINEARS_PER_LAYER * config.n_layers + 1
    assert graph.count("relu") == config.n_layers


class ManyOps(nn.Module):
    """Exercises the handlers the transformers models do not reach."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(32, 24)
        self.norm = nn.LayerNorm(24)
        self.fused = nn.Linear(24, 48)
        self.mix = nn.Parameter(torch.randn(24, 24))
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, ids):
        x = self.norm(self.embed(ids))  # [1, s, 24]
        gate, up = self.fused(x).chunk(2, dim=-1)
        h = F.gelu(gate, approximate="tanh") * up + torch.addmm(torch.ones(24), x[0], self.mix)
        q, k, v = h.view(1, -1, 2, 12).transpose(1, 2).split([4, 4, 4], dim=-1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        kv = torch.stack([k[:, :1], v[:, :1]], dim=0).sum(0)  # GQA: 2 query heads share 1 kv head
        b = F.scaled_dot_product_attention(q, kv, kv, attn_mask=torch.zeros(1, 1, 1, 1), enable_gqa=True)
        out = torch.cat([a, b], dim=-1).clamp(-3.0, 3.0) * self.scale
        out = out.masked_fill(out > 2.5, 0.0).flatten(0, 1).permute(0, 2, 1).unsqueeze(0).squeeze(0)
        last = out.select(-1, -1)  # a static window of the symbolic dim
        first, *_ = out.unbind(1)
        return (out.amax(-1, keepdim=True) + last.mean() + torch.where(first > 0, first, 0.1).sum()).sigmoid()


def test_misc_ops_match_eager():
    model = ManyOps().eval()
    graph = import_torch(model, (torch.zeros(1, 6, dtype=torch.long),))
    _assert_matches_torch(graph, model, lengths=(6, 9), vocab=32)
    _assert_round_trips(graph)


class Cumulative(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        return torch.cumprod(self.proj(x), dim=-1)  # the line the error must point at


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Cumulative()

    def forward(self, x):
        return self.block(x)


def test_unsupported_op_names_op_module_and_source_line():
    with pytest.raises(UnsupportedOpError) as info:
        import_torch(Wrapper(), (torch.randn(2, 8),), dynamic_seq=False)
    message = str(info.value)
    line = next(i for i, text in enumerate(open(__file__).read().splitlines(), 1) if "torch.cumprod(" in text)
    assert "aten.cumprod.default" in message
    assert "`block`" in message
    assert f"test_frontend_torch.py:{line}" in message
    assert "file an issue" in message


def test_export_failure_explains_and_hints():
    class DataDependent(nn.Module):
        def forward(self, ids):
            return ids * 2 if ids.sum() > 3 else ids

    with pytest.raises(FrontendError, match="could not export DataDependent.*use_cache=False"):
        import_torch(DataDependent(), (torch.ones(1, 4, dtype=torch.long),), dynamic_seq=False)


def test_compound_symbolic_shape_falls_back_to_a_static_import_and_says_so():
    class Squaring(nn.Module):  # seq² is no affine sum of dims (2*seq or seq+1 would be: ir/dims.py)
        def forward(self, ids):
            return (ids.unsqueeze(2) * ids.unsqueeze(1)).reshape(1, -1)  # [1, seq**2]

    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(SymbolicShapeError, match="seq\\*\\*2.*dynamic_seq=False"):
        Importer(export_program(Squaring(), (ids,), True)).run()  # the importer alone names the size
    with pytest.warns(UserWarning, match="seq\\*\\*2.*importing with the example's static shapes"):
        graph = import_torch(Squaring(), (ids,))
    assert str(graph.outputs[0].type) == "i64[1,16]"
    graph = import_torch(Squaring(), (ids,), dynamic_seq=False)
    assert str(graph.outputs[0].type) == "i64[1,16]"


def test_in_place_updates_are_rebound_and_aliased_ones_functionalized():
    class Router(nn.Module):  # a MoE router normalising its top-k weights in place
        def forward(self, x):
            weights, index = x.softmax(-1).topk(2, dim=-1)
            weights /= weights.sum(-1, keepdim=True)
            weights.add_(1)
            return weights * index

    class Aliased(nn.Module):
        def forward(self, x):
            y = x * 2
            view = y[:, :2]
            y.mul_(3)  # updates `view` too
            return view + 1

    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    graph = import_torch(Router(), (x,), dynamic_seq=False)
    np.testing.assert_allclose(evaluate(graph, [x.numpy()])[0], Router()(x).numpy(), rtol=1e-6)
    assert graph.count("topk") == 2  # values and indices
    # torch functionalizes a write through an alias before import, so the view sees the update
    graph = import_torch(Aliased(), (x,), dynamic_seq=False)
    np.testing.assert_allclose(evaluate(graph, [x.numpy()])[0], Aliased()(x).numpy(), rtol=1e-6)
    program = torch.export.export(Aliased(), (x,), strict=False)  # imported as exported: the backstop refuses it
    with pytest.raises(FrontendError, match="in-place aten.mul_.Tensor.*shares memory.*out of place"):
        Importer(program).run()


def test_a_program_exported_by_the_user_compiles_at_the_shapes_it_was_exported_with():
    """compile() takes a torch.export.ExportedProgram: dims the user marked dynamic stay symbolic (any batch and
    length run), static ones are checked; exact mode fires on its dReLU MLPs and matches torch eager."""
    import actsparse
    from tests.factories import tiny

    model = tiny("drelu")
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(3))
    dims = {"input_ids": {0: torch.export.Dim("batch", max=8), 1: torch.export.Dim("length", max=64)}}
    program = torch.export.export(model, (ids,), dynamic_shapes=dims)
    cm = actsparse.compile(program, mode="exact")   # example inputs: the program's own
    assert [b.mode for b in cm.report.blocks] == ["exact", "exact"]
    for shape in ((1, 5), (3, 9)):
        x = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(shape[1]))
        with torch.no_grad():
            np.testing.assert_allclose(np.asarray(cm(x.numpy())), model(x).numpy(), rtol=1e-4, atol=1e-5)
    static = actsparse.compile(torch.export.export(model, (ids,)), (ids,), mode="exact")
    with pytest.raises(actsparse.ActsparseError, match=r"expects i64\[2,6\].*shapes are static.*dynamic_shapes"):
        static(np.zeros((1, 6), np.int64))   # the way out: another compile, from a program with symbolic dims
    with pytest.raises(actsparse.ActsparseError, match=r"expects i64\[2,6\]") as wrong_rank:
        static(np.zeros((6,), np.int64))     # a wrong rank is a wrong array, not a size to make symbolic
    assert "dynamic_shapes" not in str(wrong_rank.value)
