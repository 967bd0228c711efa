"""Fuzzing the readers of untrusted input (tests/fuzz_targets.py) in a subprocess, a few seconds per target:
each must accept a mutated input or raise its one documented error — no other exception, crash or hang."""

import pytest

from actsparse.tests.bad_inputs import prebuilt
from actsparse.tests.fuzz_targets import TARGETS

from .helpers import child_results


@pytest.fixture(scope="module")
def fuzz_results():
    return child_results(["actsparse.tests.fuzz_targets", str(prebuilt())], "target", timeout=600)


@pytest.mark.parametrize("target", list(TARGETS))
def test_fuzz(target, fuzz_results):
    results, proc = fuzz_results
    assert target in results, (f"the fuzzing process died before {target} finished (exit {proc.returncode}, "
                               f"a crash or hang):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    assert results[target]["ok"], f"{results[target]['error']}\n{proc.stdout[-4000:]}"
