"""The ONNX frontend: models exported by both torch.onnx exporters import, verify, compute what onnxruntime and
torch compute, and keep their gated MLPs detectable; bad files are one clear error each.

Models are tiny (hidden 64, 2 layers, vocab 128); every import is checked at two sequence lengths, since the
exports keep the sequence length symbolic. The dynamo exporter takes several seconds per model, so each export
is made once per session.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import actsparse  # noqa: E402
from actsparse.cli import main as cli_main  # noqa: E402
from actsparse.frontends.errors import FrontendError, UnsupportedOpError  # noqa: E402
from actsparse.frontends.onnx import OnnxImportError, import_onnx  # noqa: E402
from actsparse.ir import evaluate, parse_graph, print_graph, verify  # noqa: E402
from actsparse.passes import pipeline_for, run_pipeline  # noqa: E402

torch.set_num_threads(1)
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=128, max_position_embeddings=64, pad_token_id=0)
MODELS = {  # case -> (architecture, config overrides, the gated-MLP pattern it must be detected as)
    "llama-relu": ("Llama", dict(hidden_act="relu"), "reglu"),
    "llama-silu": ("Llama", dict(hidden_act="silu"), "swiglu"),
    "qwen2": ("Qwen2", dict(), "swiglu"),
}
EXPORTERS = {"torchscript": dict(dynamo=False, opset_version=17), "dynamo": dict(dynamo=True, opset_version=18)}


class Logits(torch.nn.Module):
    """ids -> logits, the one-input view of a causal LM that exports cleanly."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits


def _hf(case: str) -> torch.nn.Module:
    arch, overrides, _ = MODELS[case]
    config = getattr(transformers, f"{arch}Config")(**{**SMALL, **overrides}, attn_implementation="eager")
    torch.manual_seed(0)
    return Logits(getattr(transformers, f"{arch}ForCausalLM")(config)).eval()


