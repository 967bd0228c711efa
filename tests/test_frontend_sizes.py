"""Sizes as values in the torch frontend: a size used as a number (a fill value, a flat index's stride), the largest
position of an arange read with `.item()`, and a program torch's export holds only from some length on. Each
graph keeps the sequence length symbolic where it can and matches torch eager at two lengths (the second one
different from the example's, where a size baked in as the example's value would show)."""

import warnings

import numpy as np
import torch
from torch import nn

from actsparse.frontends.torch_export import import_torch
from actsparse.ir import evaluate

torch.set_num_threads(1)


def ids(n: int) -> torch.Tensor:
    return (torch.arange(n) * 5 % 13).reshape(1, n)


def assert_matches_torch(model, lengths=(6, 11), symbolic=True):
    graph = import_torch(model, (ids(lengths[0]),))
    assert isinstance(graph.inputs[0].shape[1], str) == symbolic, graph.inputs[0].shape
    for n in lengths:
        with torch.no_grad():
            want = model(ids(n)).numpy()
        np.testing.assert_allclose(evaluate(graph, [ids(n).numpy()])[0], want, rtol=1e-5, atol=1e-6)
    return graph


class FillWithLength(nn.Module):
    """Top-k picks past a causal limit replaced by a sentinel `seq // 2 + 2` (an index one past the last entry), then
    scattered into a mask and cut back (DeepSeek-V4's compressor)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 4)

    def forward(self, x):
        h = self.emb(x)  # [1, seq, 4]
        entries = x.shape[1] // 2 + 2
        scores = h[:, :, :1] * torch.arange(entries, dtype=h.dtype)  # [1, seq, entries]
        picks = scores.topk(1, dim=-1).indices
        sentinel = torch.full_like(picks, entries)  # the fill value is a size
        picks = torch.where(picks < entries - 1, picks, sentinel)
        mask = torch.zeros(1, x.shape[1], entries + 1).scatter(-1, picks, 1.0)[..., :entries]
        return mask.sum(-1) + h.sum(-1)


def test_a_size_as_fill_value_follows_the_length():
    assert_matches_torch(FillWithLength())


class GatherTwoDims(nn.Module):
    """x[i, j] over two dims, one of them the sequence: the flat index `i * seq + j` has a symbolic stride."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 3)

    def forward(self, x):
        h = self.emb(x)[0].transpose(0, 1)  # [3, seq]
        rows = torch.tensor([2, 0, 1, 2])
        cols = torch.tensor([0, -1, 1, -2])  # negative: counted from the end of the symbolic dim
        return h[rows, cols] + h[-1, -1]


def test_advanced_indexing_of_two_dims_keeps_the_length_symbolic():
    graph = assert_matches_torch(GatherTwoDims())
    assert "index_select" in {n.op for n in graph.nodes}


class ColumnsOfPositions(nn.Module):
    """A table cut to `position_ids.max().item() + 1` rows (Reformer's axial position embeddings): the largest
    position of an arange is `seq - 1`, a size, not a tensor value."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 4)
        self.register_buffer("table", torch.randn(32, 4))

    def forward(self, x):
        positions = torch.arange(x.shape[1]).unsqueeze(0).expand(x.shape[0], -1)
        rows = positions.max().item() + 1
        torch._check(rows <= 32)
        return self.emb(x) + self.table[:rows]


def test_the_largest_position_of_an_arange_is_a_size():
    assert_matches_torch(ColumnsOfPositions())


class BranchOnLength(nn.Module):
    """A branch on the length (`if n_windows > 1`, DeepSeek-V4): the export holds from 4 tokens on only."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 4)

    def forward(self, x):
        h = self.emb(x)
        if x.shape[1] // 2 > 1:
            return h + h[:, :1]
        return h


def test_a_program_that_holds_from_a_least_length_on_is_specialised():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert_matches_torch(BranchOnLength(), lengths=(6,), symbolic=False)
    assert any("seq >= 4 only" in str(w.message) for w in caught), [str(w.message) for w in caught]
