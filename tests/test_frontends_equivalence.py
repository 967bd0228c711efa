"""Cross-frontend equivalence: a model imported through torch.export, ONNX and torch-mlir lands in the same IR as
far as every pass and target can tell — the same gated MLPs are found (count and pattern), the compile report has
the same rows (location, pattern, mode, n_ff, sparsity) and the compiled graphs compute what torch computes.

The matrix: transformers Llama (relu, silu), Mistral, Qwen2 and the embedded TinyLlama (dReLU, random init), each
tiny (hidden 64, 2 layers, vocab 128) and exported once per module: ONNX by `torch.onnx.export(dynamo=False,
opset_version=17)`, torch-mlir by `export_mlir` (torch-mlir's FX importer, blobs named by FQN) written to a .mlir
file and read back. Locations need no normalising: all three frontends name each block by its module path
(`model.layers.0.mlp`); only other ops' locations differ cosmetically (e.g. torch-mlir reports `act_fn`'s relu
in `...mlp`, having no module paths to read), which the report does not show.

Also here: torch-mlir's default route (`torch_mlir.fx.export_and_import`, decomposed ops, no symbolic bindings, no
locations in `str(module)`, automatic blob names recovered from the state dict) and one end-to-end
`actsparse.compile("model.mlir", mode="exact")` against torch.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnx")
try:
    import torch_mlir  # noqa: F401
except ImportError:
    HAVE_MLIR = False
else:
    HAVE_MLIR = True
needs_mlir = pytest.mark.skipif(not HAVE_MLIR, reason="torch-mlir is not installed (pip install 'actsparse[mlir]')")

import actsparse  # noqa: E402
from actsparse.frontends import CausalLMLogits, import_torch  # noqa: E402
from actsparse.frontends.onnx import import_onnx  # noqa: E402
from actsparse.frontends.torch_mlir import import_mlir  # noqa: E402 (imports torch-mlir lazily)
from actsparse.frontends.torch_mlir_export import export_mlir  # noqa: E402
from actsparse.ir import evaluate, print_graph  # noqa: E402
from actsparse.models import TinyConfig, TinyLlama  # noqa: E402
from actsparse.passes import pipeline_for, run_pipeline  # noqa: E402
from actsparse.runtime.report import measure_blocks  # noqa: E402

torch.set_num_threads(1)
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=128, max_position_embeddings=64, pad_token_id=0)
MODELS = {  # case -> (architecture, config overrides, pattern every block is detected as)
    "llama-relu": ("Llama", dict(hidden_act="relu"), "reglu"),
    "llama-silu": ("Llama", dict(hidden_act="silu"), "swiglu"),
    "mistral": ("Mistral", dict(sliding_window=4), "swiglu"),
    "qwen2": ("Qwen2", dict(), "swiglu"),
    "tiny-drelu": ("Tiny", dict(), "drelu"),
}
FRONTENDS = ("torch.export", "onnx", "torch-mlir")
# torch-mlir's cases skip (with the reason) where it is not installed, and fail under CI=true (conftest.py)
FRONTEND_PARAMS = [pytest.param(f, marks=needs_mlir) if f == "torch-mlir" else f for f in FRONTENDS]
LAYERS = SMALL["num_hidden_layers"]


def _model(case: str, attn: str = "eager") -> torch.nn.Module:
    """`attn`: transformers' attention implementation (the ONNX frontend has no mapping for the IsNaN that the
    TorchScript exporter writes for "sdpa", so the matrix uses "eager"; the torch-mlir-only tests use "sdpa")."""
    arch, overrides, _ = MODELS[case]
    torch.manual_seed(0)
    if arch == "Tiny":
        config = TinyConfig(vocab_size=128, d_model=64, n_layers=LAYERS, n_heads=2, n_ff=128, max_seq=64,
                            mlp_act="drelu")
        return TinyLlama(config).eval()
    config = getattr(transformers, f"{arch}Config")(**{**SMALL, **overrides}, attn_implementation=attn)
    return CausalLMLogits(getattr(transformers, f"{arch}ForCausalLM")(config)).eval()


def _ids(seq: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 128, (1, seq), generator=torch.Generator().manual_seed(seed + seq))


def _import(frontend: str, model, ids, tmp) -> tuple:
    """-> (graph, the exported file or None)."""
    if frontend == "torch.export":
        return import_torch(model, (ids,)), None
    if frontend == "onnx":
        path = tmp / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(model, (ids,), str(path), dynamo=False, opset_version=17, input_names=["input_ids"],
                              output_names=["logits"], dynamic_axes={"input_ids": {1: "seq"}})
        return import_onnx(path), path
    path = tmp / "model.mlir"
    export_mlir(model, (ids,), path=path)
    return import_mlir(path), path


def _report(result, ids: np.ndarray) -> list[tuple]:
    """The compile report's rows (as `actsparse.compile` builds them), without building for a target."""
    rows = [(b.location, b.pattern, b.mode, b.n_ff, round(b.sparsity, 3)) for b in measure_blocks(result.graph, [ids])]
    notes = [(n["location"], n["pattern"], n["mode"], n.get("n_ff", 0), n.get("reason")) for n in result.notes]
    return sorted(rows) + sorted(notes, key=str)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """(case, frontend) -> (torch model, imported graph, auto pipeline result, exported file), each made once."""
    models: dict = {}
    cache: dict = {}

    def get(case: str, frontend: str) -> tuple:
        if case not in models:
            models[case] = _model(case)
        if (case, frontend) not in cache:
            model = models[case]
            graph, path = _import(frontend, model, _ids(7), tmp_path_factory.mktemp(f"{case}-{frontend}"))
            cache[case, frontend] = (model, graph, run_pipeline(graph, pipeline_for("auto")), path)
        return cache[case, frontend]

    return get


