"""Group commit of concurrent submissions, and which commits wait for the disk."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.jobs import Job, JobState
from foreman.store import IdempotencyConflict, Store, SyncStore, connect
from tests.pg.backends import BACKENDS, clear, open_store, sqlite_only

from ._helpers import FakeClock, new_job


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    changes: list[Job] = []
    store = Store(open_store(request, request.param, tmp_path, FakeClock()), changes.append)
    store.changes = changes  # type: ignore[attr-defined]
    yield store
    await store.close()


def _record_batches(store: Store) -> list[int]:
    sizes: list[int] = []
    submit_many = store.sync.submit_many

    def recording(batch: Any) -> Any:
        sizes.append(len(batch))
        return submit_many(batch)

    store.sync.submit_many = recording  # type: ignore[method-assign]
    return sizes


class Busy:
    """Keeps the store's one connection busy (a read blocked on its thread) until let go."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.go = threading.Event()
        self.started = trio.Event()

    async def run(self) -> None:
        get = self.store.sync.get

        def blocked(job_id: str) -> Job | None:
            self.go.wait(30)
            return get(job_id)

        self.store.sync.get = blocked  # type: ignore[method-assign]
        try:
            await self.store.get("nothing")
        finally:
            self.store.sync.get = get  # type: ignore[method-assign]


async def _submit_all(store: Store, submit: Callable[[int], Any], count: int) -> list[Any]:
    """Start `count` submissions while the store is busy, then let them through."""
    busy = Busy(store)
    out: list[Any] = [None] * count

    async def one(i: int) -> None:
        try:
            out[i] = await submit(i)
        except Exception as exc:
            out[i] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(busy.run)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(count):
            nursery.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()  # so they queue up in order
        busy.go.set()
    return out


async def test_submissions_that_wait_together_are_committed_in_one_transaction(store) -> None:
    sizes = _record_batches(store)
    results = await _submit_all(store, lambda i: store.submit(new_job(f"m{i % 3}:latest")), 20)

    assert sizes == [20]
    jobs = [job for job, created in results if created]
    assert len({job.id for job in jobs}) == 20
    assert all(job.state is JobState.QUEUED for job in jobs)
    assert [job.id for job in store.changes] == [job.id for job in jobs]
    for job in jobs:
        assert await store.get(job.id) == job


async def test_a_lone_submission_commits_at_once_and_the_next_one_after_it(store) -> None:
    sizes = _record_batches(store)
    first, _ = await store.submit(new_job())
    second, _ = await store.submit(new_job())
    assert sizes == [1, 1]
    assert first.id != second.id


async def test_an_idempotency_conflict_in_a_batch_answers_only_its_own_caller(store) -> None:
    sizes = _record_batches(store)

    def submit(i: int) -> Any:
        if i < 2:
            # same key, different requests: the second conflicts with the first
            return store.submit(new_job(idempotency_key="k", request_hash=f"h{i}"))
        if i == 2:
            # same key, same request: the job the first made, not created again
            return store.submit(new_job(idempotency_key="k", request_hash="h0"))
        return store.submit(new_job())

    results = await _submit_all(store, submit, 5)

    assert sizes == [5]
    made, created = results[0]
    assert created
    assert isinstance(results[1], IdempotencyConflict)
    assert results[1].job.id == made.id
    assert results[2] == (made, False)
    assert all(r[1] for r in results[3:])
    assert len(store.changes) == 3  # only created jobs are announced


async def test_a_submission_the_database_rejects_fails_alone(store) -> None:
    sizes = _record_batches(store)

    def submit(i: int) -> Any:
        # NOT NULL on model: the batch's transaction fails, each is tried on its own
        return store.submit(new_job(model=None) if i == 1 else new_job())

    results = await _submit_all(store, submit, 4)

    assert sizes == [4]
    assert isinstance(results[1], Exception)
    assert not isinstance(results[1], tuple)
    made = [r[0] for i, r in enumerate(results) if i != 1]
    for job in made:
        assert await store.get(job.id) == job


