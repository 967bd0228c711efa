"""Non-gated ReLU-family MLPs (OPT/Falcon relu, relu² of Primer/Nemotron/Persimmon) in exact mode: only the
active neurons' down rows are read (sparsify_exact.py), outputs equal torch's."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import actsparse
from actsparse.ir import evaluate
from actsparse.passes import pipeline_for, run_pipeline


class PlainBlocks(nn.Module):
    """An OPT-style relu MLP with biases, then a relu² MLP without (Nemotron / Persimmon / Primer)."""

    def __init__(self, d=16, n=64):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, n), nn.Linear(n, d)
        self.up, self.down = nn.Linear(d, n, bias=False), nn.Linear(n, d, bias=False)
        with torch.no_grad():
            self.fc1.bias -= 0.5  # most neurons off, as in trained ReLU models

    def forward(self, x):
        x = x + self.fc2(F.relu(self.fc1(x)))
        return x + self.down(torch.square(F.relu(self.up(x))))


def test_plain_relu_mlps_become_exact_sparse_and_match_torch():
    torch.manual_seed(0)
    model = PlainBlocks().eval()
    x = torch.randn(1, 6, 16)
    with torch.no_grad():
        want = model(x).numpy()
    cm = actsparse.compile(model, (x,), mode="exact")
    assert cm.report.pass_stats["sparsify-exact"] == {"relu-mlp": 1, "relu2-mlp": 1}
    # no linear left but a certified gate's own int8 score pass (float_x), where the target's exact_gate is certified
    assert cm.graph.count("sparse_gated_mlp") == 2
    assert not [n for n in cm.graph.nodes if n.op == "linear" and not n.attrs.get("float_x")]
    np.testing.assert_allclose(evaluate(cm.graph, [x.numpy()])[0], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cm(x).numpy(), want, rtol=1e-4, atol=1e-5)
    rows = {b.pattern: b for b in cm.report.blocks}
    assert set(rows) == {"relu-mlp", "relu2-mlp"} and rows["relu-mlp"].sparsity > 0.3


def test_dense_mode_keeps_plain_mlps_dense():
    from actsparse.frontends import import_torch

    graph = import_torch(PlainBlocks().eval(), (torch.randn(1, 6, 16),), dynamic_seq=False)
    result = run_pipeline(graph, pipeline_for("dense"))
    assert result.stats["detect-gated-mlp"] == {"plain-mlp": 2} and result.graph.count("linear") == 4
