"""rotate_residual (residual_rotation.py): the rotation folded into a pre-norm decoder leaves its logits as they
were, the MLPs then read their normalized input in the principal axes, and models it does not fit are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actsparse.residual_rotation import RotationError, residual_axes, rotate_residual

transformers = pytest.importorskip("transformers")


def _llama(tied: bool = True):
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, vocab_size=128,
                                      max_position_embeddings=64, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():   # gains away from 1, so a missed fold shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def _mlp_inputs(model, ids):
    seen = []
    handles = [layer.mlp.register_forward_pre_hook(lambda _, args: seen.append(args[0][0].detach().double()))
               for layer in model.model.layers]
    with torch.no_grad():
        logits = model(ids).logits.double()
    for h in handles:
        h.remove()
    return logits, seen


def test_folded_rotation_keeps_logits_and_rotates_the_mlp_inputs():
    model = _llama()
    windows = [np.random.default_rng(s).integers(0, 128, (1, 16)) for s in range(3)]
    q = residual_axes(model, windows)
    rotated = rotate_residual(model, windows)
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(7))
    want, inputs = _mlp_inputs(model, ids)
    got, turned = _mlp_inputs(rotated, ids)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    assert rotated.lm_head.weight is not rotated.model.embed_tokens.weight   # tied: untied before the fold
    assert model.lm_head.weight is model.model.embed_tokens.weight           # the original is left as it was
    for layer, x, x_rot in zip(model.model.layers, inputs, turned):
        gain = layer.post_attention_layernorm.weight.detach().double()
        np.testing.assert_allclose(x_rot.numpy(), ((x / gain).numpy() @ q), rtol=1e-4, atol=1e-4)
        assert (x_rot - x).abs().max() > 1e-2   # the rewrite fired: the MLP reads another basis
    for layer in rotated.model.layers:
        assert torch.all(layer.post_attention_layernorm.weight == 1)


def test_principal_axes_come_first():
    model = _llama(tied=False)
    windows = [np.random.default_rng(s).integers(0, 128, (1, 16)) for s in range(3)]
    rotated = rotate_residual(model, windows)
    energy = sum(torch.cat(_mlp_inputs(rotated, torch.from_numpy(w))[1]).square().sum(0) for w in windows)
    assert energy[0] > energy[-1] * 10 and bool(torch.all(energy[:-1] >= energy[1:] * (1 - 1e-6)))


def test_models_it_does_not_fit_are_refused():
    config = transformers.Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=128)
    gemma = transformers.Gemma3ForCausalLM(config).eval()
    with pytest.raises(RotationError, match="post_feedforward_layernorm"):
        rotate_residual(gemma, q=np.eye(32))
    with pytest.raises(RotationError, match="orthogonal"):
        rotate_residual(_llama(), q=np.ones((32, 32)))
    with pytest.raises(RotationError, match="calibration windows"):
        rotate_residual(_llama())
