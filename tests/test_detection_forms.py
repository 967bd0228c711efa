"""Detection that generalizes, on hand-written rewrite forms: each way a model may spell a gated MLP (operand
order, written-out activations, fused gate_up splits, transposed or biased projections, MoE experts as modules or
batched weights, other spellings of exactly-zero-below activations) is found, the pass statistics prove which
rewrite fired, plain MLPs never are, and the rewritten graphs compute what torch computes; then the projection
rules' golden IR and the gates that are found by probing or named as unmatched. Real architectures:
tests/test_detection.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import actsparse
from actsparse.frontends import UnsupportedOpError, import_torch
from actsparse.ir import evaluate
from actsparse.passes import pipeline_for, run_pipeline

from .test_passes_golden import check_golden_pipeline

torch.set_num_threads(1)

D, N, SEQ = 32, 64, 6


def _torch_out(model, *inputs) -> np.ndarray:
    with torch.no_grad():
        return model(*inputs).numpy()


def _close(got, expected):
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-5)


# --- hand-written rewrite forms ---------------------------------------------------------------------------
class Gated(nn.Module):
    """Separate gate / up / down projections; `mix(gate, up)` is the form under test."""

    def __init__(self, mix, bias: bool = False):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(D, N, bias), nn.Linear(D, N, bias), nn.Linear(N, D, bias)
        self.mix = mix

    def forward(self, x):
        return self.down(self.mix(self.gate(x), self.up(x)))


class Fused(nn.Module):
    """One gate_up projection; `split(h) -> (gate, up)` is the form under test."""

    def __init__(self, split, act=F.relu):
        super().__init__()
        self.gate_up, self.down = nn.Linear(D, 2 * N, bias=False), nn.Linear(N, D, bias=False)
        self.split, self.act = split, act

    def forward(self, x):
        gate, up = self.split(self.gate_up(x))
        return self.down(self.act(gate) * up)


class Transposed(nn.Module):
    """Raw parameters: x @ Wg.t() with Wg [n, d], x @ Wu with Wu [d, n] (an [in, out] layout)."""

    def __init__(self):
        super().__init__()
        self.w_gate, self.w_up = nn.Parameter(torch.randn(N, D) / D**0.5), nn.Parameter(torch.randn(D, N) / D**0.5)
        self.down = nn.Linear(N, D, bias=False)

    def forward(self, x):
        return self.down(F.relu(x @ self.w_gate.t()) * (x @ self.w_up))


class PlainMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(D, N), nn.Linear(N, D)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class ModuleMoE(nn.Module):
    """Per-expert modules, a dense top-2 router, each expert weighted by its routing weight (0 if not chosen)."""

    def __init__(self, n_experts: int = 4):
        super().__init__()
        self.router = nn.Linear(D, n_experts, bias=False)
        self.experts = nn.ModuleList(Gated(lambda g, u: F.relu(g) * u) for _ in range(n_experts))

    def forward(self, x):
        weights, index = self.router(x).softmax(-1).topk(2, dim=-1)
        out = 0
        for e, expert in enumerate(self.experts):
            out = out + (weights * (index == e)).sum(-1, keepdim=True) * expert(x)
        return out


class BatchedExperts(nn.Module):
    """transformers-5 style batched expert weights, here transposed ([E, in, out]) and biased (as gpt-oss); its
    own forward gathers each (token, slot)'s expert weights (transformers' `batched_mm`)."""

    has_gate, has_bias, is_transposed = True, True, True

    def __init__(self, n_experts: int = 4):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(n_experts, D, 2 * N) / D**0.5)
        self.gate_up_proj_bias = nn.Parameter(torch.randn(n_experts, 2 * N) * 0.1)
        self.down_proj = nn.Parameter(torch.randn(n_experts, N, D) / N**0.5)
        self.down_proj_bias = nn.Parameter(torch.randn(n_experts, D) * 0.1)

    def _apply_gate(self, h):
        gate, up = h.chunk(2, dim=-1)
        return F.relu(gate) * up

    def forward(self, x, index, weights):
        flat = index.reshape(-1)
        tokens = x.repeat_interleave(index.shape[-1], dim=0)
        h = self._apply_gate(torch.bmm(tokens[:, None], self.gate_up_proj[flat])[:, 0] + self.gate_up_proj_bias[flat])
        y = torch.bmm(h[:, None], self.down_proj[flat])[:, 0] + self.down_proj_bias[flat]
        return (y * weights.reshape(-1, 1)).view(x.shape[0], -1, D).sum(1)


class BatchedMoE(nn.Module):
    def __init__(self):
        super().__init__()
        self.router, self.experts = nn.Linear(D, 4, bias=False), BatchedExperts()

    def forward(self, x):
        flat = x.reshape(-1, D)
        weights, index = self.router(flat).softmax(-1).topk(2, dim=-1)
        return self.experts(flat, index, weights).reshape(x.shape)


def _gelu_tanh(g):
    return 0.5 * g * (1 + torch.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * torch.pow(g, 3))))


FORMS = {  # name -> (module factory, canonicalize counts it needs, detect-gated-mlp counts)
    "act-on-second-operand": (lambda: Gated(lambda g, u: u * F.silu(g)), {}, {"swiglu": 1}),
    "silu-as-x-sigmoid-x": (lambda: Gated(lambda g, u: g * torch.sigmoid(g) * u), {"silu": 1}, {"swiglu": 1}),
    "gelu-erf-written-out": (lambda: Gated(lambda g, u: 0.5 * g * (1 + torch.erf(g / math.sqrt(2))) * u),
                             {"gelu": 1}, {"geglu": 1}),
    "gelu-tanh-written-out": (lambda: Gated(lambda g, u: _gelu_tanh(g) * u), {"gelu": 1}, {"geglu": 1}),
    "relu": (lambda: Gated(lambda g, u: F.relu(g) * u), {}, {"reglu": 1}),
    "drelu": (lambda: Gated(lambda g, u: F.relu(g) * F.relu(u)), {}, {"drelu": 1}),
    "fatrelu-where": (lambda: Gated(lambda g, u: torch.where(g > 0.1, g, 0.0) * u), {"zero-below": 1}, {"fatrelu": 1}),
    "fused-slice-gate-first": (lambda: Fused(lambda h: (h[..., :N], h[..., N:])), {}, {"reglu-fused": 1}),
    "fused-chunk-up-first": (lambda: Fused(lambda h: h.chunk(2, dim=-1)[::-1]), {}, {"reglu-fused": 1}),
    "fused-split-gate-first": (lambda: Fused(lambda h: torch.split(h, N, dim=-1), F.silu), {}, {"swiglu-fused": 1}),
    "fused-split-up-first": (lambda: Fused(lambda h: torch.split(h, [N, N], dim=-1)[::-1]), {}, {"reglu-fused": 1}),
    "transposed-projections": (Transposed, {"linear-from-matmul": 1, "linear-transposed-weight": 1}, {"reglu": 1}),
    "biased-projections": (lambda: Gated(lambda g, u: F.relu(g) * u, bias=True), {}, {"reglu": 1, "biased": 1}),
    "moe-expert-modules": (ModuleMoE, {}, {"reglu": 4, "moe-expert": 4}),
    "plain-mlp": (PlainMLP, {}, {"plain-mlp": 1}),
    "moe-batched-transposed-biased": (BatchedMoE, {"expert-weight": 16, "linear-transposed-weight": 8},
                                      {"reglu-fused": 4, "moe-expert": 4, "biased": 4}),
}

# exactly-zero-below activations in other spellings: decided by what they compute (activation_analysis.py);
# checked one by one (AllForms keeps the forms above)
SPELLING_FORMS = {
    "fatrelu-where-int-zero": (lambda: Gated(lambda g, u: torch.where(g > 0.25, g, 0) * u), {"zero-below": 1},
                               {"fatrelu": 1}),
    "fatrelu-mask-multiply": (lambda: Gated(lambda g, u: g * (g > 0.1).float() * u), {"zero-below": 1},
                              {"fatrelu": 1}),
    "fatrelu-threshold-module": (lambda: Gated(lambda g, u: nn.Threshold(0.1, 0.0)(g) * u), {"zero-below": 1},
                                 {"fatrelu": 1}),
    "relu-clamp": (lambda: Gated(lambda g, u: g.clamp(min=0) * u), {"zero-below": 1}, {"reglu": 1}),
    "relu-squared": (lambda: Gated(lambda g, u: torch.square(F.relu(g)) * u), {"zero-below": 1},
                     {"relu2-glu": 1}),
    "relu-power-two": (lambda: Gated(lambda g, u: F.relu(g) ** 2 * u), {"zero-below": 1}, {"relu2-glu": 1}),  # pow
    "relu6-hardtanh": (lambda: Gated(lambda g, u: F.hardtanh(g, 0.0, 6.0) * u), {"zero-below": 2},  # max, then min
                       {"relu6-glu": 1}),
    # DeepSeek-V4's experts: clamped, not exactly sparse, found by probing (gpt-oss's: test_clamped_swiglu_...)
    "clamped-silu-deepseek-v4": (lambda: Gated(lambda g, u: F.silu(g.clamp(max=10.0)) * u.clamp(-10.0, 10.0)), {},
                                 {"swiglu-clamped10": 1}),
}
ALL_FORMS = {**FORMS, **SPELLING_FORMS}


def _x(seq: int = SEQ, seed: int = 4) -> torch.Tensor:
    return torch.randn(1, seq, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("form", list(ALL_FORMS))
def test_rewrite_form_is_detected(form):
    factory, canonical, detected = ALL_FORMS[form]
    torch.manual_seed(0)
    model = factory().eval()
    graph = import_torch(model, (_x(),), dynamic_seq=False)
    result = run_pipeline(graph, pipeline_for("auto"))
    assert canonical.items() <= result.stats["canonicalize"].items()
    n_gated = sum(v for k, v in detected.items() if k not in ("moe-expert", "biased", "plain-mlp"))
    assert result.stats["detect-gated-mlp"] == ({"gated-mlp": n_gated, **detected} if n_gated else detected)
    # linears left, not counting a certified gate's own int8 score pass (float_x: a target whose exact_gate says so)
    linears = sum(n.op == "linear" and not n.attrs.get("float_x") for n in result.graph.nodes)
    assert linears == (2 if form == "plain-mlp" else int(form.startswith("moe")))
    _close(evaluate(result.graph, [_x(seed=5).numpy()])[0], _torch_out(model, _x(seed=5)))


class AllForms(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(factory() for factory, _, _ in FORMS.values())

    def forward(self, x):
        for block in self.blocks:
            x = x + 0.5 * block(x)
        return x


def test_all_rewrite_forms_compile_end_to_end():
    torch.manual_seed(0)
    model = AllForms().eval()
    cm = actsparse.compile(model, (_x(),), mode="auto")
    _close(cm(_x(seed=6)), _torch_out(model, _x(seed=6)))
    stats = cm.report.pass_stats
    assert stats["detect-gated-mlp"]["gated-mlp"] == 21 and stats["detect-gated-mlp"]["plain-mlp"] == 1
    assert stats["sparsify-exact"] == {"reglu": 14, "drelu": 1, "fatrelu": 1, "kept-dense": 5}
    rows = {r.location: r for r in cm.report.blocks}
    assert len(rows) == 22  # every block is a row, the plain MLP included
    assert rows["blocks.14"].pattern == "plain-mlp" and rows["blocks.13.experts.2"].expert == 2
    # biased ReGLU, and biased batched experts: their biases ride in the weights, still exact
    expert = rows["blocks.15.experts.3"]
    assert rows["blocks.12"].mode == "exact" and (expert.mode, expert.expert) == ("exact", 3)


def test_gathering_moe_is_a_clear_error():
    class GatheringMoE(ModuleMoE):  # the eager loop over routed tokens: data-dependent sizes
        def forward(self, x):
            weights, index = self.router(x).softmax(-1).topk(2, dim=-1)
            out = torch.zeros_like(x)
            for e, expert in enumerate(self.experts):
                token, slot = torch.where(index == e)
                out = out.index_add(0, token, expert(x[token]) * weights[token, slot, None])
            return out

    with pytest.raises(UnsupportedOpError, match=r"depends on tensor values.*routing weight"):
        import_torch(GatheringMoE().eval(), (torch.randn(SEQ, D),), dynamic_seq=False)


# --- golden IR for the projection rules -------------------------------------------------------------------
@pytest.mark.parametrize("name, mode, expected", [
    ("gpt2_conv1d", "auto", {"canonicalize": {"linear-transposed-weight": 2, "linear-bias": 2, "linear-flatten": 2},
                             "detect-gated-mlp": {"plain-mlp": 1}}),
    ("moe_batched_experts", "exact", {"canonicalize": {"expert-weight": 4},
                                      "detect-gated-mlp": {"gated-mlp": 2, "reglu-fused": 2, "moe-expert": 2},
                                      "sparsify-exact": {"reglu": 2}}),
    ("biased_transposed", "exact", {"canonicalize": {"linear-transposed-weight": 1, "linear-bias": 1},
                                    "detect-gated-mlp": {"gated-mlp": 1, "reglu": 1, "biased": 1},
                                    "sparsify-exact": {"reglu": 1}}),
])
def test_projection_rules_golden(name, mode, expected):
    check_golden_pipeline(name, mode, expected)


class ClampedSwiGLU(nn.Module):
    """gpt-oss's expert MLP (transformers' GptOssExperts): one biased gate_up projection, gate and up interleaved
    (even / odd outputs), gate clamped above at `limit`, up clipped to ±limit, gate·σ(1.702·gate)·(up + 1)."""

    def __init__(self, limit: float = 7.0):
        super().__init__()
        self.gate_up, self.down, self.limit = nn.Linear(D, 2 * N), nn.Linear(N, D), limit
        with torch.no_grad():
            self.gate_up.weight.mul_(20.0)  # pre-activations beyond ±limit: the clamps matter

    def forward(self, x):
        h = self.gate_up(x)
        gate, up = h[..., ::2].clamp(max=self.limit), h[..., 1::2].clamp(-self.limit, self.limit)
        return self.down((up + 1) * (gate * torch.sigmoid(gate * 1.702)))


def test_clamped_swiglu_is_a_gated_mlp_not_exact():
    """Found by what its activations compute (probing), so threshold mode applies; never exactly sparse (auto
    keeps it dense); the same block with another limit is a different function and is not found."""
    torch.manual_seed(0)
    model = ClampedSwiGLU().eval()
    graph = import_torch(model, (_x(),), dynamic_seq=False)
    auto = run_pipeline(graph, pipeline_for("auto"))
    assert auto.stats["canonicalize"]["linear-strided-rows"] == 2  # gate rows 0::2, up rows 1::2
    assert auto.stats["detect-gated-mlp"] == {"gated-mlp": 1, "swiglu-clamped7": 1, "biased": 1}
    assert auto.stats["sparsify-exact"] == {"kept-dense": 1}
    want = _torch_out(model, _x(seed=5))
    _close(evaluate(auto.graph, [_x(seed=5).numpy()])[0], want)
    calib = [(_x(seed=s).numpy(),) for s in range(8, 16)]
    thr = run_pipeline(graph, pipeline_for("threshold", calibration=calib, sparsity=0.5))
    assert sum(thr.stats["sparsify-threshold"].values()) >= 1 and thr.graph.count("gated_mlp") == 0
    approx = evaluate(thr.graph, [_x(seed=5).numpy()])[0]
    assert 0 < np.abs(approx - want).max() < np.abs(want).max()  # lossy, but close to dense
    other = run_pipeline(import_torch(ClampedSwiGLU(limit=5.0).eval(), (_x(),), dynamic_seq=False),
                         pipeline_for("auto"))
    assert other.stats["detect-gated-mlp"] == {}


def test_unrecognised_gate_is_named_not_hidden():
    """A per-token cutoff then the erf gelu, gelu(relu(g - mean(g) - 1.6·std(g))), is no table activation (Gemma 3n's
    own gate, with gelu_tanh, is: tests/test_cutoff_gate.py): the block is recorded as `unmatched-gate`, with a report
    row that spells the gate out, and computed as before."""
    model = Gated(lambda g, u: F.gelu(F.relu(g - (g.mean(-1, keepdim=True) + 1.6 * g.std(-1, keepdim=True)))) * u)
    graph = import_torch(model.eval(), (_x(),), dynamic_seq=False)
    result = run_pipeline(graph, pipeline_for("auto"))
    assert result.stats["detect-gated-mlp"] == {"unmatched-gate": 1}
    (row,) = [n for n in result.notes if n.get("pattern") == "unmatched-gate"]
    assert row["kind"] == "row" and row["gate"] == "gelu(relu(sub(P, add(…, …))))"
    _close(evaluate(result.graph, [_x(seed=5).numpy()])[0], _torch_out(model, _x(seed=5)))


class XieluMLP(nn.Module):
    """A plain MLP with Apertus's xIELU: learned scalars through softplus, a branch per sign."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(D, N), nn.Linear(N, D)
        self.alpha_p, self.alpha_n = nn.Parameter(torch.tensor([0.8])), nn.Parameter(torch.tensor([0.8]))

    def forward(self, x):
        u = self.fc1(x)
        a_p, a_n = F.softplus(self.alpha_p), 0.5 + F.softplus(self.alpha_n)
        act = torch.where(u > 0, a_p * u * u + 0.5 * u, (torch.expm1(torch.clamp(u, max=-1e-6)) - u) * a_n + 0.5 * u)
        return self.fc2(act)


class ScaledLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(D, N), nn.Linear(N, D)

    def forward(self, x):
        return self.fc2(0.5 * self.fc1(x) - 1.0)


def test_a_plain_mlp_of_an_unknown_activation_is_named_not_hidden():
    """A non-gated MLP whose activation is no table activation (Apertus's xIELU: learned scalars, a branch per
    sign) is recorded as `unmatched-activation` with a report row spelling it out, and computed as before; two
    linears with only an affine map between them are no MLP; a known activation stays `plain-mlp`."""
    torch.manual_seed(0)
    model = XieluMLP().eval()
    result = run_pipeline(import_torch(model, (_x(),), dynamic_seq=False), pipeline_for("auto"))
    assert result.stats["detect-gated-mlp"] == {"unmatched-activation": 1}
    (row,) = [n for n in result.notes if n.get("pattern") == "unmatched-activation"]
    assert row["kind"] == "row" and row["n_ff"] == N and row["activation"].startswith("where(gt(P, 0)")
    assert "no activation of the table" in row["reason"]
    _close(evaluate(result.graph, [_x(seed=5).numpy()])[0], _torch_out(model, _x(seed=5)))
    affine = run_pipeline(import_torch(ScaledLinears().eval(), (_x(),), dynamic_seq=False), pipeline_for("auto"))
    assert affine.stats["detect-gated-mlp"] == {}
    plain = run_pipeline(import_torch(PlainMLP().eval(), (_x(),), dynamic_seq=False), pipeline_for("auto"))
    assert plain.stats["detect-gated-mlp"] == {"plain-mlp": 1}


def test_topk_matches_torch():
    from actsparse.ir.ops import op_def

    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(7))
    values, indices = x.topk(3, dim=-1)
    ref = op_def("topk").reference
    attrs = {"k": 3, "axis": -1, "largest": True}
    np.testing.assert_array_equal(ref(x.numpy(), {**attrs, "output": "values"}, {}), values.numpy())
    np.testing.assert_array_equal(ref(x.numpy(), {**attrs, "output": "indices"}, {}), indices.numpy())
