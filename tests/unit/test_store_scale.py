"""The claim's cost does not grow with the queue.

Counted in SQLite virtual-machine steps (a progress handler called on every step), not
in time: a statement that walks the queued rows takes steps in proportion to them, one
that seeks an index takes a handful, whatever the machine's speed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from foreman.store import SyncStore, connect

from ._helpers import FakeClock

NOW = 1_000_000.0


def _store(path: Path, queued: int) -> SyncStore:
    conn = connect(path)
    rows = [
        (f"{i:026d}", f"m{i % 4}:latest", "queued" if i % 3 else "done", i % 2, NOW - queued + i)
        for i in range(queued * 3 // 2)
    ]
    with conn:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO jobs (id, endpoint, model, model_key, body, stream, state, priority,"
            " attempts, max_attempts, not_before, enqueued_at, created_at)"
            " VALUES (?1, '/api/chat', 'm', ?2, x'7b7d', 1, ?3, ?4, 0, 5, 0, ?5, ?5)",
            rows,
        )
    return SyncStore(conn, clock=FakeClock(NOW))


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SyncStore, SyncStore]]:
    small = _store(tmp_path_factory.mktemp("small") / "foreman.db", 300)
    big = _store(tmp_path_factory.mktemp("big") / "foreman.db", 30_000)
    yield small, big
    small.conn.close()
    big.conn.close()


def _steps(store: SyncStore, action: Callable[[], object]) -> int:
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    store.conn.set_progress_handler(tick, 1)
    try:
        action()
    finally:
        store.conn.set_progress_handler(None, 1)
    return count


@pytest.mark.parametrize(
    ("resident", "max_wait"),
    [
        ("m1:latest", 1e9),  # nothing starved, the resident model has work
        ("zz:latest", 1e9),  # nothing starved, a swap
        ("m1:latest", 10.0),  # the starvation bound applies
    ],
)
def test_pick_does_the_same_work_with_a_hundred_times_more_queued_jobs(
    stores: tuple[SyncStore, SyncStore], resident: str, max_wait: float
) -> None:
    # regression: min(enqueued_at) and max(priority) were answered from jobs_by_state,
    # walking every queued row on each claim (about 50 ms per claim at 100k queued)
    small, big = stores
    few = _steps(small, lambda: small.pick(resident, NOW, max_wait))
    many = _steps(big, lambda: big.pick(resident, NOW, max_wait))
    assert big.pick(resident, NOW, max_wait) is not None
    assert many <= 2 * few + 50, (few, many)
