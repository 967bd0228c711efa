"""The torch-mlir frontend on its own: a .mlir file builds from the CLI; torch-mlir Module objects compile; bad
input — a truncated or malformed file, missing weight blobs, an unsupported op, a module lowered past the torch
dialect, a size the IR cannot express — is one clear error each (a FrontendError, no traceback from the CLI,
nothing written). Cross-frontend equivalence on real architectures is in test_frontends_equivalence.py.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_mlir", reason="torch-mlir is not installed (pip install 'actsparse[mlir]')")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import actsparse  # noqa: E402
from actsparse.api import import_model  # noqa: E402
from actsparse.cli import main as cli_main  # noqa: E402
from actsparse.frontends.errors import FrontendError, UnsupportedOpError  # noqa: E402
from actsparse.frontends.torch_mlir import MlirImportError, import_mlir  # noqa: E402
from actsparse.frontends.torch_mlir_export import export_mlir  # noqa: E402
from actsparse.ir import evaluate  # noqa: E402

torch.set_num_threads(1)


class GatedLM(nn.Module):
    """embed -> x + down(relu(gate(x)) * up(x)) -> head: one ReGLU block, small enough to export in a second."""

    def __init__(self, vocab=32, d=16, n=24):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.gate, self.up, self.down = nn.Linear(d, n, bias=False), nn.Linear(d, n, bias=False), nn.Linear(n, d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        return self.head(x + self.down(F.relu(self.gate(x)) * self.up(x)))


def _ids(seq: int, vocab: int = 32) -> torch.Tensor:
    return torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(seq))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, path of its .mlir export with locations)."""
    torch.manual_seed(0)
    model = GatedLM().eval()
    path = tmp_path_factory.mktemp("mlir") / "gated.mlir"
    export_mlir(model, (_ids(6),), path=path)
    return model, path


