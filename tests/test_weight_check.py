"""hf_source's non-finite weight check at load: one cheap read per distinct tensor, the elementwise look only where
the sum says something is off (benchmarks/check_weights_ab.py: the mask per weight was most of a load's time)."""

from __future__ import annotations

import pytest
import torch

from actsparse.frontends.hf_source import SourceError, _check_weights


def _module(**weights):
    module = torch.nn.Module()
    for name, values in weights.items():
        module.register_parameter(name, torch.nn.Parameter(torch.tensor(values), requires_grad=False))
    return module


def test_finite_weights_are_cleared_without_a_mask_as_large_as_each(monkeypatch):
    masks = []
    original = torch.Tensor.isfinite
    monkeypatch.setattr(torch.Tensor, "isfinite", lambda t: masks.append(t.numel()) or original(t))
    _check_weights(_module(a=[[1.0, -2.0], [3.0, 4.0]], b=[0.5] * 64), {}, "model")
    assert all(n == 1 for n in masks), f"an elementwise mask of {max(masks)} values was built"


def test_an_overflowing_sum_of_finite_weights_is_no_error():
    _check_weights(_module(big=[3e38, 3e38, -1.0]), {}, "model")  # its float32 sum is inf: each element is looked at


@pytest.mark.parametrize("values, bad", [([1.0, float("nan"), 2.0], 1), ([float("inf"), float("-inf"), 1.0], 2)])
def test_a_nan_or_infinity_is_one_clear_error_naming_the_weight(values, bad):
    with pytest.raises(SourceError, match=rf"weight w holds {bad} NaN or infinite value\(s\).*intact copy"):
        _check_weights(_module(ok=[1.0, 2.0], w=values), {}, "model")


def _tied(values):
    module = _module(embed=values)
    module.head = module.embed  # lm_head tied to the embeddings: one tensor, two state_dict entries
    return module


def test_a_tied_weight_is_checked_once_under_its_first_name(monkeypatch):
    sums = []
    original = torch.Tensor.sum
    monkeypatch.setattr(torch.Tensor, "sum", lambda t, *a, **k: sums.append(t.numel()) or original(t, *a, **k))
    _check_weights(_tied([1.0, 2.0]), {}, "model")
    assert sums == [2]
    with pytest.raises(SourceError, match="weight embed holds 1"):
        _check_weights(_tied([1.0, float("nan")]), {}, "model")
