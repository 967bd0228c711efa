"""The demo's pieces at small size: the embedded model, stated as a transformers Llama, decodes through the generic
KV-cache path in exact mode, agrees with torch eager, and is as sparse as its training promised."""

import numpy as np
import torch

from actsparse.demo import run_demo
from actsparse.models import TinyConfig, TinyLlama, as_transformers


def test_tiny_model_as_transformers_computes_the_same_logits_sharing_its_weights():
    for mlp_act in ("drelu", "relu", "swiglu"):
        torch.manual_seed(0)
        model = TinyLlama(TinyConfig(d_model=32, n_layers=2, n_heads=2, n_ff=64, max_seq=16, mlp_act=mlp_act)).eval()
        hf = as_transformers(model)
        ids = torch.tensor([[1, 7, 42, 9, 200]])
        with torch.no_grad():
            np.testing.assert_allclose(hf(ids).logits.numpy(), model(ids).numpy(), rtol=1e-4, atol=1e-5)
        assert hf.model.layers[0].mlp.gate_proj.weight.data_ptr() == model.layers[0].mlp.gate_proj.weight.data_ptr()


def test_demo_on_the_embedded_model(capsys):
    result = run_demo(prompt="import os\nimport ", tokens=6)
    assert result["agreement"] == 1.0
    assert result["max_logit_diff"] < 1e-3
    assert result["mean_sparsity"] >= 0.8
    assert set(result["tokens_per_s"]) == {"actsparse exact", "actsparse dense", "torch eager"}
    out = capsys.readouterr().out
    assert "layers.3.mlp" in out and "drelu" in out and "tokens/s" in out
