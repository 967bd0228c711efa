"""Boolean-mask dispatch `y[mask] = f(x[mask])` (frontends/torch_masked_rows.py): imported as where(mask, f(x), y)
when f is row-wise (X-MOD's per-language adapters), one clear error otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import actsparse
from actsparse.frontends import import_torch
from actsparse.frontends.errors import FrontendError
from actsparse.ir import evaluate

torch.set_num_threads(1)
D = 8


class MaskedAdapters(nn.Module):
    """Two adapters, each run on the rows its mask picks: per sentence (a language id per batch row, as X-MOD) and
    per token (a mask over [batch, seq]: a symbolic number of rows)."""

    def __init__(self, reduce_rows: bool = False, return_rows: bool = False):
        super().__init__()
        self.embed = nn.Embedding(32, D)
        self.adapters = nn.ModuleList(nn.Sequential(nn.Linear(D, 4), nn.GELU(), nn.Linear(4, D)) for _ in range(2))
        self.norm = nn.LayerNorm(D)
        self.register_buffer("lang", torch.ones(1, dtype=torch.long))
        self.reduce_rows, self.return_rows = reduce_rows, return_rows

    def forward(self, ids):
        h = self.embed(ids)
        out = torch.zeros_like(h)
        for k, adapter in enumerate(self.adapters):  # per sentence
            mask = self.lang == k
            out[mask] = adapter(self.norm(h[mask]))
        tokens = ids > 5  # per token
        if self.return_rows:
            return h[tokens]
        picked = self.adapters[0](h[tokens]) * 2.0
        if self.reduce_rows:
            picked = picked - picked.sum(0, keepdim=True)  # mixes the selected rows: not row-wise
        out[tokens] = picked
        return out + h


def test_row_wise_masked_dispatch_matches_torch_in_the_interpreter_and_tvm():
    torch.manual_seed(0)
    model = MaskedAdapters().eval()
    ids = torch.tensor([[3, 4, 6, 7, 9, 10]])
    with torch.no_grad():
        want = model(ids).numpy()
    graph = import_torch(model, (ids,))
    assert graph.inputs[0].shape == (1, "seq")  # the per-token selection kept the sequence length symbolic
    assert graph.count("where") == 3  # the three write-backs, each where(mask, f(x), y)
    np.testing.assert_allclose(evaluate(graph, [ids.numpy()])[0], want, rtol=1e-4, atol=1e-5)
    other = torch.tensor([[1, 3, 5, 6, 8, 9, 12, 2]])  # another length, another number of selected rows
    with torch.no_grad():
        np.testing.assert_allclose(evaluate(graph, [other.numpy()])[0], model(other).numpy(), rtol=1e-4, atol=1e-5)
    cm = actsparse.compile(model, (ids,), mode="dense")
    np.testing.assert_allclose(cm(ids).numpy(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind, names", [("reduce_rows", "aten.sum"), ("return_rows", "the model output")])
def test_a_selection_used_other_than_row_wise_is_one_clear_error(kind, names):
    model = MaskedAdapters(**{kind: True}).eval()
    with pytest.raises(FrontendError, match=f"row-wise, and {names} is not"):
        import_torch(model, (torch.tensor([[3, 4, 6, 7, 9, 10]]),), dynamic_seq=False)
