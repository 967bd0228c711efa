"""The generated ONNX coverage table (scripts/onnx_table.py) is current: one row per run, rotating by the date.

The full enumeration — every importing architecture, both exporters, opsets 14–21 — takes minutes per
architecture and is the script's job (`python -m actsparse.scripts.onnx_table --write`). This test re-derives one
row with the TorchScript exporter only (about 10 s): its opsets must equal the row's, the ops our frontend lacks
must be among the row's, and where the row's import used the TorchScript export, the import must match torch
again. ACTSPARSE_ONNX_ARCH=llama checks the named one instead.
"""

from __future__ import annotations

import datetime
import os

import pytest

pytest.importorskip("onnx")
pytest.importorskip("transformers")

from actsparse.scripts.arch_table import readme_path  # noqa: E402
from actsparse.scripts.onnx_table import OnnxResult, check_onnx, lacking, onnx_rows, op_types  # noqa: E402


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.split("|")[1:-1]]


def test_op_types_walks_subgraphs_and_lacking_names_what_the_frontend_has_not():
    from onnx import TensorProto, helper

    then = helper.make_graph([helper.make_node("Erf", ["x"], ["y"])], "then", [],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=then),
         helper.make_node("HardSwish", ["z"], ["w"]), helper.make_node("Custom", ["w"], ["v"], domain="my")],
        "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1])])
    ops = op_types(helper.make_model(graph))
    assert ops == {"If", "Erf", "HardSwish", "my::Custom"}
    assert lacking(ops) == {"If", "HardSwish", "my::Custom"}  # Erf is mapped


def test_row_format_and_not_run():
    row = OnnxResult("x", {"torchscript": [14, 15, 16, 17, 18, 19, 20, 21]}, {"Foo"}, "no", "why").row()
    assert _cells(row) == ["x", "14–21", "not run", "Foo", "no", "why"]


def _todays_row(rows: dict) -> str:
    named = os.environ.get("ACTSPARSE_ONNX_ARCH")
    if named:
        return named
    run = sorted(a for a, r in rows.items() if _cells(r)[1] != "not run")
    return run[datetime.date.today().toordinal() % len(run)]


def test_one_row_is_current():
    rows = onnx_rows(readme_path().read_text())
    if not rows:
        pytest.skip("no ONNX table in README.md yet: run python -m actsparse.scripts.onnx_table --write")
    arch = _todays_row(rows)
    want = _cells(rows[arch])
    got = _cells(check_onnx(arch, exporters=("torchscript",)).row())
    assert got[1] == want[1], f"{arch}: TorchScript opsets {got[1]} vs the README's {want[1]}"
    lacks = {op for op in got[3].split(", ") if op != "–"}
    assert lacks <= set(want[3].split(", ")), f"{arch}: the frontend lacks {lacks}, the README says {want[3]}"
    if "torchscript" in want[4]:
        assert got[4] == want[4], f"{arch}: our import of the TorchScript export: {got[4]} vs the README's {want[4]}"
