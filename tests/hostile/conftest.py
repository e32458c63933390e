"""Hypothesis profiles for the hostile-input tests: ``ci`` (the default) and ``long``.

``ci`` is deterministic (``derandomize``, no example database) and sized so that the whole
of ``tests/hostile`` stays well under 40 s in ``make test``; ``HYPOTHESIS_PROFILE=long``
runs :data:`tests.hostile.strategies.LONG_FACTOR` times more examples per test, randomly,
for a soak by hand. The profiles are only registered here, not loaded: each test takes its
settings from :func:`tests.hostile.strategies.examples`, so other hypothesis tests in the
suite keep their own defaults.
"""

from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile("ci", derandomize=True, database=None, deadline=None, suppress_health_check=_QUIET)
settings.register_profile("long", derandomize=False, database=None, deadline=None, suppress_health_check=_QUIET)
