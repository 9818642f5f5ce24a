"""The store's job-API side: idempotent submits, retry, deadlines, deletes, purges, lists."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from foreman.jobs import Job, JobState
from foreman.store import (
    MIGRATIONS,
    IdempotencyConflict,
    NotTerminal,
    SyncStore,
    connect,
)
from tests.pg.backends import BACKENDS, database, open_face, open_store, sqlite_only

from ._helpers import FakeClock, new_job


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> SyncStore:
    """The store on each backend; a SQLite-only test says `@sqlite_only`."""
    return open_store(request, request.param, tmp_path / "state", clock)


@pytest.fixture(params=BACKENDS)
def where(request: pytest.FixtureRequest, db_path: Path) -> Path | str:
    """Where an async store lives: SQLite's file, or a PostgreSQL database's URL."""
    return database(request, request.param, db_path)


def finish(store: SyncStore, job_id: str, state: JobState = JobState.DONE) -> None:
    store.transition(job_id, JobState.QUEUED, JobState.WORKING)
    if state is JobState.DONE:
        store.transition(job_id, JobState.WORKING, JobState.DONE)
    else:
        store.transition(job_id, JobState.WORKING, state, error="x")


# -- idempotency keys -------------------------------------------------------------------------


def test_submitting_a_key_again_with_the_same_request_returns_the_first_job(store, clock):
    first, created = store.submit(new_job(idempotency_key="k1", request_hash="h"))
    clock.advance(1)
    again, created_again = store.submit(new_job(idempotency_key="k1", request_hash="h"))

    assert created
    assert not created_again
    assert again == first
    assert store.count_queued() == 1


def test_submitting_a_key_again_with_another_request_is_a_conflict(store):
    first, _ = store.submit(new_job(idempotency_key="k1", request_hash="h1"))

    with pytest.raises(IdempotencyConflict) as caught:
        store.submit(new_job("other:latest", idempotency_key="k1", request_hash="h2"))

    assert caught.value.job == first
    assert store.count_queued() == 1
    assert not store.conn.in_transaction


def test_jobs_without_a_key_are_never_merged(store):
    a, created_a = store.submit(new_job())
    b, created_b = store.submit(new_job())
    assert created_a
    assert created_b
    assert a.id != b.id


def test_the_key_is_stored_with_the_job(store):
    job = store.enqueue(new_job(idempotency_key="k9", request_hash="h"))
    got = store.get(job.id)
    assert got is not None
    assert got.idempotency_key == "k9"


def test_the_same_key_from_two_api_keys_makes_two_jobs(store):
    # regression: keys were global, so another API key's reuse was refused (naming the
    # first key's job) and a key could squat predictable idempotency keys
    mine, created = store.submit(new_job(idempotency_key="k", request_hash="h1", key_name="a"))
    theirs, created_too = store.submit(
        new_job(idempotency_key="k", request_hash="h2", key_name="b")
    )

    assert created
    assert created_too
    assert mine.id != theirs.id
    assert store.submit(new_job(idempotency_key="k", request_hash="h2", key_name="b")) == (
        theirs,
        False,
    )
    with pytest.raises(IdempotencyConflict) as caught:
        store.submit(new_job(idempotency_key="k", request_hash="h3", key_name="b"))
    assert caught.value.job.id == theirs.id
    assert mine.id not in str(caught.value)


@sqlite_only
def test_jobs_made_without_api_keys_share_one_owner(store):
    first, _ = store.submit(new_job(idempotency_key="k", request_hash="h"))
    again, created = store.submit(new_job(idempotency_key="k", request_hash="h"))
    keyed, keyed_created = store.submit(
        new_job(idempotency_key="k", request_hash="h", key_name="a")
    )

    assert again == first
    assert not created
    assert keyed_created
    assert keyed.id != first.id
    with pytest.raises(sqlite3.IntegrityError):
        store.conn.execute(
            "INSERT INTO jobs (id, endpoint, model, model_key, body, stream, state,"
            " max_attempts, enqueued_at, created_at, idempotency_key)"
            " VALUES ('x', '/api/chat', 'm', 'm:latest', x'7b7d', 0, 'queued', 5, 1, 1, 'k')"
        )


@sqlite_only
def test_the_idempotency_lookup_is_one_seek_on_its_unique_index(store):
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    try:
        store.submit(new_job(idempotency_key="k", request_hash="h", key_name="a"))
    finally:
        store.conn.set_trace_callback(None)
    (lookup,) = [s for s in statements if s.startswith("SELECT") and "idempotency_key" in s]
    plan = store.conn.execute("EXPLAIN QUERY PLAN " + lookup).fetchall()
    assert len(plan) == 1, plan
    assert "USING INDEX jobs_idempotency" in plan[0][-1], plan


# -- retry ------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.CANCELLED])
def test_retry_sends_a_finished_job_to_the_back_of_the_queue_with_a_clean_slate(
    store, clock, state
):
    job = store.enqueue(new_job(deadline=clock.now + 5))
    finish(store, job.id, state)
    clock.advance(10)
    other = store.enqueue(new_job())
    clock.advance(1)

    again = store.retry(job.id)

    assert again is not None
    assert again.state is JobState.QUEUED
    assert again.attempts == 0
    assert again.enqueued_at == clock.now
    assert again.error is None
    assert again.result is None
    assert again.finished_at is None
    assert again.started_at is None
    assert again.queue_ms is None
    assert again.deadline is None
    claimed = store.claim(None, 600)
    assert claimed is not None
    assert claimed.id == other.id


def test_retry_of_a_job_that_is_not_failed_or_cancelled_does_nothing(store):
    queued = store.enqueue(new_job())
    done = store.enqueue(new_job())
    finish(store, done.id)
    before = store.get(done.id)

    assert store.retry(queued.id) is None
    assert store.retry(done.id) is None
    assert store.retry("nope") is None
    assert store.get(queued.id) == queued
    assert store.get(done.id) == before


# -- deadlines --------------------------------------------------------------------------------


def test_claim_fails_an_overdue_job_instead_of_starting_it(store, clock):
    late = store.enqueue(new_job("a:latest", priority=5, deadline=clock.now + 10))
    on_time = store.enqueue(new_job("b:latest", deadline=clock.now + 100))
    clock.advance(10.5)

    claimed, expired = store.claim_next(None, 600)

    assert claimed is not None
    assert claimed.id == on_time.id
    assert [j.id for j in expired] == [late.id]
    gone = store.get(late.id)
    assert gone is not None
    assert gone.state is JobState.FAILED
    assert gone.error is not None
    assert "deadline" in gone.error
    assert gone.finished_at == clock.now


def test_a_job_is_not_overdue_at_its_deadline(store, clock):
    job = store.enqueue(new_job(deadline=clock.now + 10))
    clock.advance(10)
    assert store.expire_overdue() == []
    claimed = store.claim(None, 600)
    assert claimed is not None
    assert claimed.id == job.id


def test_expire_overdue_fails_only_queued_jobs_past_their_deadline(store, clock):
    started = store.enqueue(new_job(deadline=clock.now + 1))
    waiting = store.enqueue(new_job(deadline=clock.now + 1))
    claimed = store.claim(None, 600)
    assert claimed is not None
    assert claimed.id == started.id
    clock.advance(5)

    expired = store.expire_overdue()

    assert [j.id for j in expired] == [waiting.id]
    assert [j.id for j in store.running()] == [started.id]


async def test_async_claim_reports_expired_jobs_to_the_listener(where, clock):
    changes: list[Job] = []
    store = await open_face(where, clock=clock, on_change=changes.append)
    late = await store.enqueue(new_job(deadline=clock.now + 1))
    clock.advance(2)

    assert await store.claim(None, 600) is None

    assert [(j.id, j.state) for j in changes] == [
        (late.id, JobState.QUEUED),
        (late.id, JobState.FAILED),
    ]
    await store.close()


# -- delete and purge -------------------------------------------------------------------------


def test_delete_removes_a_finished_job_only(store):
    done = store.enqueue(new_job())
    finish(store, done.id)
    queued = store.enqueue(new_job())

    assert store.delete(done.id) is True
    assert store.get(done.id) is None
    with pytest.raises(NotTerminal):
        store.delete(queued.id)
    assert store.get(queued.id) == queued
    assert store.delete("nope") is False


def test_purge_deletes_jobs_finished_before_the_cutoff_in_batches(store, clock):
    old = []
    for state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED) * 2:
        job = store.enqueue(new_job())
        finish(store, job.id, state)
        old.append(job.id)
    clock.advance(100)
    recent = store.enqueue(new_job())
    finish(store, recent.id)
    waiting = store.enqueue(new_job())

    assert store.purge(finished_before=clock.now - 50, batch=4) == len(old)

    assert all(store.get(i) is None for i in old)
    assert store.get(recent.id) is not None
    assert store.get(waiting.id) == waiting
    assert store.purge(finished_before=clock.now - 50, batch=4) == 0


# -- listing and counting ---------------------------------------------------------------------


def test_list_jobs_is_newest_first_with_filters_and_a_cursor(store, clock):
    ids = []
    for i, key in enumerate(["a:latest", 'a:latest {"num_ctx":8192}', "b:latest"] * 2):
        clock.advance(1)
        ids.append(store.enqueue(new_job(key, ref="r1" if i % 2 else None), job_id=f"j{i}").id)
    finish(store, "j0")

    assert [j.id for j in store.list_jobs()] == ids[::-1]
    assert [j.id for j in store.list_jobs(limit=2)] == ["j5", "j4"]
    assert [j.id for j in store.list_jobs(before="j4", limit=2)] == ["j3", "j2"]
    assert [j.id for j in store.list_jobs(state=JobState.DONE)] == ["j0"]
    # the model filter is the name, whatever runner options a job asked for
    assert [j.id for j in store.list_jobs(model_name="a:latest")] == ["j4", "j3", "j1", "j0"]
    assert [j.id for j in store.list_jobs(ref="r1")] == ["j5", "j3", "j1"]
    assert [j.id for j in store.list_jobs(ref="r1", model_name="b:latest")] == ["j5"]


def test_counts_by_state_counts_every_state_present(store):
    for _ in range(3):
        store.enqueue(new_job())
    done = store.enqueue(new_job())
    finish(store, done.id)
    assert store.counts_by_state() == {JobState.QUEUED: 3, JobState.DONE: 1}


# -- migration of existing rows ---------------------------------------------------------------


def test_migrating_fills_the_model_name_of_existing_jobs(db_path):
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.executescript(MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    conn.executemany(
        "INSERT INTO jobs (id, endpoint, model, model_key, body, stream, state, priority,"
        " attempts, max_attempts, not_before, enqueued_at, created_at)"
        " VALUES (?, '/api/chat', 'm', ?, x'7b7d', 1, 'queued', 0, 0, 5, 0, 1, 1)",
        [("j1", 'm:latest {"num_ctx":8192}'), ("j2", "host:5000/ns/m:v1")],
    )
    conn.close()

    conn = connect(db_path)
    try:
        names = dict(conn.execute("SELECT id, model_name FROM jobs").fetchall())
        store = SyncStore(conn)
        job = store.get("j1")
    finally:
        conn.close()

    assert names == {"j1": "m:latest", "j2": "host:5000/ns/m:v1"}
    assert job is not None
    assert job.model_key == 'm:latest {"num_ctx":8192}'


def test_migrating_scopes_existing_idempotency_keys_by_their_api_key(db_path):
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path, isolation_level=None)
    for number in range(4):
        conn.executescript(MIGRATIONS[number])
    conn.execute("PRAGMA user_version = 4")
    conn.executemany(
        "INSERT INTO jobs (id, endpoint, model, model_key, body, stream, state,"
        " max_attempts, enqueued_at, created_at, idempotency_key, request_hash, key_name)"
        " VALUES (?, '/api/chat', 'm', 'm:latest', x'7b7d', 0, 'queued', 5, 1, 1, ?, 'h', ?)",
        [("j1", "k", "a"), ("j2", "free", None)],
    )
    conn.close()

    conn = connect(db_path)
    try:
        store = SyncStore(conn)
        kept, created = store.submit(new_job(idempotency_key="k", request_hash="h", key_name="a"))
        other, other_created = store.submit(
            new_job(idempotency_key="k", request_hash="h", key_name="b")
        )
        unkeyed, unkeyed_created = store.submit(new_job(idempotency_key="free", request_hash="h"))
    finally:
        conn.close()

    assert (kept.id, created) == ("j1", False)
    assert other_created
    assert other.id != "j1"
    assert (unkeyed.id, unkeyed_created) == ("j2", False)