def _export(model, path, exporter: str, dynamic: bool = True):
    ids = torch.zeros(1, 7, dtype=torch.long)
    kwargs = dict(EXPORTERS[exporter], input_names=["input_ids"], output_names=["logits"])
    if dynamic and kwargs["dynamo"]:
        kwargs["dynamic_shapes"] = ({1: torch.export.Dim("seq")},)
    elif dynamic:
        kwargs["dynamic_axes"] = {"input_ids": {1: "seq"}}
    with torch.no_grad():
        torch.onnx.export(model, (ids,), str(path), **kwargs)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(case, exporter) -> (torch model, path of its ONNX export); each export is made once."""
    cache: dict = {}

    def get(case: str, exporter: str):
        if (case, exporter) not in cache:
            model = _hf(case)
            path = tmp_path_factory.mktemp(f"{case}-{exporter}") / "model.onnx"
            cache[case, exporter] = (model, _export(model, path, exporter))
        return cache[case, exporter]

    return get


def _ids(seq: int, vocab: int = 128, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + seq).integers(0, vocab, (1, seq)).astype(np.int64)


def _onnxruntime(path, ids: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: ids})[0]


# --- transformers models, both exporters ------------------------------------------------------------------
@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("case", list(MODELS))
def test_hf_export_imports_matches_onnxruntime_and_torch_and_keeps_gated_mlps(exported, case, exporter):
    model, path = exported(case, exporter)
    graph = verify(import_onnx(path))

    assert [str(i.type) for i in graph.inputs] == ["i64[1,seq]"]
    for seq in (7, 11):  # the export's symbolic sequence length stays symbolic
        ids = _ids(seq)
        (got,) = evaluate(graph, [ids])
        np.testing.assert_allclose(got, _onnxruntime(path, ids), rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            np.testing.assert_allclose(got, model(torch.from_numpy(ids)).numpy(), rtol=1e-4, atol=1e-5)

    result = run_pipeline(graph, pipeline_for("auto"))
    pattern = MODELS[case][2]
    assert result.stats["detect-gated-mlp"]["gated-mlp"] == SMALL["num_hidden_layers"]
    assert result.stats["detect-gated-mlp"][pattern] == SMALL["num_hidden_layers"]
    blocks = [n for n in result.graph.nodes if n.op in ("gated_mlp", "sparse_gated_mlp")]
    assert sorted(n.loc for n in blocks) == ["model.layers.0.mlp", "model.layers.1.mlp"]  # as the torch frontend
    assert {"model.layers.0.mlp.gate_proj.weight", "model.embed_tokens.weight"} <= set(graph.weights)
    assert graph.weights["model.layers.0.mlp.gate_proj.weight"].shape == (128, 64)  # IR layout [out, in]


def test_imported_graph_prints_and_parses_back(exported):
    path = exported("qwen2", "torchscript")[1]
    graph = import_onnx(path)
    text = print_graph(graph)
    assert print_graph(verify(parse_graph(text, dict(graph.weights)))) == text
    n_onnx = len(onnx.load(str(path)).graph.node)
    assert len(graph.nodes) < n_onnx / 2  # the Shape/Gather/Unsqueeze/Concat size arithmetic folded away


def test_model_proto_and_static_shape_export(tmp_path):
    model = _hf("llama-relu")
    path = _export(model, tmp_path / "static.onnx", "torchscript", dynamic=False)
    graph = import_onnx(onnx.load(str(path)))
    assert [str(i.type) for i in graph.inputs] == ["i64[1,7]"]
    ids = _ids(7)
    np.testing.assert_allclose(evaluate(graph, [ids])[0], _onnxruntime(path, ids), rtol=1e-4, atol=1e-5)


# --- end to end -------------------------------------------------------------------------------------------
def test_compile_onnx_file_exact_matches_onnxruntime(exported):
    _, path = exported("llama-relu", "torchscript")
    cm = actsparse.compile(str(path), (_ids(7),), mode="exact")
    assert [b.pattern for b in cm.report.blocks] == ["reglu", "reglu"]
    assert [b.mode for b in cm.report.blocks] == ["exact", "exact"]
    for seq in (7, 4):
        ids = _ids(seq, seed=5)
        np.testing.assert_allclose(cm(ids), _onnxruntime(path, ids), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_cli_builds_an_onnx_file_without_example_inputs(exported, tmp_path, capsys):
    _, path = exported("llama-relu", "dynamo")
    out = tmp_path / "artifact"
    assert cli_main(["build", str(path), "-m", "exact", "-o", str(out)]) == 0
    assert "model.layers.1.mlp" in capsys.readouterr().out
    loaded = actsparse.load(out)
    ids = _ids(9)
    np.testing.assert_allclose(loaded(ids), _onnxruntime(path, ids), rtol=1e-4, atol=1e-5)


# --- hand-written graphs: op coverage ---------------------------------------------------------------------
def _model(nodes, inputs, outputs, initializers=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _save(model, path):
    onnx.save(model, str(path))
    return path


def test_fused_gate_up_gemm_and_split_detect_as_fused_reglu(tmp_path):
    """x·W[d, 2n] split in two halves, relu(gate)·up, then a Gemm down projection with a bias and alpha."""
    rng = np.random.default_rng(0)
    d, n = 8, 12
    w_gu = rng.standard_normal((d, 2 * n)).astype(np.float32)
    w_down = rng.standard_normal((d, n)).astype(np.float32)  # Gemm transB=1: [out, in]
    bias = rng.standard_normal(d).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["x2"], name="/mlp/Reshape"),
        helper.make_node("MatMul", ["x2", "mlp.gate_up.weight"], ["gu"], name="/mlp/gate_up_proj/MatMul"),
        helper.make_node("Split", ["gu"], ["g", "u"], axis=-1, num_outputs=2, name="/mlp/Split"),
        helper.make_node("Relu", ["g"], ["a"], name="/mlp/act/Relu"),
        helper.make_node("Mul", ["a", "u"], ["h"], name="/mlp/Mul"),
        helper.make_node("Gemm", ["h", "mlp.down.weight", "mlp.down.bias"], ["y"], transB=1, alpha=0.5,
                         name="/mlp/down_proj/Gemm"),
    ]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", d])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", d])],
                   [("mlp.gate_up.weight", w_gu), ("mlp.down.weight", w_down), ("mlp.down.bias", bias),
                    ("flat", np.array([-1, d], np.int64))])
    path = _save(model, tmp_path / "mlp.onnx")
    graph = import_onnx(path)
    x = rng.standard_normal((5, d)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(evaluate(graph, [x])[0], session.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)
    result = run_pipeline(graph, pipeline_for("exact"))
    assert result.stats["detect-gated-mlp"] == {"gated-mlp": 1, "reglu-fused": 1}
    assert result.stats["sparsify-exact"] == {"reglu": 1}


def test_misc_ops_match_onnxruntime(tmp_path):
    """A torch module reaching the handlers the transformers models do not, through both exporters."""
    from torch.nn import functional as F

    class ManyOps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(32, 24)
            self.norm = torch.nn.LayerNorm(24)
            self.fused = torch.nn.Linear(24, 48)
            self.mix = torch.nn.Parameter(torch.randn(24, 24))

        def forward(self, ids):
            x = self.norm(self.embed(ids))
            gate, up = self.fused(x).chunk(2, dim=-1)
            h = F.gelu(gate, approximate="tanh") * up + torch.addmm(torch.ones(24), x[0], self.mix)
            q, k, v = h.view(1, -1, 2, 12).transpose(1, 2).split([4, 4, 4], dim=-1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            out = torch.cat([a, a * 2], dim=-1).clamp(-3.0, 3.0) * 0.5
            out = out.masked_fill(out > 2.5, 0.0).flatten(0, 1).permute(0, 2, 1).unsqueeze(0).squeeze(0)
            first, *_ = out.unbind(1)
            tail = torch.gather(out, 1, (out[:, :2] > 0).long()).sum(1, keepdim=True)  # GatherElements ([2, 8, seq])
            tail = tail + F.softplus(out).cumsum(1)[:, -1:] + out[:, :4].repeat(1, 2, 1)  # Softplus, CumSum, Tile
            return (out.amax(-1, keepdim=True) + out.select(-1, -1).mean() + tail
                    + torch.where(first > 0, first, 0.1).sum()).sigmoid()

    torch.manual_seed(0)
    module = ManyOps().eval()
    for exporter in EXPORTERS:
        path = _export(module, tmp_path / f"many-{exporter}.onnx", exporter)
        graph = import_onnx(path)
        for seq in (6, 9):
            ids = _ids(seq, vocab=32)
            np.testing.assert_allclose(evaluate(graph, [ids])[0], _onnxruntime(path, ids), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op, attrs", [("IsNaN", {}), ("IsInf", {}), ("IsInf", {"detect_negative": 0}),
                                       ("IsInf", {"detect_positive": 0})])
def test_non_finite_masks_match_onnxruntime(tmp_path, op, attrs):
    """IsNaN / IsInf (Qwen3's ONNX export masks with IsNaN): imported, interpreted and compiled, as onnxruntime."""
    nodes = [helper.make_node(op, ["x"], ["m"], name="mask", **attrs),
             helper.make_node("Where", ["m", "zero", "x"], ["y"], name="where")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                   [("zero", np.zeros((), np.float32))], opset=20)
    path = _save(model, tmp_path / "mask.onnx")
    x = np.array([[1.0, np.nan, np.inf, -np.inf], [-2.0, 0.0, np.inf, np.nan]], np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    graph = import_onnx(path)
    np.testing.assert_array_equal(evaluate(graph, [x])[0], expected)
    np.testing.assert_array_equal(actsparse.compile(str(path), (x,), mode="dense")(x), expected)


def test_qwen3_sdpa_export_with_isnan_matches_onnxruntime(tmp_path):
    """Qwen3 with its default (sdpa) attention exports an IsNaN (the NaN guard of fully masked rows)."""
    config = transformers.Qwen3Config(**SMALL, head_dim=8)
    torch.manual_seed(0)
    path = _export(Logits(transformers.Qwen3ForCausalLM(config)).eval(), tmp_path / "qwen3.onnx", "torchscript")
    assert "IsNaN" in {n.op_type for n in onnx.load(str(path)).graph.node}
    graph = import_onnx(path)
    ids = _ids(6)
    np.testing.assert_allclose(evaluate(graph, [ids])[0], _onnxruntime(path, ids), rtol=1e-4, atol=1e-5)


# --- bad input: one clear error each, nothing written --------------------------------------------------------
def _tiny(op="Relu", opset=18):
    node = helper.make_node(op, ["x"], ["y"], name="the_node")
    return _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [] if op == "Det" else [3, 3])], opset=opset)


