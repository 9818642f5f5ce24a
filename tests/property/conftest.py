"""Hypothesis profiles for the property suite, chosen by HYPOTHESIS_PROFILE.

`ci` (the default) keeps the whole suite quick on a small machine; `fuzz` (`make fuzz`)
runs twenty times the examples with no deadline, for hunting rare interleavings, and
lifts the per-test timeout, which a long fuzz run of the state machine would exceed.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile(
    "ci",
    max_examples=100,
    stateful_step_count=30,
    deadline=timedelta(seconds=2),
    print_blob=True,
)
settings.register_profile(
    "fuzz",
    max_examples=2000,
    stateful_step_count=60,
    deadline=None,
    print_blob=True,
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if PROFILE != "fuzz":
        return
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.timeout(0))
