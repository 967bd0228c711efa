"""The activation table (ir/activations.py) is the one definition of every activation: its kernel forms (TIR for
the CPU kernels, the CUDA kernels' form) compute its numpy reference, the reference matches torch, and the IR
ops, the dense lowering and the kernels all take their activation from it.

Values include negatives, zero, values around the fatrelu threshold and large magnitudes (exp/tanh saturation).
"""

from __future__ import annotations

import numpy as np
import pytest

from actsparse.ir.activations import ACTIVATIONS, activation

VALUES = np.array([-1e4, -88.0, -30.0, -8.0, -3.0, -1.0, -0.5, -1e-3, -0.0, 0.0, 1e-3, 0.2499, 0.25, 0.2501, 0.5,
                   1.0, 3.0, 8.0, 30.0, 88.0, 1e4], np.float32)
THRESHOLD = 0.25  # fatrelu's (the others ignore it)


def _kernel_forms():
    """{(name, form): outputs on VALUES} for form in (tir, cuda): one llvm module holding every expression."""
    import tvm
    from tvm.script import tirx as T

    n = len(VALUES)
    funcs = {}
    for name, entry in ACTIVATIONS.items():
        for form, fn in (("tir", entry.tir_expr(THRESHOLD)), ("cuda", entry.cuda_expr(THRESHOLD))):

            @T.prim_func
            def elementwise(a: T.Buffer((n,), "float32"), b: T.Buffer((n,), "float32")):
                for i in range(n):
                    b[i] = fn(a[i])

            funcs[f"act_{name}_{form}"] = elementwise.with_attr("global_symbol", f"act_{name}_{form}")
    lib = tvm.compile(tvm.IRModule(funcs), target="llvm")
    out = {}
    for symbol in funcs:
        a = tvm.runtime.tensor(VALUES)
        b = tvm.runtime.tensor(np.zeros_like(VALUES))
        lib[symbol](a, b)
        name, form = symbol.removeprefix("act_").rsplit("_", 1)
        out[(name, form)] = b.numpy()
    return out


@pytest.fixture(scope="module")
def kernel_forms():
    return _kernel_forms()


def _close(got, want):
    want = np.asarray(want, np.float64)
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("form", ["tir", "cuda"])
def test_kernel_form_equals_reference(kernel_forms, name, form):
    reference = ACTIVATIONS[name].reference(VALUES, THRESHOLD)
    assert reference.dtype == np.float32
    _close(kernel_forms[(name, form)], reference)


def test_references_match_torch():
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(VALUES)
    torch_forms = {"relu": F.relu(x), "silu": F.silu(x), "gelu": F.gelu(x), "gelu_tanh": F.gelu(x, approximate="tanh"),
                   "identity": x, "fatrelu": torch.where(x > THRESHOLD, x, 0.0), "relu2": torch.square(F.relu(x)),
                   "relu6": F.relu6(x), "clip7_plus1": x.clamp(-7.0, 7.0) + 1,
                   "clamped_swish7": x.clamp(max=7.0) * torch.sigmoid(1.702 * x.clamp(max=7.0)),  # gpt-oss's
                   "clamped_silu10": F.silu(x.clamp(max=10.0)), "clip10": x.clamp(-10.0, 10.0),  # DeepSeek-V4's
                   "gelu_tanh_relu": F.gelu(F.relu(x), approximate="tanh"),  # Gemma 3n's, after its cutoff
                   "unit": torch.ones_like(x)}  # a non-gated MLP's up factor
    assert set(torch_forms) == set(ACTIVATIONS)
    for name, want in torch_forms.items():
        _close(activation(name).reference(VALUES, THRESHOLD), want.numpy())


def test_gelu_is_the_erf_form_and_gelu_tanh_differs():
    x = np.array([-2.0, -0.7, 0.7, 2.0], np.float32)
    gelu, gelu_tanh = (activation(n).reference(x) for n in ("gelu", "gelu_tanh"))
    assert not np.allclose(gelu, gelu_tanh, rtol=0, atol=1e-5)  # they differ by ~1e-4 here: not interchangeable
    from scipy.special import erf

    _close(gelu, 0.5 * x * (1 + erf(x / np.sqrt(2))))


def test_exactly_sparse_means_zero_at_or_below_the_threshold():
    for name, entry in ACTIVATIONS.items():  # relu's threshold is 0; fatrelu's its attribute (>= 0)
        assert entry.exactly_sparse == bool(np.all(entry.reference(VALUES[VALUES <= 0], THRESHOLD) == 0)), name
    assert np.all(activation("fatrelu").reference(VALUES[VALUES <= THRESHOLD], THRESHOLD) == 0)
    assert {n for n, e in ACTIVATIONS.items() if e.exactly_sparse} == {"relu", "fatrelu", "relu2", "relu6",
                                                                       "gelu_tanh_relu"}


def test_ir_ops_interpreter_and_dense_kernel_use_the_table():
    """The interpreter's gelu op and the CPU dense kernel's 'gelu' are both the erf form (they once differed)."""
    from actsparse.ir.ops import op_def

    x = VALUES[np.abs(VALUES) < 100]
    gelu_op = op_def("gelu").reference(x, {"approximate": "none"}, {})
    tanh_op = op_def("gelu").reference(x, {"approximate": "tanh"}, {})
    _close(gelu_op, activation("gelu").reference(x))
    _close(tanh_op, activation("gelu_tanh").reference(x))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        activation("swish")
