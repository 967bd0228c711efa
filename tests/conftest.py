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
