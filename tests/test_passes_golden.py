"""Golden before/after IR texts for each pass, plus the match counts that prove each rewrite fired.

Regenerate the .after.ir files with ACTSPARSE_UPDATE_GOLDEN=1 (then read the diff before committing).
"""

import os
from pathlib import Path

import numpy as np
import pytest

from actsparse.errors import ModeError
from actsparse.ir import evaluate, parse_graph, print_graph
from actsparse.passes import parse_pipeline, pipeline_for, run_pipeline

GOLDEN = Path(__file__).parent / "golden"


def _load(name: str, seed: int = 0):
    text = (GOLDEN / f"{name}.before.ir").read_text()
    graph = parse_graph(text)
    rng = np.random.default_rng(seed)
    weights = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in graph.weights.items()}
    return parse_graph(text, weights)


def _check_golden(name: str, mode: str, text: str) -> None:
    path = GOLDEN / f"{name}.{mode}.after.ir"
    if os.environ.get("ACTSPARSE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def _inputs(graph, seq=5, seed=1):
    shape = [seq if isinstance(d, str) else d for d in graph.inputs[0].shape]
    return [np.random.default_rng(seed).standard_normal(shape).astype(np.float32)]


@pytest.mark.parametrize("name, mode, expected", [
    ("reglu_separate", "exact", {"detect-gated-mlp": {"gated-mlp": 1, "reglu": 1},
                                 "sparsify-exact": {"reglu": 1}}),
    ("drelu_fused", "exact", {"detect-gated-mlp": {"gated-mlp": 1, "drelu-fused": 1},
                              "sparsify-exact": {"drelu": 1}}),
    ("swiglu_decomposed", "auto", {"canonicalize": {"silu": 1, "linear-from-matmul": 1},
                                   "detect-gated-mlp": {"gated-mlp": 1, "swiglu": 1},
                                   "sparsify-exact": {"kept-dense": 1}}),
    ("plain_mlp", "auto", {"detect-gated-mlp": {"plain-mlp": 1}}),
    # three experts weighted by a top-2 router -> one routed_moe (the experts' weights stacked, down transposed)
    ("moe_routed", "exact", {"detect-gated-mlp": {"gated-mlp": 3, "reglu": 3, "moe-expert": 3},
                             "sparsify-exact": {"reglu": 3}, "route-moe": {"routed-moe": 1, "routed-experts": 3}}),
    ("moe_routed", "dense", {"route-moe": {"routed-moe": 1, "routed-experts": 3}, "fuse-gated-mlp": {}}),
    # dense mode: every gated MLP onto the fused dense kernel, on exact mode's layout (down transposed)
    ("drelu_fused", "dense", {"fuse-gated-mlp": {"drelu-fused": 1}}),
    ("swiglu_decomposed", "dense", {"fuse-gated-mlp": {"swiglu": 1}}),
    # Phi-3's rotary concatenates an empty pass-through slice: dropped before any backend sees it
    ("concat_empty", "dense", {"canonicalize": {"concat-empty-operand": 2}}),
    # Gemma's RMSNorm weight, 1 + w: one derived weight, computed at compile time (the norm then reads as one
    # with a weight, which the CPU kernels reading it compute in their prologue)
    ("gemma_norm", "dense", {"canonicalize": {"fold-vector-weight": 1}}),
])
def test_pipeline_golden_and_counts(name, mode, expected):
    check_golden_pipeline(name, mode, expected)


def check_golden_pipeline(name: str, mode: str, expected: dict) -> None:
    """Golden case `name` through mode's pipeline: the passes fired `expected` times ({pass: {pattern: n}}), the
    text equals the golden file, and the rewritten graph computes what the original did."""
    from dataclasses import replace

    from actsparse import targets

    graph = _load(name)
    # goldens must not depend on the host: exact mode reads every gate row (no certified int8 gate copy)
    result = run_pipeline(graph, pipeline_for(mode, replace(targets.get("x86"), exact_gate="dense")))
    for pass_name, counts in expected.items():
        assert result.stats[pass_name] == counts
    _check_golden(name, mode, print_graph(result.graph))
    inputs = _inputs(graph)
    np.testing.assert_allclose(evaluate(result.graph, inputs)[0], evaluate(graph, inputs)[0], rtol=1e-4, atol=1e-5)


def test_exact_mode_on_swiglu_names_the_layer_and_ways_out():
    with pytest.raises(ModeError, match=r"blk.*swiglu.*relufy.*threshold.*auto"):
        run_pipeline(_load("swiglu_decomposed"), pipeline_for("exact"))


def test_auto_mode_reports_why_blocks_stay_dense():
    result = run_pipeline(_load("swiglu_decomposed"), pipeline_for("auto"))
    assert [n["location"] for n in result.notes] == ["blk"]
    assert "not exactly sparse" in result.notes[0]["reason"]


def test_dump_ir_writes_each_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTSPARSE_DUMP_IR", str(tmp_path))
    run_pipeline(_load("reglu_separate"), pipeline_for("exact"))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["00-input.ir", "01-canonicalize.ir", "02-detect-gated-mlp.ir", "03-fuse-attention.ir",
                     "04-sparsify-exact.ir", "05-route-moe.ir", "06-certify-exact-gate.ir"]
    assert "sparse_gated_mlp" in (tmp_path / "04-sparsify-exact.ir").read_text()


def test_pipeline_text_round_trip_and_unknown_names():
    passes = parse_pipeline("canonicalize,detect-gated-mlp,sparsify-exact{on_unsupported=keep-dense,kernel_family=cpu}")
    assert [str(p) for p in passes] == ["canonicalize", "detect-gated-mlp",
                                        "sparsify-exact{on_unsupported=keep-dense,kernel_family=cpu}"]
    with pytest.raises(ValueError, match="valid passes: canonicalize, certify-exact-gate, densify, detect-gated-mlp"):
        parse_pipeline("canonicalise")
    with pytest.raises(ValueError, match="valid modes"):
        pipeline_for("fast")


def test_routed_moe_densifies_to_the_dense_pipeline_and_parses_back():
    """densify (bench's dense twin) keeps the experts routed and drops only their neuron sparsity: the exact
    pipeline's graph densified prints as the dense pipeline's; the routed op's text parses back."""
    from actsparse.passes.densify import Densify

    graph = _load("moe_routed")
    exact = run_pipeline(graph, pipeline_for("exact")).graph
    densified = run_pipeline(exact, [Densify()])
    assert densified.stats["densify"] == {"routed-moe": 1}
    assert print_graph(densified.graph) == (GOLDEN / "moe_routed.dense.after.ir").read_text()
    reparsed = parse_graph(print_graph(exact), dict(exact.weights))
    inputs = _inputs(graph)
    np.testing.assert_allclose(evaluate(reparsed, inputs)[0], evaluate(graph, inputs)[0], rtol=1e-4, atol=1e-5)


def test_experts_fed_by_a_concat_route_on_it_whole():
    """Exact experts whose input merely is a concat (of two halves of the hidden state) are not the homogeneous
    form of plain relu² experts (concat(x, 1), output sliced back: `routed-augmented`): they route on the concat as
    it is, nothing sliced, and compute what the graph did."""
    text = (GOLDEN / "moe_routed.before.ir").read_text().replace(
        "graph @main(%x: f32[seq,8]) {",
        "graph @main(%a: f32[seq,4], %b: f32[seq,4]) {").replace(
        "  %0 = linear(%x, @router.weight)",
        "  %x = concat(%a, %b) {'axis': -1} : f32[seq,8]  # halves (moe.py:0)\n  %0 = linear(%x, @router.weight)")
    rng = np.random.default_rng(0)
    graph = parse_graph(text, {k: rng.standard_normal(v.shape).astype(np.float32)
                               for k, v in parse_graph(text).weights.items()})
    result = run_pipeline(graph, pipeline_for("exact"))
    assert result.stats["route-moe"] == {"routed-moe": 1, "routed-experts": 3}  # not `routed-augmented`
    (routed,) = [n for n in result.graph.nodes if n.op == "routed_moe"]
    assert routed.inputs[0].op == "concat" and routed.shape[-1] == 8
    assert "slice" not in {n.op for n in result.graph.nodes}
    inputs = [rng.standard_normal((5, 4)).astype(np.float32) for _ in range(2)]
    np.testing.assert_allclose(evaluate(result.graph, inputs)[0], evaluate(graph, inputs)[0], rtol=1e-4, atol=1e-5)


def test_biased_plain_experts_route_in_homogeneous_coordinates():
    """Plain relu experts with a first-layer bias (OPT-style MLPs as experts): sparsify-exact folds the bias into
    [W1 | b1] on concat(x, 1) with the `unit` up factor, and route-moe routes them on that concat, cutting the extra
    output column (`routed-augmented`); the result computes what the graph did."""
    lines = ["graph @main(%x: f32[seq,8]) {", "  @router.weight : f32[3,8]"]
    for e in range(3):
        lines += [f"  @experts.{e}.fc1.weight : f32[16,8]", f"  @experts.{e}.fc1.bias : f32[16]",
                  f"  @experts.{e}.fc2.weight : f32[8,16]"]
    lines += ["  %0 = linear(%x, @router.weight) : f32[seq,3]  # router (moe.py:1)",
              "  %1 = softmax(%0) {'axis': -1} : f32[seq,3]  # router (moe.py:2)",
              "  %2 = topk(%1) {'axis': 1, 'k': 2, 'largest': True, 'output': 'values'} : f32[seq,2]  # router",
              "  %3 = topk(%1) {'axis': 1, 'k': 2, 'largest': True, 'output': 'indices'} : i64[seq,2]  # router"]
    total = None
    for e in range(3):
        lines += [f"  %h{e} = linear(%x, @experts.{e}.fc1.weight, @experts.{e}.fc1.bias) : f32[seq,16]  # experts.{e}",
                  f"  %a{e} = relu(%h{e}) : f32[seq,16]  # experts.{e}",
                  f"  %o{e} = linear(%a{e}, @experts.{e}.fc2.weight) : f32[seq,8]  # experts.{e}",
                  f"  %k{e} = constant() {{'value': {e}}} : i64[]  # moe",
                  f"  %q{e} = eq(%3, %k{e}) : bool[seq,2]  # moe",
                  f"  %c{e} = cast(%q{e}) {{'dtype': 'f32'}} : f32[seq,2]  # moe",
                  f"  %m{e} = mul(%2, %c{e}) : f32[seq,2]  # moe",
                  f"  %s{e} = sum(%m{e}) {{'axes': (1,), 'keepdim': True}} : f32[seq,1]  # moe",
                  f"  %w{e} = mul(%o{e}, %s{e}) : f32[seq,8]  # moe"]
        if total is not None:
            lines.append(f"  %t{e} = add({total}, %w{e}) : f32[seq,8]  # moe")
        total = f"%t{e}" if total is not None else f"%w{e}"
    text = "\n".join([*lines, f"  return {total}", "}", ""])
    rng = np.random.default_rng(0)
    graph = parse_graph(text, {k: rng.standard_normal(v.shape).astype(np.float32)
                               for k, v in parse_graph(text).weights.items()})
    result = run_pipeline(graph, pipeline_for("exact"))
    assert result.stats["sparsify-exact"] == {"relu-mlp": 3}
    assert result.stats["route-moe"] == {"routed-moe": 1, "routed-experts": 3, "routed-augmented": 1}
    (routed,) = [n for n in result.graph.nodes if n.op == "routed_moe"]
    assert routed.inputs[0].op == "concat" and routed.shape[-1] == 9 and routed.attrs["up_act"] == "unit"
    inputs = _inputs(graph)
    want = evaluate(graph, inputs)[0]
    np.testing.assert_allclose(evaluate(result.graph, inputs)[0], want, rtol=1e-4, atol=1e-5)
    import actsparse  # and the routed CPU kernel, which reads no up rows for `unit`

    np.testing.assert_allclose(np.asarray(actsparse.compile(graph, inputs, mode="exact")(*inputs)), want, rtol=1e-4,
                               atol=1e-5)
