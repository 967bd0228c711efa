"""The long-tail aten ops (frontends/torch_ops_tail.py, ir/ops_indexing.py): interpreter and TVM vs torch."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import actsparse
from actsparse.frontends import import_torch
from actsparse.ir import evaluate


class LongTail(nn.Module):
    """One use of each long-tail op on a [1, seq, 8] activation."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        h = self.proj(x)
        acts = torch.square(F.relu(h)) + F.softplus(h) + F.relu6(h * 4) + F.threshold(h, 0.1, 0.0) + F.mish(h)
        acts = acts + torch.log1p(h.abs())
        ranks = torch.cumsum(h, dim=-1)
        best, where = h.max(dim=-1, keepdim=True)
        picked = torch.gather(h, -1, where.expand(*h.shape[:-1], 2))
        marked = torch.zeros_like(h).scatter(-1, where, 1.0)
        rot = h.reshape(*h.shape[:-1], 4, 2)[..., 0].repeat_interleave(2, dim=-1)
        return acts + ranks + best + picked.sum(-1, keepdim=True) + marked + rot + h.argmax(-1, keepdim=True)


def test_long_tail_ops_match_torch_in_the_interpreter_and_tvm():
    torch.manual_seed(0)
    model = LongTail().eval()
    x = torch.randn(1, 5, 8)
    with torch.no_grad():
        want = model(x).numpy()
    graph = import_torch(model, (x,))
    assert {"gather", "scatter", "cumsum", "argmax"} <= {n.op for n in graph.nodes}
    np.testing.assert_allclose(evaluate(graph, [x.numpy()])[0], want, rtol=1e-4, atol=1e-5)
    cm = actsparse.compile(model, (x,), mode="dense")
    np.testing.assert_allclose(cm(x).numpy(), want, rtol=1e-4, atol=1e-5)
