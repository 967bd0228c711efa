"""Activations are classified by what they compute (passes/activation_analysis.py), in any spelling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from actsparse.frontends import import_torch
from actsparse.passes.activation_analysis import classify


class Act(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


SPELLINGS = {  # name -> (activation, expected (name, threshold) or None)
    "relu": (F.relu, None),  # already canonical: nothing to rewrite, but classify still names it
    "maximum-zero": (lambda x: torch.maximum(x, torch.zeros(())), ("relu", 0.0)),
    "clamp-min": (lambda x: x.clamp(min=0), ("relu", 0.0)),
    "where-gt-zero": (lambda x: torch.where(x > 0, x, 0.0), ("relu", 0.0)),
    "mask-multiply": (lambda x: x * (x > 0.5).to(x.dtype), ("fatrelu", 0.5)),
    "where-int-zero": (lambda x: torch.where(x > 0.1, x, 0), ("fatrelu", np.float32(0.1))),
    "threshold-module": (nn.Threshold(0.2, 0.0), ("fatrelu", np.float32(0.2))),
    "masked-fill": (lambda x: x.masked_fill(x <= 0.1, 0.0), ("fatrelu", np.float32(0.1))),
    "relu-squared": (lambda x: torch.square(F.relu(x)), ("relu2", 0.0)),
    "relu-times-relu": (lambda x: F.relu(x) * F.relu(x), ("relu2", 0.0)),
    "relu6": (F.relu6, ("relu6", 0.0)),
    "hardtanh-0-6": (lambda x: F.hardtanh(x, 0.0, 6.0), ("relu6", 0.0)),
    # not exactly zero below a threshold: left alone
    "leaky-relu": (lambda x: torch.where(x > 0, x, 0.01 * x), "none"),
    "relu-plus-offset": (lambda x: F.relu(x) + 1e-3, "none"),
    "relu-scaled": (lambda x: F.relu(x) * 2.0, "none"),
    "relu6-wrong-cap": (lambda x: x.clamp(0.0, 5.0), "none"),
    "silu": (F.silu, "none"),
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_activation_is_classified_by_what_it_computes(spelling):
    fn, expected = SPELLINGS[spelling]
    graph = import_torch(Act(fn).eval(), (torch.randn(1, 4, 8),), dynamic_seq=False)
    found = classify(graph.outputs[0])
    if expected == "none":
        assert found is None
    elif expected is None:
        assert graph.outputs[0].op == "relu"
    else:
        assert found is not None, f"{spelling} not recognised"
        name, threshold, x = found
        assert (name, np.float32(threshold)) == (expected[0], np.float32(expected[1]))
        assert x.op == "input"


class ThreeGated(nn.Module):
    """Three gated MLPs whose gates are FATReLU (written with where and an int 0), relu² and ReLU6."""

    def __init__(self, d=16, n=48):
        super().__init__()
        self.acts = [lambda g: torch.where(g > 0.25, g, 0), lambda g: torch.square(F.relu(g)), F.relu6]
        self.gate = nn.ModuleList(nn.Linear(d, n, bias=False) for _ in self.acts)
        self.up = nn.ModuleList(nn.Linear(d, n, bias=False) for _ in self.acts)
        self.down = nn.ModuleList(nn.Linear(n, d, bias=False) for _ in self.acts)

    def forward(self, x):
        for act, gate, up, down in zip(self.acts, self.gate, self.up, self.down):
            x = x + down(act(gate(x)) * up(x))
        return x


def test_exact_mode_applies_wherever_outputs_are_exactly_zero():
    import actsparse

    torch.manual_seed(0)
    model = ThreeGated().eval()
    x = torch.randn(1, 5, 16)
    cm = actsparse.compile(model, (x,), mode="exact")
    assert cm.report.pass_stats["sparsify-exact"] == {"fatrelu": 1, "relu2-glu": 1, "relu6-glu": 1}
    with torch.no_grad():
        np.testing.assert_allclose(cm(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)
