"""How many round trips to PostgreSQL the worker's hot path makes: a claim, the load it may
start, the job's end, and `end_and_claim`. Each is a wait on the server over the socket, so
they are what a claim's latency is made of; the counts are pinned here so that they cannot
grow back unnoticed. A round trip is one statement sent alone, or one pipeline (statements
sent together, their results read after one sync)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from foreman.jobs import Job, JobState
from foreman.policy import Lane, LoadCosts
from foreman.store.pg import PgSyncStore, pg_connect
from tests.unit._helpers import FakeClock, new_job

KEYS = ("a:latest", "b:latest", "c:latest", "d:latest")
NO_COSTS = LoadCosts({}, {})


class RoundTrips:
    """Records what a store sends to the server: `trips` holds one list of statements per
    round trip."""

    def __init__(self, store: PgSyncStore):
        self.trips: list[list[str]] = []
        raw = store.pg.raw
        execute, pipeline = raw.execute, raw.pipeline
        batch: list[list[str]] = []

        def recorded(query: Any, params: Any = None, **options: Any) -> Any:
            if batch:
                batch[0].append(str(query))
            else:
                self.trips.append([str(query)])
            return execute(query, params, **options)

        @contextmanager
        def pipelined() -> Iterator[Any]:
            assert not batch, "a pipeline inside a pipeline"
            batch.append([])
            try:
                with pipeline() as p:
                    yield p
            finally:
                self.trips.append(batch.pop())

        raw.execute = recorded  # type: ignore[method-assign]
        raw.pipeline = pipelined  # type: ignore[method-assign]

    @contextmanager
    def counting(self) -> Iterator[list[list[str]]]:
        """The round trips made inside the block."""
        self.trips.clear()
        yield self.trips

    def describe(self) -> str:
        return "\n".join(" | ".join(s[:70] for s in trip) for trip in self.trips)


@pytest.fixture
def store(postgres_url: str) -> Iterator[PgSyncStore]:
    conn = pg_connect(postgres_url)
    yield PgSyncStore(conn, clock=FakeClock())
    conn.close()


def _fill(store: PgSyncStore, priorities: int = 3) -> None:
    """Three jobs of each of four keys, at `priorities` levels, oldest first."""
    for i in range(12):
        store.enqueue(new_job(KEYS[i % 4], priority=(i % priorities) - priorities // 2))
        store.clock.advance(0.01)  # type: ignore[attr-defined]


def _claim_load_end(store: PgSyncStore, resident: str | None, max_wait: float) -> Job:
    """A claim on an idle lane holding `resident`, the load it may start, and the end."""
    claimed, _ = store.claim_on(Lane("gpu", 1, resident), (), max_wait, NO_COSTS)
    assert claimed is not None
    if claimed.state is JobState.LOADING:
        loaded = store.transition(claimed.id, JobState.LOADING, JobState.WORKING, loaded=True)
        assert loaded is not None
        claimed = loaded
    ended = store.transition(claimed.id, JobState.WORKING, JobState.DONE, result={"r": 1})
    assert ended is not None
    return claimed


def test_a_claim_of_a_starved_job_its_load_and_its_end(store: PgSyncStore) -> None:
    """Every key has a job past the starvation bound: each key is looked at (the case
    the replicas' benchmark measures)."""
    _fill(store)
    store.clock.advance(1000)  # type: ignore[attr-defined]
    trips = RoundTrips(store)
    with trips.counting() as made:
        claimed = _claim_load_end(store, "b:latest", 600.0)
    assert claimed.model_key == "c:latest"  # the oldest job of the top priority
    assert claimed.state is JobState.WORKING  # after its load
    assert len(made) == 9, trips.describe()


def test_a_claim_of_the_resident_keys_next_job_and_its_end(store: PgSyncStore) -> None:
    """Drain by model: the lane's own key has work at the top priority (no load)."""
    _fill(store, priorities=1)
    trips = RoundTrips(store)
    with trips.counting() as made:
        claimed = _claim_load_end(store, "a:latest", 600.0)
    assert claimed.model_key == "a:latest"
    assert claimed.state is JobState.WORKING
    assert len(made) == 4, trips.describe()


def test_an_end_and_the_next_claim_in_one_transaction(store: PgSyncStore) -> None:
    _fill(store, priorities=1)
    first, _ = store.claim_on(Lane("gpu", 1, "c:latest"), (), 600.0, NO_COSTS)
    assert first is not None
    assert first.state is JobState.WORKING
    trips = RoundTrips(store)
    with trips.counting() as made:
        ended = store.end_and_claim(
            first.id,
            JobState.WORKING,
            JobState.DONE,
            {"result": {"r": 1}},
            Lane("gpu", 1, "c:latest", 0),
            (),
            600.0,
            NO_COSTS,
        )
    assert ended.moved is not None
    assert ended.moved.state is JobState.DONE
    assert ended.claimed is not None
    assert ended.claimed.model_key == "c:latest"
    assert len(made) == 5, trips.describe()
