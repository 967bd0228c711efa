"""Shared test setup: hypothesis profiles, thread limits, GPU skips, and tests that must not skip in CI.

Profiles: `ci` (fast, derandomized, no deadline — CI machines are slow and shared) is the default;
`ACTSPARSE_HYPOTHESIS=thorough` runs many more examples.

Under CI=true (`.ci/run` installs the cross tools first, failing loudly) the ARM (qemu), CUDA-emulation and torch-mlir
tests must run: a skip of theirs is turned into a failure. On a developer machine they skip with the reason.

CI runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup`): tests are handed out one by one, except
that the tests of a module that use one of its module-scoped fixtures (a compiled model, an RPC tracker) stay on
one worker (`xdist_group` = the module), so that fixture is built once, not once per worker. The tests marked
`slow` (a minute or more: hybrids' exports, real models, CUDA builds) are handed out first, so that the run does not
end on one worker finishing a long test while the other waits.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=12, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("ACTSPARSE_HYPOTHESIS", "ci"))


import pytest  # noqa: E402


def _module_scoped(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return bool(info) and any(defs and defs[-1].scope in ("module", "package", "class")
                              for defs in info.name2fixturedefs.values())


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marks into the scheduler's groups
def pytest_collection_modifyitems(config, items):
    """The tests sharing a module-scoped fixture run on one xdist worker; `@pytest.mark.gpu` tests need a CUDA GPU:
    skip them, with the reason, where there is none."""
    for item in items:
        if hasattr(item, "module") and _module_scoped(item) and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow first, else as collected
    _skip_gpu_tests(items)


def _skip_gpu_tests(items) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    try:
        from actsparse.targets.cuda import gpu_device

        device = gpu_device()
    except Exception:  # TVM missing or broken: no GPU run either
        device = None
    if device is None:
        skip = pytest.mark.skip(reason="needs a CUDA GPU (none found by TVM's CUDA runtime)")
        for item in gpu_items:
            item.add_marker(skip)


# skip reasons of the tests CI must run (kernel_cases.require_cross_tools, simt_kernels, the torch-mlir tests)
REQUIRED_IN_CI = ("ARM tests need", "the CUDA emulator needs", "torch-mlir is not installed")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _forbidden_skip(report) -> str | None:
    if not (in_ci() and report.skipped) or not isinstance(report.longrepr, tuple):
        return None
    reason = str(report.longrepr[2])
    return reason if any(marker in reason for marker in REQUIRED_IN_CI) else None


def _fail(report, reason: str) -> None:
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, where this test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    reason = _forbidden_skip(report)
    if reason:
        _fail(report, reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    reason = _forbidden_skip(report)
    if reason:
        _fail(report, reason)
