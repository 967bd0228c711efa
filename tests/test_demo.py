"""The demo's pieces at small size: the embedded model compiles in exact mode, agrees with torch eager, and is
as sparse as its training promised."""

import numpy as np

from actsparse.demo import greedy, run_demo


def test_greedy_appends_argmax_tokens():
    vocab = 7

    def step(seq):  # next token = (last + 1) mod vocab
        logits = np.zeros((1, seq.shape[1], vocab), np.float32)
        logits[0, -1, (seq[0, -1] + 1) % vocab] = 1
        return logits

    tokens, seconds = greedy(step, np.array([[5]]), 4)
    assert tokens == [6, 0, 1, 2] and seconds >= 0


def test_demo_on_the_embedded_model(capsys):
    result = run_demo(prompt="import os\nimport ", tokens=6)
    assert result["agreement"] == 1.0
    assert result["max_logit_diff"] < 1e-3
    assert result["mean_sparsity"] >= 0.8
    assert set(result["tokens_per_s"]) == {"actsparse exact", "actsparse dense", "torch eager"}
    out = capsys.readouterr().out
    assert "layers.3.mlp" in out and "drelu" in out and "tokens/s" in out