@pytest.mark.parametrize("frontend", FRONTEND_PARAMS[1:])
@pytest.mark.parametrize("case", list(MODELS))
def test_frontends_find_the_same_gated_mlps_with_the_same_report_as_torch_export(matrix, case, frontend):
    entry = {f: matrix(case, f) for f in ("torch.export", frontend)}
    pattern = MODELS[case][2]
    ids = _ids(7).numpy()
    reports = {}
    for frontend, (_, graph, result, _) in entry.items():
        detected = result.stats["detect-gated-mlp"]
        assert detected.get("gated-mlp") == LAYERS and detected.get(pattern) == LAYERS, (frontend, detected)
        blocks = [n for n in result.graph.nodes if n.op in ("gated_mlp", "sparse_gated_mlp")]
        prefix = "" if case.startswith("tiny") else "model."
        assert sorted(b.loc for b in blocks) == [f"{prefix}layers.{i}.mlp" for i in range(LAYERS)], frontend
        assert [str(i.type) for i in graph.inputs] == ["i64[1,seq]"], frontend
        reports[frontend] = _report(result, ids)
    stats = {f: (r.stats["detect-gated-mlp"], r.stats.get("sparsify-exact")) for f, (_, _, r, _) in entry.items()}
    assert stats[frontend] == stats["torch.export"], stats
    assert reports[frontend] == reports["torch.export"], (frontend, reports)
    modes = {row[2] for row in reports["torch.export"] if len(row) == 5 and isinstance(row[4], float)}
    assert modes == ({"exact"} if pattern in ("reglu", "drelu") else {"dense"})


