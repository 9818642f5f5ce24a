"""Fixtures for unit tests: a real SQLite file per test, with a clock the test moves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio.testing

from foreman.store import SyncStore, connect

from ._helpers import FakeClock
from ._worker_harness import rig_clock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "foreman.db"


@pytest.fixture
def store(db_path: Path, clock: FakeClock) -> Iterator[SyncStore]:
    conn = connect(db_path)
    yield SyncStore(conn, clock=clock)
    conn.close()


@pytest.fixture
def virtual_clock(monkeypatch: pytest.MonkeyPatch) -> trio.testing.MockClock:
    """The worker tier's clock (see `_worker_harness.rig_clock`)."""
    return rig_clock(monkeypatch)
