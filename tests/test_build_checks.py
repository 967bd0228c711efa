"""A compiled module's kernels are built without TIR's argument checks (codegen/build.py, `ASSERT_OPTION`): the
Relax VM checks the inputs at the module's boundary, so a wrong input is still one clear error, and a caller's
PassContext that sets the option keeps them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

tvm = pytest.importorskip("tvm")

import actsparse  # noqa: E402
from actsparse.frontends import import_torch  # noqa: E402

CHECK_MESSAGE = " when calling:"  # in TIR's argument checks' messages ("Expected 4 arguments when calling: ...")


def _graph():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(3, 8)
    return model, x, import_torch(model, (x,), dynamic_seq=False)


def _llvm_source(compiled) -> str:
    return "".join(m.inspect_source("ll") for m in compiled.executable.mod.imports if m.kind == "llvm")


def test_kernels_skip_argument_checks_and_the_boundary_still_checks_inputs():
    model, x, graph = _graph()
    compiled = actsparse.compile(graph, (x.numpy(),), mode="dense")
    with torch.no_grad():
        np.testing.assert_allclose(np.asarray(compiled(x.numpy())), model(x).numpy(), rtol=1e-5, atol=1e-6)
    assert CHECK_MESSAGE not in _llvm_source(compiled)
    with pytest.raises(actsparse.InputError):  # the runtime's check, before the module
        compiled(np.zeros((3, 7), np.float32))
    with pytest.raises((ValueError, RuntimeError), match="ErrorContext"):  # then the VM's own: an error, not a crash
        compiled._vm["main"](tvm.runtime.tensor(np.zeros((3, 7), np.float32)), *compiled._weight_tensors)
    with tvm.transform.PassContext(config={"tirx.disable_assert": False}):  # the caller's choice wins
        checked = actsparse.compile(graph, (x.numpy(),), mode="dense")
    assert CHECK_MESSAGE in _llvm_source(checked)
