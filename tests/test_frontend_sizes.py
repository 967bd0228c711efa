"""Sizes as values in the torch frontend: a size used as a number (a fill value, a flat index's stride), the largest
position of an arange read with `.item()`, and a program torch's export holds only from some length on (its least
length carried by the graph's input and checked). Each
graph keeps the sequence length symbolic where it can and matches torch eager at two lengths (the second one
different from the example's, where a size baked in as the example's value would show)."""


import numpy as np
import pytest
import torch
from torch import nn

import actsparse
from actsparse.codegen.build import specializations
from actsparse.errors import InputError
from actsparse.frontends.torch_export import import_torch
from actsparse.ir import evaluate, parse_graph, print_graph
from actsparse.ir.decoding import STEP_FUNCTION
from actsparse.ir.limits import input_limits

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

    def forward(self, input_ids):  # the name a decoder's one-token step is built for (codegen/build.py)
        h = self.emb(input_ids)
        if input_ids.shape[1] // 2 > 1:
            return h + h[:, :1]
        return h


def test_a_program_that_holds_from_a_least_length_on_carries_it():
    """The least length is a property of the graph's input (`least`), kept through the text form, and checked by
    the interpreter and the compiled module with one clear error; no one-token step is built below it."""
    model = BranchOnLength()
    graph = assert_matches_torch(model, lengths=(6, 4, 11))
    assert dict(graph.inputs[0].attrs["least"]) == {"seq": 4}
    assert input_limits(parse_graph(print_graph(graph))).dim_least == {"seq": 4}
    with pytest.raises(ValueError, match=r"seq = 3 is below the least seq = 4 .*give at least 4"):
        evaluate(graph, [ids(3).numpy()])
    module = actsparse.compile(graph, (ids(6).numpy(),), mode="dense")
    assert STEP_FUNCTION not in specializations(graph)[0]  # a one-token step would take the other branch
    with torch.no_grad():
        np.testing.assert_allclose(module(ids(5).numpy()), model(ids(5)).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match=r"seq = 2 is below the least seq = 4"):
        module(ids(2).numpy())