@pytest.mark.parametrize("frontend", FRONTEND_PARAMS)
@pytest.mark.parametrize("case", list(MODELS))
def test_every_frontend_computes_what_torch_computes(matrix, case, frontend):
    # one frontend per test: a missing torch-mlir is a visible skip, never a silently shorter matrix
    model, graph, result, _ = matrix(case, frontend)
    for seq in (7, 11):  # every frontend keeps the sequence length symbolic
        ids = _ids(seq, seed=3)
        with torch.no_grad():
            expected = model(ids).numpy()
        for g in (graph, result.graph):
            np.testing.assert_allclose(evaluate(g, [ids.numpy()])[0], expected, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{case} via {frontend}")


@needs_mlir
def test_torch_mlir_gives_the_torch_export_graph_op_for_op(matrix):
    """export_mlir keeps ops at torch.export's level (here also aten.scaled_dot_product_attention), so the two
    graphs are the same text but for some locations; weights have the same names and values."""
    qwen2 = _model("qwen2", attn="sdpa")
    pairs = [(matrix("llama-silu", "torch-mlir")[1], matrix("llama-silu", "torch.export")[1]),
             (import_mlir(export_mlir(qwen2, (_ids(7),))), import_torch(qwen2, (_ids(7),)))]  # (a module object)
    for ours, theirs in pairs:
        assert [line.split("  # ")[0] for line in print_graph(ours).splitlines()] == \
            [line.split("  # ")[0] for line in print_graph(theirs).splitlines()]
        assert set(ours.weights) == set(theirs.weights)
        assert all(np.array_equal(ours.weights[k], theirs.weights[k]) for k in ours.weights)
        blocks = {n.loc for n in ours.nodes if n.op == "linear" and "mlp" in n.loc}
        assert {loc.split(" (")[0] for loc in blocks} == {f"model.layers.{i}.mlp.{p}_proj" for i in range(LAYERS)
                                                         for p in ("gate", "up", "down")}


@needs_mlir
def test_export_and_import_default_route_with_state_dict_names(tmp_path):
    """torch_mlir.fx.export_and_import as users call it: decomposed ops (mm of a permuted weight, bmm, safe
    softmax), `?` dims without bindings, no locations in str(module), blobs named torch_tensor_*; the state dict
    gives the weights their names back, and the blocks, report and outputs are those of the torch frontend."""
    from torch_mlir import fx

    model = _model("llama-relu", attn="sdpa")
    for m in model.modules():  # TVM-NOTES, frontend quirks: torch-mlir reads every buffer from the state dict
        m._non_persistent_buffers_set.clear()
    ids = _ids(7)
    module = fx.export_and_import(model, ids, dynamic_shapes=({1: torch.export.Dim("seq")},))
    path = tmp_path / "default.mlir"
    path.write_text(str(module))
    assert "dense_resource<torch_tensor_128_64_torch.float32" in path.read_text()
    assert "torch.aten.linear" not in path.read_text() and "torch.aten.mm" in path.read_text()

    graph = import_mlir(path, state_dict=model.state_dict())
    reference = import_torch(model, (ids,))
    assert set(graph.weights) == set(reference.weights)
    assert graph.count("linear") == reference.count("linear") == 7 * LAYERS + 1  # mm(x, permute(W)) -> linear
    for seq in (7, 10):
        with torch.no_grad():
            expected = model(_ids(seq)).numpy()
        np.testing.assert_allclose(evaluate(graph, [_ids(seq).numpy()])[0], expected, rtol=1e-4, atol=1e-5)
    ours, theirs = (run_pipeline(g, pipeline_for("auto")) for g in (graph, reference))
    assert _report(ours, ids.numpy()) == _report(theirs, ids.numpy())

    unnamed = run_pipeline(import_mlir(module), pipeline_for("auto"))  # no state dict: blob names, same blocks
    assert unnamed.stats["detect-gated-mlp"] == theirs.stats["detect-gated-mlp"]
    assert any(name.startswith("torch_tensor_") for name in unnamed.graph.weights)


@needs_mlir
def test_compile_mlir_file_exact_matches_torch(matrix):
    model, _, _, path = matrix("llama-relu", "torch-mlir")
    cm = actsparse.compile(str(path), (_ids(7).numpy(),), mode="exact")
    assert [(b.location, b.pattern, b.mode) for b in cm.report.blocks] == [
        (f"model.layers.{i}.mlp", "reglu", "exact") for i in range(LAYERS)]
    for seq in (7, 4):
        ids = _ids(seq, seed=5)
        with torch.no_grad():
            np.testing.assert_allclose(cm(ids.numpy()), model(ids).numpy(), rtol=1e-4, atol=1e-5)
