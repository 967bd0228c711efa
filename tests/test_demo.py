"""The demo's pieces at small size: the embedded model compiles in exact mode as a KV-cached decoding step, agrees
with torch eager, and is as sparse as its training promised."""

import numpy as np
import torch

from actsparse.demo import run_demo
from actsparse.models import TinyConfig, TinyLlama
from actsparse.models.decode import TinyLlamaStep, decode


def test_decode_feeds_the_prompt_then_appends_argmax_tokens():
    vocab = 7
    seen = []

    def step(ids, pos, k, v):  # next token = (this + 1) mod vocab; the new key is the position + 1
        assert not k[0, 0, 0, int(pos[0]):].any()  # slots from pos on are not written yet
        seen.append((int(ids[0, 0]), int(pos[0])))
        logits = np.zeros((1, 1, vocab), np.float32)
        logits[0, 0, (ids[0, 0] + 1) % vocab] = 1
        return logits, np.full((1, 1, 1, 1, 1), pos[0] + 1.0), np.zeros((1, 1, 1, 1, 1))

    cache = (np.zeros((1, 1, 1, 8, 1)), np.zeros((1, 1, 1, 8, 1)))
    new, logits, seconds = decode(step, np.array([[5, 3]]), 4, cache)
    assert new == [4, 5, 6, 0] and seconds >= 0 and logits.shape == (5, vocab)
    assert seen == [(5, 0), (3, 1), (4, 2), (5, 3), (6, 4)]  # every position once, in order
    assert cache[0][0, 0, 0, :, 0].tolist() == [1, 2, 3, 4, 5, 0, 0, 0]  # slot p written after step p


def test_kv_cached_step_equals_the_full_forward():
    torch.manual_seed(0)
    model = TinyLlama(TinyConfig(d_model=32, n_layers=2, n_heads=2, n_ff=64, max_seq=16)).eval()
    step = TinyLlamaStep(model)

    def torch_step(*arrays):
        with torch.no_grad():
            return [t.numpy() for t in step(*(torch.from_numpy(a) for a in arrays))]

    prompt = np.array([[1, 7, 42, 9]])
    new, logits, _ = decode(torch_step, prompt, 5, step.empty_cache())
    with torch.no_grad():
        full = model(torch.tensor([[*prompt[0], *new[:-1]]]))[0].numpy()
    np.testing.assert_allclose(logits, full, rtol=1e-4, atol=1e-5)


def test_demo_on_the_embedded_model(capsys):
    result = run_demo(prompt="import os\nimport ", tokens=6)
    assert result["agreement"] == 1.0
    assert result["max_logit_diff"] < 1e-3
    assert result["mean_sparsity"] >= 0.8
    assert set(result["tokens_per_s"]) == {"actsparse exact", "actsparse dense", "torch eager"}
    out = capsys.readouterr().out
    assert "layers.3.mlp" in out and "drelu" in out and "tokens/s" in out
