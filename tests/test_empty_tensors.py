"""Tensors with a zero-size dim (DeepSeek-V4's compressor keeps the first 128·(seq // 128) positions: none at a
short prompt) through the interpreter and the TVM build, against torch eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import actsparse
from actsparse.frontends import import_torch
from actsparse.ir import evaluate


class EmptyChunks(nn.Module):
    """Whole 128-position chunks of a [1, seq, 8] activation: none when seq < 128, so every op below meets (or
    makes) an empty tensor — a reshape of it, a cat with it, a sum over it, a product contracting it — and the
    legacy 1-D empty tensor torch.cat ignores whatever the other parts' rank."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        h = self.proj(x)
        whole = (h.shape[1] // 128) * 128
        chunks = h[:, :whole].reshape(1, 4, -1, 8)  # [1, 4, 0, 8]
        pooled = chunks.sum(1)  # [1, 0, 8]
        memory = torch.cat([h, pooled, torch.zeros(1, 0, 8)], dim=1)  # [1, seq, 8]: the empty pieces add nothing
        memory = torch.cat([torch.tensor([]), memory], dim=-2)  # torch skips a 1-D empty part (XLM's empty cache)
        scores = memory @ pooled.transpose(1, 2)  # [1, seq, 0]
        contracted = h[..., :0] @ torch.ones(0, 8)  # a product over an empty axis: zeros
        return memory + contracted + scores.sum(-1, keepdim=True) + chunks.sum((1, 2)).reshape(1, 1, 8)


def test_ops_at_a_zero_size_dim_match_torch_in_the_interpreter_and_tvm():
    torch.manual_seed(0)
    model = EmptyChunks().eval()
    x = torch.randn(1, 6, 8)
    with torch.no_grad():
        want = model(x).numpy()
    graph = import_torch(model, (x,), dynamic_seq=False)  # 128·(seq // 128) is no IR dim: static shapes
    assert any(0 in n.shape and n.op == "reshape" for n in graph.nodes), "the model no longer reshapes an empty tensor"
    np.testing.assert_allclose(evaluate(graph, [x.numpy()])[0], want, rtol=1e-5, atol=1e-6)
    cm = actsparse.compile(graph, (x.numpy(),), mode="dense")  # Relax read the 0 of [1, 4, 0, 8] as "copy dim 2"
    np.testing.assert_allclose(np.asarray(cm(x.numpy())), want, rtol=1e-5, atol=1e-6)


def test_a_concat_of_empty_operands_only_becomes_zeros_of_its_shape():
    """canonicalize's concat-all-empty: no operand holds a value, so no backend sees a concat of empty tensors
    (the one-operand-left case is the golden `concat_empty` in test_passes_golden.py)."""
    from actsparse.ir import parse_graph
    from actsparse.passes import run_pipeline
    from actsparse.passes.canonicalize import Canonicalize

    graph = parse_graph("""graph @main(%x: f32[2,0,8]) {
  %0 = slice(%x) {'axis': 2, 'end': 4, 'start': 4, 'step': 1} : f32[2,0,0]
  %1 = concat(%0, %x) {'axis': 2} : f32[2,0,8]
  return %1
}""")
    result = run_pipeline(graph, [Canonicalize()])
    assert result.stats["canonicalize"] == {"concat-all-empty": 1}
    (out,) = result.graph.outputs
    assert (out.op, out.attrs["shape"], str(out.type)) == ("full", (2, 0, 8), "f32[2,0,8]")
    x = np.zeros((2, 0, 8), np.float32)
    got, want = evaluate(result.graph, [x])[0], evaluate(graph, [x])[0]
    assert got.shape == want.shape == (2, 0, 8) and got.dtype == want.dtype


def test_codegen_refuses_an_empty_concat_operand_with_the_pass_that_drops_it():
    """A pass list without canonicalize (direct `build` callers) would fold the empty operand into an empty Relax
    constant that fails only at save; the lowering names the pass instead."""
    from actsparse import targets
    from actsparse.codegen.build import build
    from actsparse.ir import parse_graph

    graph = parse_graph("""graph @main(%x: f32[2,3,8]) {
  %0 = slice(%x) {'axis': 2, 'end': 4, 'start': 4, 'step': 1} : f32[2,3,0]
  %1 = concat(%0, %x) {'axis': 2} : f32[2,3,8]
  return %1
}""")
    with pytest.raises(ValueError, match="empty operand at codegen.*canonicalize"):
        build(graph, targets.get("x86"))
