"""Settings for the whole suite: hypothesis profiles, and the throwaway PostgreSQL cluster
(tests/pg/cluster.py) for any test that asks for it.

`ci` (the default, and what `make test` runs) is derandomized: the same examples every
run, so CI never fails by chance and a failure reproduces. `fuzz` (`make fuzz`) explores
at random with many more examples; what it finds becomes a regression example.
"""

from __future__ import annotations

import os

from hypothesis import settings

pytest_plugins = ["tests.pg.cluster"]

settings.register_profile(
    "ci",
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    print_blob=True,
)
settings.register_profile(
    "fuzz",
    max_examples=2000,
    stateful_step_count=60,
    deadline=None,
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
