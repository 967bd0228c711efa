"""relufy finds gated MLPs by structure and swaps their activation; the recovery recipe (progressive L1, FATReLU
threshold shifting) makes the relufied model sparse again. Models are tiny and random or briefly trained."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import actsparse
from actsparse.models import TinyConfig, TinyLlama
from actsparse.recipes import (
    ActivationCapture,
    Stage,
    l1_factor,
    l1_schedule,
    layer_sparsity,
    plot_layer_sparsity,
    recover,
    shift_thresholds,
)
from actsparse.relufication import RelufyError, ReluGatedMLP, find_gated_mlps, relu_mlps

torch.set_num_threads(1)
SMALL = TinyConfig(d_model=32, n_layers=2, n_heads=2, n_ff=64, max_seq=64, mlp_act="swiglu")


def _tiny(config: TinyConfig = SMALL, seed: int = 0) -> TinyLlama:
    torch.manual_seed(seed)
    return TinyLlama(config).eval()


def _ids(seq: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (2, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind, twin", [("drelu", "drelu"), ("relu", "relu")])
def test_relufied_tiny_equals_hand_written_relu_reference(kind, twin):
    swiglu = _tiny()
    model = actsparse.relufy(swiglu, kind)
    assert [name for name, _ in relu_mlps(model)] == ["layers.0.mlp", "layers.1.mlp"]
    assert list(model.state_dict()) == list(swiglu.state_dict())  # same weights under the same names
    assert isinstance(swiglu.layers[0].mlp, type(swiglu.layers[1].mlp)) and not relu_mlps(swiglu)  # a copy
    x = torch.randn(3, 5, 32)
    with torch.no_grad():
        for i in range(2):
            mlp = swiglu.layers[i].mlp
            gate, up = F.relu(x @ mlp.gate_proj.weight.T), x @ mlp.up_proj.weight.T
            reference = (gate * (F.relu(up) if kind == "drelu" else up)) @ mlp.down_proj.weight.T
            torch.testing.assert_close(model.layers[i].mlp(x), reference, rtol=1e-5, atol=1e-6)
        # the whole model: the same weights in models/tiny.py's own dReLU / ReGLU MLP
        reference_model = TinyLlama(TinyConfig(**{**SMALL.to_dict(), "mlp_act": twin}))
        reference_model.load_state_dict(swiglu.state_dict())
        ids = _ids()
        torch.testing.assert_close(model(ids), reference_model.eval()(ids), rtol=1e-5, atol=1e-5)


def test_relufy_in_place_and_exact_compile():
    model = _tiny()
    same = actsparse.relufy(model, "drelu", inplace=True)
    assert same is model and isinstance(model.layers[1].mlp, ReluGatedMLP)
    ids = _ids(seq=7)[:1]
    cm = actsparse.compile(model, (ids,), mode="exact")
    assert cm.report.pass_stats["sparsify-exact"] == {"drelu": 2}
    with torch.no_grad():
        np.testing.assert_allclose(cm(ids).numpy(), model(ids).numpy(), rtol=1e-4, atol=1e-5)


def test_relufy_transformers_llama_and_fused_phi3():
    transformers = pytest.importorskip("transformers")
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=64, vocab_size=128, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                 eos_token_id=2)
    x = torch.randn(2, 3, 32)
    for arch in ("Llama", "Phi3"):
        torch.manual_seed(0)
        hf = getattr(transformers, f"{arch}ForCausalLM")(getattr(transformers, f"{arch}Config")(**small)).eval()
        model = actsparse.relufy(hf, "drelu")
        assert type(model) is type(hf) and len(relu_mlps(model)) == 2
        for old, (_, new) in zip((layer.mlp for layer in hf.model.layers), relu_mlps(model)):
            if arch == "Phi3":  # fused gate_up split by rows: gate first
                w_gate, w_up = old.gate_up_proj.weight.chunk(2, dim=0)
            else:
                w_gate, w_up = old.gate_proj.weight, old.up_proj.weight
            reference = (F.relu(x @ w_gate.T) * F.relu(x @ w_up.T)) @ old.down_proj.weight.T
            with torch.no_grad():
                torch.testing.assert_close(new(x), reference, rtol=1e-5, atol=1e-6)
        found = find_gated_mlps(actsparse.frontends.CausalLMLogits(model), (torch.arange(1, 7)[None],), model)
        assert [(f.path, f.gate_act, f.up_act) for f in found] == [
            ("model.layers.0.mlp", "relu", "relu"), ("model.layers.1.mlp", "relu", "relu")]


class _ScaledMLP(nn.Module):
    """A gated MLP plus something else inside the module: relufy must not silently swap it."""

    def __init__(self, extra: str):
        super().__init__()
        self.extra = extra
        self.gate_proj, self.up_proj = nn.Linear(16, 32, bias=False), nn.Linear(16, 32, bias=False)
        self.down_proj = nn.Linear(32, 16, bias=False)

    def forward(self, x):
        y = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return y + x if self.extra == "residual" else 2.0 * y


class _Net(nn.Module):
    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.block = nn.Module()
        self.block.mlp = mlp

    def forward(self, x):
        return self.block.mlp(self.norm(x))


@pytest.mark.parametrize("extra", ["residual", "scale"])
def test_structural_check_rejects_a_module_that_is_not_a_plain_gated_mlp(extra):
    torch.manual_seed(0)
    net = _Net(_ScaledMLP(extra))
    with pytest.raises(RelufyError, match=r"block\.mlp \(_ScaledMLP\).*not a plain gated MLP"):
        actsparse.relufy(net, "drelu", (torch.randn(1, 4, 16),))
    assert isinstance(net.block.mlp, _ScaledMLP)  # untouched (relufy works on a copy)


class _PlainMLP(nn.Module):
    """A plain gated MLP whose Linears are called gate/up/down (names ReluGatedMLP uses as properties)."""

    def __init__(self):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(16, 32), nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        return self.down(F.gelu(self.gate(x)) * self.up(x))


def test_relufy_any_module_names_and_biases():
    torch.manual_seed(0)
    net = _Net(_PlainMLP())
    model = actsparse.relufy(net, "relu", (torch.randn(1, 4, 16),))
    mlp = model.block.mlp
    assert isinstance(mlp, ReluGatedMLP) and mlp.names == ("gate_proj", "up_proj", "down_proj")
    old = net.block.mlp
    x = torch.randn(2, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), old.down(F.relu(old.gate(x)) * old.up(x)))


def test_relufy_errors():
    with pytest.raises(RelufyError, match="unknown relufy kind"):
        actsparse.relufy(_tiny(), "gelu")
    with pytest.raises(RelufyError, match="no gated MLP"):
        actsparse.relufy(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)), "drelu", (torch.randn(2, 8),))
    with pytest.raises(RelufyError, match="needs example_inputs"):
        actsparse.relufy(_Net(_ScaledMLP("scale")), "drelu")
    with pytest.raises(RelufyError, match="run actsparse.relufy"):
        ActivationCapture(_tiny())


def test_sine_warmup_schedule_values():
    stages = [Stage(4, 0.1), Stage(2, 0.3)]
    expected = [0.1 * math.sin(math.pi / 8), 0.1 * math.sin(math.pi / 4), 0.1 * math.sin(3 * math.pi / 8), 0.1,
                0.1 + 0.2 * math.sin(math.pi / 4), 0.3]
    np.testing.assert_allclose(l1_schedule(stages), expected, rtol=1e-12)
    assert l1_factor(100, stages) == 0.3  # past the last stage: its target
    assert l1_schedule([(3, 0.0), (2, 0.5)])[:3] == [0.0, 0.0, 0.0]  # a stage may hold λ (plain recovery)
    assert l1_schedule([Stage(2, 0.4), Stage(2, 0.2)])[-1] == pytest.approx(0.2)  # and may lower it
    with pytest.raises(ValueError, match="at least one"):
        l1_schedule([])
    with pytest.raises(ValueError, match="at least one step"):
        Stage(0, 0.1)


def _corpus_batches(seq: int = 32):
    from actsparse.models.data import load_corpus, random_batch

    corpus = load_corpus(200_000)
    generator = torch.Generator().manual_seed(0)
    held = [random_batch(corpus.val, 8, seq, torch.Generator().manual_seed(i)) for i in range(2)]
    return (lambda step: random_batch(corpus.train, 8, seq, generator)), held


def test_short_recovery_lowers_loss_and_raises_sparsity_then_fatrelu_shift(tmp_path):
    model = actsparse.relufy(_tiny(), "drelu")
    train, held = _corpus_batches()
    before = layer_sparsity(model, held)
    history = recover(model, train, [Stage(15, 0.0), Stage(35, 0.5)], lr=3e-3, progress=False,
                      eval_fn=lambda m: {"sparsity": float(np.mean(list(layer_sparsity(m, held).values())))},
                      eval_every=25)
    losses, sparsities = history.losses, history.sparsities
    assert len(losses) == 50 and [e["step"] for e in history.evals] == [25, 50]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.5
    assert np.mean(sparsities[-10:]) > np.mean(sparsities[:10]) + 0.03
    after = layer_sparsity(model, held)
    assert np.mean(list(after.values())) > np.mean(list(before.values()))
    assert [r["l1_factor"] for r in history.steps] == pytest.approx(l1_schedule([Stage(15, 0.0), Stage(35, 0.5)]))

    shift = shift_thresholds(model, held, max_ppl_increase=0.02, search_steps=5, progress=False)
    assert shift.ppl_increase <= 0.02 + 1e-9
    assert shift.mean_sparsity_after >= shift.mean_sparsity_before
    assert all(t >= 0 for t in shift.thresholds.values())
    assert {name: m.threshold for name, m in relu_mlps(model)} == shift.thresholds
    # the shifted activation is FATReLU, which the detector recognizes as such
    if any(t > 0 for t in shift.thresholds.values()):
        found = find_gated_mlps(model, (_ids(seq=6)[:1],))
        assert {f.gate_act for f in found} <= {"fatrelu", "relu"} and "fatrelu" in {f.gate_act for f in found}
    path = plot_layer_sparsity({"before": before, "after": after}, tmp_path / "sparsity.png", target=0.85)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
