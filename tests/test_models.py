"""The embedded tiny model: tokenizer, forward contract, activation access, committed weights, export."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from actsparse.models import ByteTokenizer, TinyConfig, TinyLlama, load_tiny
from actsparse.models.checkpoint import load_metadata, weight_paths
from actsparse.models.data import eval_windows, load_corpus
from actsparse.models.metrics import mlp_sparsity

SMALL = TinyConfig(d_model=32, n_layers=2, n_heads=2, n_ff=64, max_seq=32)


@pytest.fixture(autouse=True)
def _one_thread():
    """Keep tests polite on shared machines and deterministic."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny() -> TinyLlama:
    return load_tiny("drelu")


@pytest.fixture(scope="module")
def held_out_ids() -> torch.Tensor:
    """A few windows of stdlib files the model never trained on (the validation split)."""
    corpus = load_corpus()
    inputs, _ = eval_windows(corpus.val, seq_len=128, max_windows=8)
    return inputs


def test_tokenizer_round_trips_unicode_text():
    tokenizer = ByteTokenizer()
    text = "def café(x):\n    return x ** 2  # ✓\n"
    ids = tokenizer.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_tokenizer_decode_replaces_broken_utf8():
    assert ByteTokenizer().decode([0x63, 0xC3]) == "c\ufffd"


@pytest.mark.parametrize("mlp_act", ["drelu", "relu", "swiglu"])
def test_forward_returns_logits_by_default(mlp_act):
    model = TinyLlama(TinyConfig(**{**SMALL.to_dict(), "mlp_act": mlp_act})).eval()
    ids = torch.randint(0, 256, (3, 7))
    logits = model(ids)
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (3, 7, 256)
    logits_again, acts = model(ids, return_mlp_acts=True)
    assert torch.equal(logits, logits_again)
    assert [a.shape for a in acts] == [(3, 7, SMALL.n_ff)] * SMALL.n_layers


def test_attention_is_causal():
    """Changing a later byte must not change earlier logits."""
    torch.manual_seed(0)
    model = TinyLlama(SMALL).eval()
    ids = torch.randint(0, 256, (1, 10))
    changed = ids.clone()
    changed[0, 6] = (changed[0, 6] + 1) % 256
    assert torch.allclose(model(ids)[:, :6], model(changed)[:, :6], atol=1e-6)
    assert not torch.allclose(model(ids)[:, 6:], model(changed)[:, 6:], atol=1e-6)


def test_mlp_acts_are_relu_gate_times_relu_up():
    torch.manual_seed(0)
    model = TinyLlama(SMALL).eval()
    ids = torch.randint(0, 256, (2, 9))
    _, acts = model(ids, return_mlp_acts=True)

    # Recompute layer 0 by hand from its weights.
    layer = model.layers[0]
    x = model.embed_tokens(ids)
    cos, sin = model.rope_cos[:9], model.rope_sin[:9]
    h = x + layer.self_attn(layer.input_layernorm(x), cos, sin)
    normed = layer.post_attention_layernorm(h)
    expected = F.relu(normed @ layer.mlp.gate_proj.weight.T) * F.relu(normed @ layer.mlp.up_proj.weight.T)
    torch.testing.assert_close(acts[0], expected)
    assert (acts[0] == 0).float().mean() > 0.5  # two relus: most entries are exactly zero even untrained


def test_committed_weights_exist_and_are_small():
    tensors_path, json_path = weight_paths("drelu")
    assert tensors_path.stat().st_size <= 10 * 1024 * 1024
    metadata = load_metadata("drelu")
    assert metadata["config"]["mlp_act"] == "drelu"
    assert metadata["metrics"]["sparsity_mean"] >= 0.8


def test_load_tiny_is_float32_eval_model(tiny):
    assert not tiny.training
    assert all(p.dtype == torch.float32 for p in tiny.parameters())
    assert tiny.config.mlp_act == "drelu"


def test_committed_model_is_at_least_80_percent_sparse_on_held_out_text(tiny, held_out_ids):
    sparsity = mlp_sparsity(tiny, held_out_ids)
    assert len(sparsity) == tiny.config.n_layers
    assert sum(sparsity) / len(sparsity) >= 0.8, sparsity


def test_committed_model_beats_unigram_baseline(tiny, held_out_ids):
    """Learned, not random: well under the ~4.7 bits/byte a byte-frequency model gets on stdlib code."""
    logits = tiny(held_out_ids[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), held_out_ids[:, 1:].flatten())
    assert loss.item() / torch.log(torch.tensor(2.0)).item() < 3.0


def test_committed_model_exports_with_torch_export(tiny):
    ids = torch.tensor([ByteTokenizer().encode("def main():\n    return 0\n")])
    exported = torch.export.export(tiny, (ids,), strict=False)
    torch.testing.assert_close(exported.module()(ids), tiny(ids))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert not any("scaled_dot_product" in t for t in targets)


def test_training_script_writes_loadable_checkpoint(tmp_path):
    """A two-step run of the real recipe on a miniature config: files appear and load back identically."""
    from actsparse.models.train import main

    argv = ["--kind", "drelu", "--steps", "2", "--d-model", "32", "--n-layers", "1", "--n-heads", "2",
            "--n-ff", "64", "--seq-len", "16", "--batch-size", "2", "--eval-windows", "2", "--eval-every", "0",
            "--corpus-bytes", "200000", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    assert {p.name for p in tmp_path.iterdir()} == {
        "tiny_drelu.safetensors", "tiny_drelu.json", "tiny_drelu_sparsity.png"
    }  # fmt: skip
    metadata = load_metadata("drelu", tmp_path)
    assert metadata["train_args"]["steps"] == 2
    assert set(metadata["metrics"]) >= {"val_loss", "val_perplexity", "val_bits_per_byte", "sparsity_per_layer"}
    model = load_tiny("drelu", tmp_path)
    assert model.config.d_model == 32 and model.config.n_layers == 1


def test_swiglu_twin_loads_when_committed():
    if not weight_paths("swiglu")[0].exists():
        pytest.skip("tiny_swiglu not trained yet (python -m actsparse.models.train --kind swiglu)")
    model = load_tiny("swiglu")
    assert model.config.mlp_act == "swiglu"
    assert load_metadata("swiglu")["train_args"]["l1"] == 0.0