def _assert_cli_fails_cleanly(path, tmp_path, capsys, *needles):
    out = tmp_path / "never-written"
    assert cli_main(["build", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(n in err for n in needles), err
    assert not out.exists()


# --- good input ---------------------------------------------------------------------------------------------
def test_cli_builds_an_mlir_file_and_the_artifact_matches_torch(exported, tmp_path, capsys):
    model, path = exported
    out = tmp_path / "artifact"
    assert cli_main(["build", str(path), "-m", "exact", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "reglu" in printed and "exact" in printed
    loaded = actsparse.load(out)
    for seq in (6, 9):
        with torch.no_grad():
            np.testing.assert_allclose(loaded(_ids(seq).numpy()), model(_ids(seq)).numpy(), rtol=1e-4, atol=1e-5)
    assert cli_main(["inspect", str(path), "-m", "exact"]) == 0
    assert "reglu" in capsys.readouterr().out


def test_module_objects_and_files_import_alike(exported):
    model, path = exported
    module = export_mlir(model, (_ids(6),))
    graph = import_model(module, ())  # a torch_mlir.ir.Module is a model form of its own
    assert str(graph) == str(import_mlir(path))
    assert {"gate.weight", "up.weight", "down.weight", "down.bias", "embed.weight", "head.weight"} == set(graph.weights)
    assert [str(i.type) for i in graph.inputs] == ["i64[1,seq]"] and graph.inputs[0].attrs["name"] == "ids"
    linear = next(n for n in graph.nodes if n.op == "linear")
    assert linear.loc.startswith("gate (test_frontend_mlir.py:")  # module path (source file:line)
    bytecode = path.with_suffix(".mlirbc")
    with open(bytecode, "wb") as f:
        module.operation.write_bytecode(f)
    assert str(import_mlir(bytecode)) == str(graph)


# --- bad input: one clear error each, nothing written --------------------------------------------------------
@pytest.mark.parametrize("where", ["ops", "weights"])
def test_truncated_file_is_one_clear_error(exported, tmp_path, capsys, where):
    text = exported[1].read_text()
    resources = text.rfind("{-#")
    path = tmp_path / "truncated.mlir"
    path.write_text(text[: text.find("torch.aten.linear")] if where == "ops" else text[: (resources + len(text)) // 2])
    with pytest.raises(MlirImportError, match=r"truncated.mlir: not a readable MLIR module \(truncated or "
                                              r"malformed\?\)" + (r" at line \d+, column \d+" if where == "ops" else
                                                                  r": its resource section \(from line \d+")):
        import_mlir(path)
    _assert_cli_fails_cleanly(path, tmp_path, capsys, "not a readable MLIR module")


def test_missing_weight_blobs_are_named(exported, tmp_path, capsys):
    text = exported[1].read_text()
    path = tmp_path / "no-resources.mlir"
    path.write_text(text[: text.rfind("{-#")])  # cut exactly before the resource section: it still parses
    with pytest.raises(MlirImportError, match="the weight blob '(embed|gate|up|down|head).weight' is missing from "
                                              "the module's dialect_resources section"):
        import_mlir(path)
    _assert_cli_fails_cleanly(path, tmp_path, capsys, "dialect_resources")


MODULE = """module {{
  func.func @main(%arg0: !torch.vtensor<[3,4],f32>) -> !torch.vtensor<[3,4],f32> {{
    %int1 = torch.constant.int 1
    %none = torch.constant.none
    %0 = torch.aten.relu %arg0 : !torch.vtensor<[3,4],f32> -> !torch.vtensor<[3,4],f32>
    {line}
    return %1 : !torch.vtensor<[3,4],f32>
  }}
}}
"""
CUMPROD = ("%1 = torch.aten.cumprod %0, %int1, %none : !torch.vtensor<[3,4],f32>, !torch.int, !torch.none "
          "-> !torch.vtensor<[3,4],f32>")


def test_malformed_text_names_line_and_column(tmp_path, capsys):
    path = tmp_path / "malformed.mlir"
    path.write_text(MODULE.format(line="%1 = torch.aten.neg %0 : !torch.vtensor<[3,4],f32> ->"))
    with pytest.raises(MlirImportError, match="malformed.mlir: not a readable MLIR module .* at line 6, column 58"):
        import_mlir(path)
    _assert_cli_fails_cleanly(path, tmp_path, capsys, "line 6, column 58")


def test_unsupported_op_names_the_op_and_its_mlir_location(tmp_path, capsys):
    path = tmp_path / "cumprod.mlir"
    path.write_text(MODULE.format(line=CUMPROD))
    with pytest.raises(UnsupportedOpError, match=r"unsupported operator torch\.aten\.cumprod in module `<unknown>` "
                                                 r"at \S*cumprod\.mlir:6:10: "):
        import_mlir(path)
    _assert_cli_fails_cleanly(path, tmp_path, capsys, "torch.aten.cumprod", "cumprod.mlir:6:10")
    # with Python locations (as torch-mlir prints them with debug info): the source line and the text position
    located = tmp_path / "located.mlir"
    located.write_text(MODULE.format(line=CUMPROD + ' loc(callsite("/src/model.py":12:0 at "/src/run.py":3:0))'))
    with pytest.raises(UnsupportedOpError, match=r"torch\.aten\.cumprod .*at /src/model\.py:12 .*located\.mlir:6:10,"
                                                 r" loc\(model\.py:12:0, run\.py:3:0\)"):
        import_mlir(located)


def test_a_module_lowered_past_the_torch_dialect_is_refused(tmp_path, capsys):
    from torch_mlir import fx

    module = fx.export_and_import(nn.Linear(4, 3), torch.zeros(2, 4), output_type="linalg-on-tensors")
    path = tmp_path / "linalg.mlir"
    path.write_text(str(module))
    with pytest.raises(MlirImportError, match=r"not a torch-dialect module: @main holds arith, linalg, tensor ops "
                                              r".*lowered past the torch dialect; export the torch dialect"):
        import_mlir(path)
    _assert_cli_fails_cleanly(path, tmp_path, capsys, "not a torch-dialect module")
    with pytest.raises(MlirImportError, match="not a torch-dialect module"):
        import_mlir(module)


def test_sizes_the_ir_cannot_express_and_bad_arguments_are_clear(tmp_path):
    class Doubled(nn.Module):  # concatenating along the sequence gives a `2*seq` dim
        def forward(self, ids):
            return torch.cat([ids, ids], dim=1) * 2

    with pytest.raises(FrontendError, match=r"the size `2\*seq` is a symbolic expression.*static shapes"):
        import_mlir(export_mlir(Doubled(), (_ids(5),)))
    static = import_mlir(export_mlir(Doubled(), (_ids(5),), dynamic_seq=False))
    np.testing.assert_array_equal(evaluate(static, [_ids(5).numpy()])[0], torch.cat([_ids(5)] * 2, 1).numpy() * 2)

    with pytest.raises(MlirImportError, match="no such MLIR file"):
        import_mlir(tmp_path / "missing.mlir")
    with pytest.raises(MlirImportError, match="expected a path to a .mlir file or a torch_mlir.ir.Module"):
        import_mlir(42)
    binary = tmp_path / "binary.mlir"
    binary.write_bytes(b"\x00\xff\xfe garbage")
    with pytest.raises(MlirImportError, match="not a readable MLIR module"):
        import_mlir(binary)
    assert issubclass(MlirImportError, FrontendError)
