"""benchmarks/decode.py's synthetic Mistral-dims decoder (here at tiny dims): ~90% of the MLP neurons are inactive
per token on tokens it was not calibrated on, and its dense GGUF holds every tensor llama.cpp's `llama` needs."""

import numpy as np
import pytest
import torch

from actsparse.benchmarks import decode


def test_synthetic_decoder_has_about_ninety_percent_inactive_neurons_per_token():
    model = decode.build_mistral(layers=2, vocab=512, max_seq=32, dtype="float32", small=True)
    seen = []
    hooks = [layer.mlp.act_fn.register_forward_hook(lambda mod, args, out: seen.append(out.detach()))
             for layer in model.model.layers]
    ids = torch.randint(256, 512, (1, 24), generator=torch.Generator().manual_seed(7))  # not the calibration tokens
    with torch.no_grad():
        model(ids, use_cache=False)
    for h in hooks:
        h.remove()
    active = [float((a > 0).float().mean()) for a in seen]
    assert len(active) == 2 and all(0.05 < a < 0.2 for a in active), active
    per_token = (seen[0][0] > 0).float()  # which neurons fire depends on the token
    assert float((per_token[0] != per_token[1]).float().mean()) > 0.05


def test_dense_gguf_has_the_llama_tensors(tmp_path):
    gguf = pytest.importorskip("gguf")
    model = decode.build_mistral(layers=2, vocab=512, max_seq=32, dtype="float16", small=True)
    path = tmp_path / "m.gguf"
    decode.write_llama_gguf(model, str(path), "float16")
    reader = gguf.GGUFReader(str(path))
    names = {t.name for t in reader.tensors}
    assert len(names) == 3 + 9 * 2 and {"token_embd.weight", "blk.1.ffn_down.weight"} <= names
    gate = next(t for t in reader.tensors if t.name == "blk.0.ffn_gate.weight")
    assert gate.tensor_type == gguf.GGMLQuantizationType.F16
    np.testing.assert_array_equal(np.asarray(gate.data).reshape(model.model.layers[0].mlp.gate_proj.weight.shape),
                                  model.model.layers[0].mlp.gate_proj.weight.detach().numpy())