@sqlite_only
async def test_a_row_the_driver_cannot_bind_fails_alone_inside_the_one_transaction(
    store,
) -> None:
    # regression: a model name holding a lone surrogate (UnicodeEncodeError, not an
    # sqlite3.Error) failed the whole batch: every neighbour got the error, none stored
    sizes = _record_batches(store)
    bad = {3: new_job(model="\ud800"), 7: new_job(priority=2**70), 11: new_job(ref="x\udfff")}

    results = await _submit_all(store, lambda i: store.submit(bad.get(i, new_job())), 14)

    assert sizes == [14]
    assert isinstance(results[3], UnicodeEncodeError)
    assert isinstance(results[7], OverflowError)
    assert isinstance(results[11], UnicodeEncodeError)
    made = [r[0] for i, r in enumerate(results) if i not in bad]
    assert all(isinstance(r, tuple) and r[1] for i, r in enumerate(results) if i not in bad)
    for job in made:
        assert await store.get(job.id) == job
    assert len(await store.list_jobs()) == 11
    assert [job.id for job in store.changes] == [job.id for job in made]


def test_a_failing_submission_undoes_only_its_own_work(sync_store: SyncStore) -> None:
    """Savepoints, not a retry of each alone: one BEGIN and one COMMIT for the batch, and a
    failure after the insert (a conflicting id) leaves its neighbours' rows in place."""
    taken = sync_store.enqueue(new_job())
    statements: list[str] = []
    sync_store.conn.set_trace_callback(statements.append)
    try:
        answers = sync_store.submit_many(
            [(new_job(ref="a"), None), (new_job(ref="dup"), taken.id), (new_job(ref="b"), None)]
        )
    finally:
        sync_store.conn.set_trace_callback(None)

    assert isinstance(answers[1], sqlite3.IntegrityError)
    assert [a[0].ref for a in answers if isinstance(a, tuple)] == ["a", "b"]
    assert sorted(j.ref or "" for j in sync_store.list_jobs()) == ["", "a", "b"]
    words = [s.split()[0].upper() for s in statements]
    assert words.count("BEGIN") == 1
    assert words.count("COMMIT") == 1


