"""Hypothesis profiles for the property suite, chosen by HYPOTHESIS_PROFILE.

`ci` (the default) keeps the whole suite quick on a small machine; `fuzz` (`make fuzz`)
runs twenty times the examples with no deadline, for hunting rare interleavings, and
lifts the per-test timeout, which a long fuzz run of the state machine would exceed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The profiles are registered in tests/conftest.py (they govern every hypothesis test).
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if PROFILE != "fuzz":
        return
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.timeout(0))
