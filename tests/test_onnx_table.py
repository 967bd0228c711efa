"""The generated ONNX coverage table (scripts/onnx_table.py) is current: one row per run, rotating by the date.

The full enumeration — every importing architecture, both exporters, opsets 14–21 — takes minutes per
architecture and is the script's job (`python -m actsparse.scripts.onnx_table --write`). This test re-derives one
row with the TorchScript exporter only: its opsets must equal the row's, the ops our frontend lacks must be among
the row's, and where the row's import used the TorchScript export, the import must match torch again.
ACTSPARSE_ONNX_ARCH=llama checks the named one instead.

Most rows take about 10 s; a few take minutes (eight traces of an architecture that unrolls loops, such as HRM's
reasoning cycles or AFMoE's experts: the IR interpreter then runs thousands of nodes). The rotation therefore runs
over the rows whose recorded cost (tests/onnx_row_cost.json: the node count and seconds of one TorchScript export,
`python tests/onnx_row_cost.py` records them) is within the budget below; the expensive few are the script's to
check, and the rotation must keep covering most rows.
"""

from __future__ import annotations

import datetime
import os

import pytest

pytest.importorskip("onnx")
pytest.importorskip("transformers")

from actsparse.scripts.arch_table import readme_path  # noqa: E402
from actsparse.scripts.onnx_table import OnnxResult, check_onnx, lacking, onnx_rows, op_types  # noqa: E402

from .onnx_row_cost import recorded  # noqa: E402

# one TorchScript export of a row in the rotation: at most this many ONNX nodes and seconds (as recorded, under load)
NODE_BUDGET, SECONDS_BUDGET = 1500, 8.0


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


def _rotation(rows: dict) -> tuple[list[str], list[str]]:
    """(the rows the test rotates over, the run rows left to the script: too expensive, or no cost recorded)."""
    costs = recorded()
    run = sorted(a for a, r in rows.items() if _cells(r)[1] != "not run")
    cheap = [a for a in run if a in costs and (costs[a]["nodes"] or 0) <= NODE_BUDGET
             and costs[a]["seconds"] <= SECONDS_BUDGET]
    return cheap, [a for a in run if a not in cheap]


def _todays_row(rows: dict) -> str:
    named = os.environ.get("ACTSPARSE_ONNX_ARCH")
    if named:
        return named
    cheap, _ = _rotation(rows)
    return cheap[datetime.date.today().toordinal() % len(cheap)]


def test_the_rotation_covers_most_rows():
    """The cost bound leaves out only a few expensive rows: not the rows nobody recorded a cost for."""
    rows = onnx_rows(readme_path().read_text())
    if not rows:
        pytest.skip("no ONNX table in README.md yet: run python -m actsparse.scripts.onnx_table --write")
    cheap, left = _rotation(rows)
    unrecorded = [a for a in left if a not in recorded()]
    assert len(cheap) >= 0.85 * (len(cheap) + len(left)), (
        f"the rotation leaves out {len(left)} of {len(cheap) + len(left)} rows: expensive "
        f"{[a for a in left if a not in unrecorded]}, no recorded cost {unrecorded} (python tests/onnx_row_cost.py)")


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