async def test_a_caller_cancelled_while_its_batch_waits_still_gets_its_job_committed(
    store,
) -> None:
    busy = Busy(store)
    submitted: list[Job] = []

    async def submit(scope_out: list[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            scope_out.append(scope)
            job, _ = await store.submit(new_job(ref="cancelled"))
            submitted.append(job)

    scopes: list[trio.CancelScope] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(busy.run)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(store.submit, new_job())  # leads, waits for the connection
        nursery.start_soon(submit, scopes)  # follows, then its caller gives up
        await trio.testing.wait_all_tasks_blocked()
        scopes[0].cancel()
        await trio.testing.wait_all_tasks_blocked()
        busy.go.set()

    # shielded like every write: the submission completed and returned to its caller
    (job,) = submitted
    assert (await store.get(job.id)) == job
    assert len(await store.list_jobs()) == 2


# -- which commits wait for the disk ----------------------------------------------------------


@pytest.fixture
def sync_store(tmp_path: Path) -> Iterator[SyncStore]:
    conn = connect(tmp_path / "foreman.db")
    yield SyncStore(conn, FakeClock())
    conn.close()


def _commit_levels(store: SyncStore, action: Callable[[], object]) -> list[str]:
    """The synchronous level in force at each COMMIT `action` makes."""
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    try:
        action()
    finally:
        store.conn.set_trace_callback(None)
    level = "FULL"
    levels = []
    in_transaction = False
    for sql in statements:
        words = sql.upper().split()
        if words[:2] == ["PRAGMA", "SYNCHRONOUS"]:
            level = {"1": "NORMAL", "2": "FULL"}.get(words[-1], words[-1])
        elif words[:1] == ["BEGIN"]:
            in_transaction = True
        elif words[:1] in (["COMMIT"], ["ROLLBACK"]):
            in_transaction = False
            levels.append(level)
        elif words[:1] in (["INSERT"], ["UPDATE"], ["DELETE"]) and not in_transaction:
            levels.append(level)  # a statement in autocommit is its own commit
    return levels


def test_what_someone_is_told_is_synced_and_the_workers_own_moves_are_not(
    sync_store: SyncStore,
) -> None:
    s = sync_store
    assert _commit_levels(s, lambda: s.submit(new_job("a:latest"))) == ["FULL"]
    job = s.get(s.list_jobs()[0].id)
    assert job is not None
    claimed: list[Job | None] = []
    assert _commit_levels(s, lambda: claimed.append(s.claim(None, 600))) == ["NORMAL"]
    assert claimed[0] is not None
    assert claimed[0].state is JobState.LOADING
    moves = [
        (JobState.LOADING, JobState.WORKING, "NORMAL"),
        (JobState.WORKING, JobState.QUEUED, "NORMAL"),  # a transient failure
    ]
    for old, new, level in moves:
        assert _commit_levels(s, partial(s.transition, job.id, old, new)) == [level]
    s.claim(None, 600)
    s.transition(job.id, JobState.LOADING, JobState.WORKING)
    assert _commit_levels(
        s, lambda: s.transition(job.id, JobState.WORKING, JobState.DONE, result={})
    ) == ["FULL"]
    other = s.enqueue(new_job("b:latest"))
    cancel = lambda: s.transition(other.id, JobState.QUEUED, JobState.CANCELLED)  # noqa: E731
    assert _commit_levels(s, cancel) == ["FULL"]
    assert _commit_levels(s, lambda: s.retry(other.id)) == ["FULL"]
    # and the connection is back at FULL afterwards
    assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 2


_KINDS = {
    "good": lambda: new_job(),
    "lone surrogate": lambda: new_job(model="m\udc00"),
    "too large": lambda: new_job(priority=-(2**64)),
    "no model": lambda: new_job(model=None),
    "same key": lambda: new_job(idempotency_key="k", request_hash="h"),
    "key clash": lambda: new_job(idempotency_key="k", request_hash="other"),
}


@pytest.fixture(scope="module", params=BACKENDS)
def empty_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[], AbstractContextManager[SyncStore]]:
    """An empty store for each example: a new SQLite file, or on PostgreSQL the module's
    one database, emptied (a database for each example would cost a second each)."""
    if request.param == "sqlite":
        return _new_sqlite_store
    shared = open_store(request, request.param, tmp_path_factory.mktemp("batches"), FakeClock())

    @contextmanager
    def emptied() -> Iterator[SyncStore]:
        clear(shared)
        yield shared

    return emptied


@contextmanager
def _new_sqlite_store() -> Iterator[SyncStore]:
    with tempfile.TemporaryDirectory() as folder:
        conn = connect(Path(folder) / "foreman.db")
        try:
            yield SyncStore(conn, FakeClock())
        finally:
            conn.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(sorted(_KINDS)), min_size=1, max_size=12))
def test_in_any_batch_exactly_the_good_submissions_are_stored(
    empty_store: Callable[[], AbstractContextManager[SyncStore]], kinds: list[str]
) -> None:
    with empty_store() as store:
        answers = store.submit_many([(_KINDS[kind](), None) for kind in kinds])
        stored = {job.id for job in store.list_jobs(limit=100)}

    for kind, answer in zip(kinds, answers, strict=True):
        if kind == "good":
            assert isinstance(answer, tuple), answer
            assert answer[1], answer
        elif kind in ("lone surrogate", "too large", "no model"):
            assert isinstance(answer, Exception), answer
    keyed = [i for i, kind in enumerate(kinds) if kind in ("same key", "key clash")]
    if keyed:
        first = answers[keyed[0]]
        assert isinstance(first, tuple)
        assert first[1]
        for i in keyed[1:]:
            if kinds[i] == kinds[keyed[0]]:
                assert answers[i] == (first[0], False)  # the first job, again
            else:
                assert isinstance(answers[i], IdempotencyConflict)
    made = {answer[0].id for answer in answers if isinstance(answer, tuple)}
    assert made == stored
    assert len(stored) == kinds.count("good") + (1 if keyed else 0)