def _assert_cli_fails_cleanly(path, tmp_path, capsys, *needles):
    out = tmp_path / "never-written"
    assert cli_main(["build", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(n in err for n in needles)
    assert not out.exists()


def test_truncated_file_is_one_clear_error(exported, tmp_path, capsys):
    data = exported("llama-relu", "torchscript")[1].read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxImportError, match="truncated.onnx: not a readable ONNX model"):
        import_onnx(path)
    _assert_cli_fails_cleanly(path, tmp_path, capsys, "not a readable ONNX model")


@pytest.mark.parametrize("opset", [13, 22])
def test_opset_outside_the_range_names_the_range(tmp_path, capsys, opset):
    path = _save(_tiny(opset=opset), tmp_path / "old.onnx")
    with pytest.raises(OnnxImportError, match=f"opset {opset} is not supported; actsparse imports ONNX opsets 14–21"):
        import_onnx(path)
    _assert_cli_fails_cleanly(path, tmp_path, capsys, "opsets 14–21")


def test_supported_opset_bounds_import(tmp_path):
    for opset in (14, 21):
        graph = import_onnx(_save(_tiny(opset=opset), tmp_path / f"ok{opset}.onnx"))
        assert graph.outputs[0].op == "relu"


def test_unsupported_op_names_op_node_and_index(tmp_path, capsys):
    path = _save(_tiny("Det"), tmp_path / "det.onnx")
    with pytest.raises(UnsupportedOpError, match=r"unsupported operator Det .*'the_node', index 0"):
        import_onnx(path)
    _assert_cli_fails_cleanly(path, tmp_path, capsys, "Det", "the_node")


def test_missing_external_data_names_the_file(exported, tmp_path, capsys):
    model = onnx.load(str(exported("llama-silu", "torchscript")[1]))
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.weights", size_threshold=0)
    graph = import_onnx(path)  # with its data file beside it, it imports
    assert graph.count("linear") == 7 * SMALL["num_hidden_layers"] + 1
    (tmp_path / "ext.weights").unlink()
    with pytest.raises(OnnxImportError, match="external data file ext.weights .* is missing"):
        import_onnx(path)
    _assert_cli_fails_cleanly(path, tmp_path, capsys, "ext.weights")


def test_checker_failure_and_non_onnx_input_are_clear(tmp_path):
    bad = _tiny()
    bad.graph.node[0].input[0] = "undefined_value"
    with pytest.raises(OnnxImportError, match="the ONNX checker rejected the model"):
        import_onnx(_save(bad, tmp_path / "bad.onnx"))
    with pytest.raises(OnnxImportError, match="no such ONNX file"):
        import_onnx(tmp_path / "missing.onnx")
    with pytest.raises(OnnxImportError, match="expected a path to a .onnx file or an onnx.ModelProto"):
        import_onnx(42)
    assert issubclass(OnnxImportError, FrontendError)
