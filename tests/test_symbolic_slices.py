"""Slices whose start is a symbolic expression of the length: a negative one counts from the end (MiniMax's
`key_decay[:, -min(seq, 256):]`), a start before a static table's first row bounds the length (MPT's ALiBi bias
`bias[:, max(0, 64 - seq):]`, added to `seq` score columns, holds for seq <= 64), and a start whose sign the
dims' bounds cannot decide is one precise error, never a silent wrong size."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from actsparse.frontends.errors import SymbolicShapeError
from actsparse.frontends.torch_ops_shape import slice_of
from actsparse.ir import dims

torch.set_num_threads(1)


class LastRows(nn.Module):
    """The last min(seq, 8) rows of a static table (MiniMax's key decay for a block of up to 256 tokens)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 4)
        self.register_buffer("table", torch.randn(8, 4))

    def forward(self, ids):
        rows = self.table[-torch.sym_min(ids.shape[1], 8):]  # [min(seq, 8), 4]
        return rows * 2 + 1


class ClippedBias(nn.Module):
    """A bias table of 8 columns cut to its last max(0, 8 - seq) onwards and added to `seq` columns (MPT's ALiBi):
    torch assumes min(seq, 8) = seq without narrowing the length's range."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 4)
        self.register_buffer("bias", torch.randn(1, 8))

    def forward(self, ids):
        x = self.emb(ids)  # [1, seq, 4]
        scores = x @ x.transpose(1, 2)  # [1, seq, seq]
        bias = self.bias[:, max(0, self.bias.shape[1] - ids.shape[1]):]
        return torch.softmax(scores + bias, dim=-1)


def _torch(model, n):
    ids = (torch.arange(n).reshape(1, n) * 5) % 16
    with torch.no_grad():
        return ids.numpy(), model(ids).numpy()


def test_a_negative_symbolic_start_counts_from_the_end_at_every_length():
    import actsparse
    from actsparse.frontends.torch_export import import_torch
    from actsparse.ir import evaluate

    torch.manual_seed(0)
    model = LastRows().eval()
    graph = import_torch(model, (torch.arange(5).reshape(1, 5),))
    assert graph.inputs[0].shape == (1, "seq") and graph.outputs[0].shape == ("min(seq,8)", 4)
    assert any(n.op == "slice" and n.attrs["start"] == dims.canonical("8 - min(seq, 8)") for n in graph.nodes)
    compiled = actsparse.compile(graph, (np.zeros((1, 5), np.int64),), mode="dense")
    for n in (3, 8, 12):  # both sides of the bound
        ids, want = _torch(model, n)
        np.testing.assert_allclose(evaluate(graph, [ids])[0], want, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(compiled(ids)), want, rtol=1e-4)


def test_sizes_torch_assumes_equal_bound_the_length_the_compiled_module_takes():
    import actsparse
    from actsparse.errors import ActsparseError
    from actsparse.frontends.torch_export import import_torch
    from actsparse.ir import evaluate

    torch.manual_seed(0)
    model = ClippedBias().eval()
    graph = import_torch(model, (torch.arange(5).reshape(1, 5),))
    assert graph.inputs[0].shape == (1, "seq")  # no fallback to the example's static length
    assert any(n.op == "slice" and n.attrs["start"] == "-seq+8" for n in graph.nodes)
    compiled = actsparse.compile(graph, (np.zeros((1, 5), np.int64),), mode="dense")
    for n in (3, 8):
        ids, want = _torch(model, n)
        np.testing.assert_allclose(evaluate(graph, [ids])[0], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(compiled(ids)), want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ActsparseError, match="seq = 9 exceeds"):
        compiled(np.zeros((1, 9), np.int64))


def _importer(bounds):
    return SimpleNamespace(bounds=bounds, symbols={}, facts={}, symbolic_error=SymbolicShapeError,
                           dim=lambda d: dims.canonical(d) if isinstance(d, str) else d,
                           emit=lambda op, inputs, **attrs: (op, attrs))


@pytest.mark.parametrize("start, size, bounds, want", [
    ("-min(seq,8)", 8, {}, dims.canonical("8 - min(seq, 8)")),  # negative at every length: from the end
    ("-seq", "seq+3", {}, 3),  # x[-seq:] of seq + 3 rows
    ("-seq+32", 32, {"seq": (2, 32)}, "-seq+32"),  # never negative within the bounds: as is
])
def test_a_symbolic_start_whose_sign_the_bounds_decide(start, size, bounds, want):
    x = SimpleNamespace(shape=(size, 4))
    op, attrs = slice_of(_importer(bounds), x, 0, start, None)
    assert op == "slice" and attrs["start"] == want


@pytest.mark.parametrize("start, size, bounds, why", [
    ("-seq+32", 32, {}, "negative for some lengths and not for others"),  # seq > 32 counts from the end
    ("-min(seq,12)", 8, {}, "counts back past the start"),  # torch clamps 8 - 12 to 0
])
def test_a_symbolic_start_the_bounds_cannot_place_is_one_precise_error(start, size, bounds, why):
    x = SimpleNamespace(shape=(size, 4))
    with pytest.raises(SymbolicShapeError, match=why) as err:
        slice_of(_importer(bounds), x, 0, start, None)
    assert f"`{dims.canonical(start)}`" in str(err.value) and "dynamic_seq=False" in str(err.value)


def test_intervals_of_dims_never_narrower_than_their_values():
    assert dims.interval("-min(seq,256)", {}) == (-256, -1)
    assert dims.interval("-seq+32", {"seq": (2, 32)}) == (0, 30)
    assert dims.interval("(seq+63)//64", {"seq": (1, 100)}) == (1, 2)
    assert dims.interval("kv-seq", {})[0] < 0 < dims.interval("kv-seq", {})[1]
    for n in range(1, 300):
        for dim in ("-min(seq,256)+256", "max(seq,7)-3", "-((seq+63)//64)"):
            least, most = dims.interval(dim, {"seq": (1, 299)})
            assert least <= dims.evaluate(dim, {"seq": n}) <= most


def test_sizes_assumed_equal_hold_up_to_where_they_part():
    from actsparse.frontends.torch_dims import equalities_hold_up_to

    assert equalities_hold_up_to([("seq", "min(seq,64)")], "seq", 2) == 64  # MPT's bias columns
    assert equalities_hold_up_to([("seq", "min(seq,64)"), ("seq", "min(seq,32)")], "seq", 2) == 32
    assert equalities_hold_up_to([("seq", "min(seq,64)")], "seq", 65) is None
