"""Every row of the bad-input table (docs/BAD_INPUTS.md, generated from tests/bad_inputs.py) gets what it says.
Rows that could crash the process if their guard regressed run in one subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actsparse.tests.bad_inputs import CASES, Ctx, markdown, prebuilt

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def isolated_results():
    """Run the isolated cases in a child process; a crash there (SIGBUS, SIGSEGV) fails them, not pytest."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "actsparse.tests.bad_inputs", "--run-isolated", str(prebuilt())],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            results[entry["name"]] = entry
    return results, proc


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
