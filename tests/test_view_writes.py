"""Writes through views of a tensor the program made (frontends/view_writes.py) are rewritten in the FX graph, so the
program is not re-traced through torch's functionalization: DeepSeek-V3's key assembled by slice copies into
`new_empty`, a select written in a loop, an add through a permute, at a symbolic length; a write whose view is read
by another view afterwards, and a view written twice, are left to torch. Each matches torch eager at two lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from actsparse.frontends import import_torch
from actsparse.ir import evaluate


class ViewWrites(nn.Module):
    def __init__(self, shared_view: bool = False, twice: bool = False):
        super().__init__()
        self.emb = nn.Embedding(16, 6)
        self.shared_view, self.twice = shared_view, twice

    def forward(self, ids):
        h = self.emb(ids)  # [1, seq, 6]
        key = h.new_empty(*h.shape[:-1], 10)  # DeepSeek-V3's key: two slice copies into an empty tensor
        key[..., :6].copy_(h)
        key[..., 6:].copy_(h[..., :4] * 2)
        grid = torch.zeros(3, 4)
        for i in range(3):  # a select (then a slice) written in a loop
            grid[i, : i + 1].fill_(float(i + 1))
        scores = h @ h.transpose(1, 2)  # [1, seq, seq]
        scores.permute(0, 2, 1).add_(1.0)  # an add through a permute
        out = key.sum(-1) + scores.sum(-1) + grid.sum()
        if self.shared_view:
            early = key[..., :2]  # a view taken before the write and read after it: torch's functionalization
            key[..., :1].fill_(0.5)
            out = out + early.sum(-1)
        if self.twice:  # the same view written twice: its second write must reach the base too
            row = key[:, 0]
            row.add_(1.0)
            row.mul_(3.0)
            out = out + key.sum(-1)
        return out


@pytest.mark.parametrize("shared_view, twice", [(False, False), (True, False), (False, True)])
def test_local_view_writes_import_without_torchs_functionalization(monkeypatch, shared_view, twice):
    from torch.export import ExportedProgram

    from actsparse.frontends import view_writes

    decomposed, rewritten = [], []
    real_decompose, real_rewrite = ExportedProgram.run_decompositions, view_writes.functionalize_view_writes
    monkeypatch.setattr(ExportedProgram, "run_decompositions",
                        lambda self, *a, **k: decomposed.append(1) or real_decompose(self, *a, **k))
    monkeypatch.setattr(view_writes, "functionalize_view_writes",
                        lambda gm: rewritten.append(real_rewrite(gm)) or rewritten[-1])
    torch.manual_seed(0)
    model = ViewWrites(shared_view, twice).eval()
    x = torch.tensor([[3, 1, 4, 1, 5]])
    graph = import_torch(model, (x,))
    assert graph.inputs[0].shape == (1, "seq")
    assert sum(rewritten) >= 6  # two copies, three fills, one add (the rewrite fired)
    assert len(decomposed) == int(shared_view or twice)  # the shared view's writes are left to torch
    for ids in (x, torch.tensor([[2, 7, 1, 8, 2, 8, 1]])):
        with torch.no_grad():
            np.testing.assert_allclose(evaluate(graph, [ids.numpy()])[0], model(ids).numpy(), rtol=1e-5, atol=1e-5)
