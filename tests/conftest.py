"""Shared test setup: hypothesis profiles and thread limits.

Profiles: `ci` (fast, derandomized, no deadline — CI machines are slow and shared) is the default;
`ACTSPARSE_HYPOTHESIS=thorough` runs many more examples.
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


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.gpu` tests need a CUDA GPU: skip them, with the reason, where there is none."""
    import pytest

    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    try:
        from actsparse.targets.cuda import _device

        device = _device()
    except Exception:  # TVM missing or broken: no GPU run either
        device = None
    if device is None:
        skip = pytest.mark.skip(reason="needs a CUDA GPU (none found by TVM's CUDA runtime)")
        for item in gpu_items:
            item.add_marker(skip)
