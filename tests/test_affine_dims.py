"""Affine symbolic dims (ir/dims.py): sizes such as `seq+1` (attention scores with a sink column, gpt-oss) and
slices starting at `64-seq` or `kv-seq` (a causal mask's rows, GPT-Neo) import with the sequence length kept
symbolic, verify, run in the interpreter and compile with TVM for any length."""

import numpy as np
import pytest
import torch
from torch import nn

from actsparse.ir import dims
from actsparse.ir.types import TensorType

torch.set_num_threads(1)


def test_dims_are_canonical_affine_sums():
    assert dims.add("kv", 1) == "kv+1" and dims.sub("kv+1", 1) == "kv" and dims.sub("kv", "kv-seq") == "seq"
    assert dims.add("-seq", "kv") == "kv-seq" and dims.sub("seq+2", "seq") == 2 and dims.add(3, 4) == 7
    assert dims.terms("2*kv-seq+1") == ({"kv": 2, "seq": -1}, 1)
    assert dims.evaluate("2*kv-seq+1", {"kv": 5, "seq": 3}) == 8
    assert TensorType.parse("f32[1,kv+1,kv-seq]").shape == (1, "kv+1", "kv-seq")
    with pytest.raises(ValueError, match="affine"):
        TensorType.parse("f32[1,kv*seq]")


class Sinks(nn.Module):
    """Softmax over the scores and one learned sink column, the sink then dropped (gpt-oss), plus a window of a
    static table that starts at a symbolic position (GPT-Neo's causal-mask rows), plus the length as a value."""

    def __init__(self):
        super().__init__()
        self.sink = nn.Parameter(torch.tensor(0.5))
        self.emb = nn.Embedding(16, 8)
        self.register_buffer("table", torch.randn(32, 8))

    def forward(self, ids):
        x = self.emb(ids)  # [1, seq, 8]
        scores = x @ x.transpose(1, 2)  # [1, seq, seq]
        sink = self.sink.expand(1, scores.shape[1], 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]  # [1, seq, seq+1] -> [.., seq]
        rows = self.table[32 - ids.shape[1]:]  # [seq, 8], starting at 32 - seq
        return probs @ x + rows + ids.shape[1]  # the length as a number (positions from it: TrOCR, MVP)


def test_a_sink_column_and_a_symbolic_slice_start_import_compile_and_match_torch():
    import actsparse
    from actsparse.frontends.torch_export import import_torch
    from actsparse.ir import evaluate

    model = Sinks().eval()
    ids = torch.arange(5).reshape(1, 5) % 16
    graph = import_torch(model, (ids,))
    shapes = {d for n in graph.nodes for d in n.shape}
    assert graph.inputs[0].shape == (1, "seq") and "seq+1" in shapes
    assert any(n.op == "slice" and n.attrs["start"] == "-seq+32" for n in graph.nodes)
    compiled = actsparse.compile(graph, (ids.numpy(),), mode="dense")
    for n in (3, 7):
        ids = (torch.arange(n).reshape(1, n) * 3) % 16
        with torch.no_grad():
            want = model(ids).numpy()
        np.testing.assert_allclose(evaluate(graph, [ids.numpy()])[0], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(compiled(ids.numpy())), want, rtol=1e-4, atol=1e-5)


class Streams(nn.Module):
    """A main stream and two predicting streams along the sequence ([1, 3*seq, 8], as ProphetNet's n-gram
    attention concatenates them), chunked back into three parts of `seq` rows each."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)

    def forward(self, ids):
        x = self.emb(ids)
        main, first, second = torch.cat([x, 2 * x, x + 1], dim=1).chunk(3, dim=1)
        return main * first + second


def test_chunks_of_a_symbolic_dim_slice_at_affine_bounds_and_match_torch():
    from actsparse.frontends.torch_export import import_torch
    from actsparse.ir import evaluate

    model = Streams().eval()
    graph = import_torch(model, (torch.arange(5).reshape(1, 5) % 16,))
    assert graph.inputs[0].shape == (1, "seq")
    assert {(n.attrs["start"], n.attrs["end"]) for n in graph.nodes if n.op == "slice"} >= {("seq", "2*seq"),
                                                                                           ("2*seq", "3*seq")}
    for n in (3, 7):
        ids = (torch.arange(n).reshape(1, n) * 3) % 16
        with torch.no_grad():
            want = model(ids).numpy()
        np.testing.assert_allclose(evaluate(graph, [ids.numpy()])[0], want, rtol=1e-5, atol=1e-6)
