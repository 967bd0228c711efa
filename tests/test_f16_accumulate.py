"""Float16 graphs accumulate their sums in float32, as torch does (the op table's `accumulate`, ir/ops.py, read by its
references, codegen/lowerings.py `accumulated` and codegen/lower_attention.py): a float16 sum of 16384 values near 1
stalls at 2048 (each addend below half the spacing there), which made a compiled mean 0.33 where torch gives 1.0
(Gemma 3n's per-token cutoff takes mean and std over 16384 neurons). Compiled and interpreted graphs against torch
eager on the same float16 inputs."""

import numpy as np
import pytest
import torch

import actsparse
from actsparse.frontends import import_torch
from actsparse.ir import evaluate

REDUCTIONS = {
    "mean": lambda x: x.mean(-1, keepdim=True),
    "std": lambda x: x.std(-1, keepdim=True),
    "sum": lambda x: x.sum(-1, keepdim=True) / 64,
    "softmax": lambda x: torch.softmax(x, -1) * 1000,
}


class Reduce(torch.nn.Module):
    def __init__(self, name):
        super().__init__()
        self.fn = REDUCTIONS[name]

    def forward(self, x):
        return self.fn(x)


def _relative(out, ref) -> float:
    out, ref = np.asarray(out, np.float32), ref.float().numpy()
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_float16_reductions_match_torch(name):
    torch.manual_seed(0)
    x = (torch.randn(1, 3, 16384) * 0.5 + 1).half()
    model = Reduce(name)
    ref = model(x)
    graph = import_torch(model, (x,))
    assert graph.outputs[0].dtype == "f16"
    assert _relative(evaluate(graph, [x.numpy()])[0], ref) < 2e-3  # float16 rounding of the result, not stalling
    assert _relative(actsparse.compile(model, (x,))(x), ref) < 2e-3


def test_float16_attention_over_a_long_context_matches_torch():
    class Attend(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v) * 16

    torch.manual_seed(0)
    q = torch.randn(1, 2, 1, 32).half()
    k, v = (torch.randn(1, 2, 3000, 32).half() for _ in range(2))
    v += 2  # a mean far from 0: the weighted sum's partial sums grow, as a stalling float16 sum would show
    ref = Attend()(q, k, v)
    assert _relative(actsparse.compile(Attend(), (q, k, v))(q, k, v), ref) < 2e-3


def test_the_op_table_says_which_ops_accumulate_in_float32():
    from actsparse.ir.ops import OPS, accumulation_dtype

    accumulating = {name for name, op in OPS.items() if op.accumulate}
    assert {"sum", "mean", "softmax", "matmul", "attention"} <= accumulating and "max" not in accumulating
    assert [accumulation_dtype("mean", t) for t in ("f16", "f32", "f64")] == ["f32", "f32", "f64"]
    assert accumulation_dtype("max", "f16") == "f16"  # exact in its own dtype: no widening
