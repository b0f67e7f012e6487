"""Shared test configuration: Hypothesis profiles and fixtures.

Profiles (choose with the environment variable ``HYPOTHESIS_PROFILE``, default ``ci``):

- ``ci``: 25 examples per property, fast enough for every push;
- ``thorough``: 500 examples per property, for a release or after touching a rule.

Both print the reproduction blob of a failing example (``@reproduce_failure(...)``), and Hypothesis
prints the seed to rerun with ``--hypothesis-seed``; no deadline, because the first call of an
order builds its combinatorial tables (or compiles a kernel) and would trip it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    print_blob=True,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=500,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded random generator per test: tests stay reproducible and independent."""
    return np.random.default_rng(20240601)


@pytest.fixture
def at_most_two_threads():
    """Numba on at most two threads for the test: memory-limit tests whose limits were sized for a
    2-core machine (the numba kernels keep buffers per thread, so 16 threads need more memory, and
    the guard says so: ``test_a_chunk_size_too_large_for_the_workers_together_is_refused``)."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    yield
    numba.set_num_threads(before)
