"""A job's end and the next claim in one transaction (`SyncStore.end_and_claim`), and the
swap's row in the same commit as the move that ends its load."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from foreman.jobs import Job, JobState
from foreman.policy import Lane, LoadCosts
from foreman.store import SyncStore
from tests.pg.backends import BACKENDS, open_store, sqlite_only

from ._helpers import FakeClock, new_job


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> SyncStore:
    """The store on each backend; a SQLite-only test says `@sqlite_only`."""
    return open_store(request, request.param, tmp_path / "state", clock)


LANE = Lane("only", 1, "m:latest")


def _running(store: SyncStore) -> str:
    """A job claimed (working on the lane's key); the id."""
    store.enqueue(new_job())
    job, _ = store.claim_on(LANE, [], 600.0, LoadCosts())
    assert job is not None
    assert job.state is JobState.WORKING
    return job.id


def _get(store: SyncStore, job_id: str) -> Job:
    job = store.get(job_id)
    assert job is not None
    return job


def _path(store: SyncStore) -> Path:
    assert store.path is not None
    return store.path


def _end(store: SyncStore, job_id: str) -> Any:
    return store.end_and_claim(
        job_id, JobState.WORKING, JobState.DONE, {"result": {"r": 1}}, LANE, [], 600.0, LoadCosts()
    )


@sqlite_only
def test_the_end_and_the_next_claim_commit_together(store: SyncStore, clock: FakeClock) -> None:
    first = _running(store)
    second = store.enqueue(new_job())
    clock.advance(2.0)

    ended = _end(store, first)

    assert ended.moved is not None
    assert ended.moved.state is JobState.DONE
    assert ended.moved.result == {"r": 1} == _get(store, first).result
    assert ended.moved.finished_at == clock.now
    assert ended.claimed is not None
    assert ended.claimed.id == second.id
    assert ended.claimed.state is JobState.WORKING
    assert ended.claimed.attempts == 1
    assert ended.looked
    assert ended.claim_error is None
    assert not store.conn.in_transaction
    # another connection sees both: they were committed
    other = sqlite3.connect(_path(store))
    states = dict(other.execute("SELECT id, state FROM jobs").fetchall())
    other.close()
    assert states == {first: "done", second.id: "working"}


def test_with_nothing_to_claim_it_says_when_the_next_retry_is_due(
    store: SyncStore, clock: FakeClock
) -> None:
    first = _running(store)
    backoff = store.enqueue(new_job())
    # waiting out a retry's backoff
    store.conn.execute("UPDATE jobs SET not_before = ? WHERE id = ?", (clock.now + 5, backoff.id))

    ended = _end(store, first)

    assert ended.claimed is None
    assert ended.looked
    assert ended.retry_at == clock.now + 5


@sqlite_only
def test_a_claim_that_fails_is_undone_and_the_end_still_commits(
    store: SyncStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim runs in a savepoint after the end: its failure (here after it has
    already started the next job) undoes only the claim's own writes."""
    first = _running(store)
    waiting = store.enqueue(new_job())
    real_start = store._start

    def start_then_break(*args: Any) -> Any:
        real_start(*args)
        raise sqlite3.IntegrityError("a row the driver refuses")

    monkeypatch.setattr(store, "_start", start_then_break)

    ended = _end(store, first)

    assert ended.moved is not None
    assert ended.moved.state is JobState.DONE
    assert ended.claimed is None
    assert not ended.looked
    assert ended.claim_error is not None
    assert "refuses" in ended.claim_error
    assert not store.conn.in_transaction
    other = sqlite3.connect(_path(store))
    rows = dict(other.execute("SELECT id, state || '/' || attempts FROM jobs").fetchall())
    other.close()
    assert rows == {first: "done/1", waiting.id: "queued/0"}


def test_a_job_that_left_its_state_is_not_ended_and_the_claim_still_runs(
    store: SyncStore,
) -> None:
    first = _running(store)
    store.transition(first, JobState.WORKING, JobState.CANCELLED)
    second = store.enqueue(new_job())

    ended = _end(store, first)

    assert ended.moved is None
    assert _get(store, first).state is JobState.CANCELLED
    assert ended.claimed is not None
    assert ended.claimed.id == second.id


def test_only_an_end_may_be_written_with_a_claim(store: SyncStore) -> None:
    first = _running(store)
    with pytest.raises(ValueError, match="not an end"):
        store.end_and_claim(
            first, JobState.WORKING, JobState.QUEUED, {}, LANE, [], 600.0, LoadCosts()
        )
    assert _get(store, first).state is JobState.WORKING


@sqlite_only
def test_the_swap_row_and_the_end_of_the_load_are_one_commit(store: SyncStore) -> None:
    """A swap that cannot be recorded leaves the job loading: the move and its row are
    one transaction, not two commits."""
    store.enqueue(new_job())
    job, _ = store.claim_on(Lane("only", 1, None), [], 600.0, LoadCosts())
    assert job is not None
    assert job.state is JobState.LOADING
    store.conn.execute(
        "CREATE TEMP TRIGGER no_swaps BEFORE INSERT ON swaps BEGIN SELECT RAISE(ABORT, 'no'); END"
    )

    with pytest.raises(sqlite3.IntegrityError):
        store.transition(job.id, JobState.LOADING, JobState.WORKING, loaded=True)

    assert not store.conn.in_transaction
    assert _get(store, job.id).state is JobState.LOADING
