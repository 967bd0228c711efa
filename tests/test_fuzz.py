"""Fuzzing the readers of untrusted input (tests/fuzz_targets.py) in a subprocess, a few seconds per target:
each must accept a mutated input or raise its one documented error — no other exception, crash or hang."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actsparse.tests.bad_inputs import prebuilt
from actsparse.tests.fuzz_targets import TARGETS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fuzz_results():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "actsparse.tests.fuzz_targets", str(prebuilt())],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            results[entry["target"]] = entry
    return results, proc


@pytest.mark.parametrize("target", list(TARGETS))
def test_fuzz(target, fuzz_results):
    results, proc = fuzz_results
    assert target in results, (f"the fuzzing process died before {target} finished (exit {proc.returncode}, "
                               f"a crash or hang):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    assert results[target]["ok"], f"{results[target]['error']}\n{proc.stdout[-4000:]}"
