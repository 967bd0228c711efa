"""Every row of the bad-input table (docs/BAD_INPUTS.md, generated from tests/bad_inputs.py) gets what it says.
Rows that could crash the process if their guard regressed run in one subprocess."""

from pathlib import Path

import pytest

from actsparse.tests.bad_inputs import CASES, Ctx, markdown, prebuilt

from .helpers import child_results

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def isolated_results():
    """Run the isolated cases in a child process; a crash there (SIGBUS, SIGSEGV) fails them, not pytest."""
    return child_results(["actsparse.tests.bad_inputs", "--run-isolated", str(prebuilt())], "name", timeout=300)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path, monkeypatch, request):
    monkeypatch.chdir(ROOT)  # cases may chdir; CLI specs (tests.factories:...) resolve from the repo root
    if case.isolated:
        results, proc = request.getfixturevalue("isolated_results")
        assert case.name in results, (f"the isolated run died before this case (exit {proc.returncode}):\n"
                                      f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        assert results[case.name]["ok"], results[case.name]["error"]
        return
    case.run(Ctx(tmp_path, prebuilt()))


def test_the_table_has_sixty_rows_and_the_doc_is_current():
    assert len(CASES) >= 60, len(CASES)
    doc = ROOT / "docs" / "BAD_INPUTS.md"
    assert doc.read_text() == markdown(), "regenerate: python -m actsparse.tests.bad_inputs > docs/BAD_INPUTS.md"


def test_input_limits_cover_every_indexing_op():
    """Token ids reaching embedding / index_select / gather / scatter are bounded by the indexed axis (ir/limits.py),
    and a symbolic dim slicing a static table by its length."""
    from actsparse.ir import parse_graph
    from actsparse.ir.limits import input_limits

    graph = parse_graph("""graph @main(%ids: i64[1,seq], %i: i64[2], %g: i64[3,2], %s: i64[3,2]) {
  @emb : f32[16,8]
  @pos : f32[6,8]
  %0 = embedding(@emb, %ids) : f32[1,seq,8]
  %1 = slice(@pos) {'axis': 0, 'end': 'seq', 'start': 0} : f32[seq,8]
  %2 = index_select(@pos, %i) {'axis': 0} : f32[2,8]
  %3 = reshape(%g) {'shape': (3, 2)} : i64[3,2]
  %4 = gather(@emb, %3) {'axis': 1} : f32[3,2]
  %5 = constant() {'value': 1.0} : f32[]
  %6 = scatter(@pos, %s, %5) {'axis': 0} : f32[6,8]
  return %0, %1, %2, %4, %6
}
""")
    limits = input_limits(graph)
    assert limits.index_bounds == {"ids": 16, "i": 6, "g": 8, "s": 6} and limits.dim_bounds == {"seq": 6}
