"""A database that cannot be written, and one foreman per database.

The worker's side runs on trio's MockClock: a store whose writes fail the way SQLite fails
on a full disk, an Ollama answered in memory (httpx's MockTransport), and the real worker
and supervisor.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from foreman.events import Wakeup
from foreman.jobs import Endpoint, JobState
from foreman.lockfile import DatabaseLock, LockHeld, lock_path
from foreman.store import Store, StoreError, StoreUnwritable, SyncStore, connect, unwritable_reason
from foreman.supervisor import supervise
from foreman.tickets import Tickets
from foreman.upstream import Upstream
from foreman.worker import Worker, WorkerSettings

from ._helpers import FakeClock, new_job


def disk_full() -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("database or disk is full")
    exc.sqlite_errorcode = 13  # SQLITE_FULL, as SQLite itself sets it
    return exc


def test_only_errors_that_say_the_database_cannot_be_written_count(tmp_path: Path) -> None:
    assert unwritable_reason(disk_full()) == "database or disk is full"
    conn = sqlite3.connect(tmp_path / "x.db")
    with pytest.raises(sqlite3.Error) as bug:
        conn.execute("SELECT nothing FROM nowhere")
    conn.close()
    assert unwritable_reason(bug.value) is None
    assert unwritable_reason(RuntimeError("database or disk is full")) is None


# -- one foreman per database ------------------------------------------------------------


async def test_a_second_store_on_one_database_is_refused_naming_the_holder(
    db_path: Path,
) -> None:
    first = await Store.open(db_path)
    try:
        with pytest.raises(StoreError) as refused:
            await Store.open(db_path)
        message = str(refused.value)
        assert str(db_path) in message
        assert f"process {os.getpid()}" in message
        assert "\n" not in message
    finally:
        await first.close()
    # closing the first lets the next one in
    again = await Store.open(db_path)
    await again.close()


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path: Path) -> None:
    db = tmp_path / "foreman.db"
    lock_path(db).write_text("999999999\n")  # a killed foreman's pid, lock long gone
    lock = DatabaseLock(db)
    lock.acquire()
    try:
        assert lock_path(db).read_text() == f"{os.getpid()}\n"
        with pytest.raises(LockHeld, match=f"process {os.getpid()}"):
            DatabaseLock(db).acquire()
    finally:
        lock.release()


# -- the file deleted or replaced --------------------------------------------------------


def test_a_deleted_or_replaced_database_file_is_noticed(tmp_path: Path) -> None:
    db = tmp_path / "foreman.db"
    conn = connect(db)
    store = SyncStore(conn)
    assert store.file_problem() is None
    db.unlink()
    problem = store.file_problem()
    assert problem is not None
    assert "deleted" in problem
    connect(db).close()  # a new file at the same path
    problem = store.file_problem()
    assert problem is not None
    assert "replaced" in problem
    conn.close()


async def test_a_full_disk_shows_on_the_probe_write(db_path: Path) -> None:
    store = await Store.open(db_path)
    try:
        assert await store.write_problem() is None
        store.sync = FullDiskStore(store.sync.conn)
        store.sync.full = True
        assert await store.write_problem() == "database or disk is full"
    finally:
        await store.close()


# -- the worker while writes fail --------------------------------------------------------


class FullDiskStore(SyncStore):
    """Writes fail as on a full disk while `full` is set; reads work."""

    full = False
    tries = 0

    def _fail(self) -> None:
        self.tries += 1
        if self.full:
            raise disk_full()

    def probe_write(self) -> None:
        self._fail()
        super().probe_write()

    def claim_next(self, resident: str | None, max_wait: float) -> Any:
        if self.count_queued():
            self._fail()
        return super().claim_next(resident, max_wait)

    def claim_on(self, *args: Any, **kwargs: Any) -> Any:
        if self.count_queued():
            self._fail()
        return super().claim_on(*args, **kwargs)

    def transition(self, *args: Any, **kwargs: Any) -> Any:
        self._fail()
        return super().transition(*args, **kwargs)

    def end_and_claim(self, *args: Any, **kwargs: Any) -> Any:
        self._fail()
        return super().end_and_claim(*args, **kwargs)


class Ollama:
    """Just enough of Ollama, in memory: every generate answers at once."""

    def __init__(self) -> None:
        self.generated: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/version":
            return httpx.Response(200, json={"version": "0.0.0"})
        if request.url.path == "/api/ps":
            return httpx.Response(200, json={"models": []})
        body = json.loads(request.content or b"{}")
        if body.get("prompt"):
            self.generated.append(body["prompt"])
        return httpx.Response(200, json={"model": body.get("model"), "response": "ok"})


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    # a small positive threshold: the store's calls run on a thread (see the style notes)
    return trio.testing.MockClock(autojump_threshold=0.01)


async def full_disk_worker(
    db_path: Path, ollama: Ollama
) -> tuple[FullDiskStore, Worker, httpx.AsyncClient]:
    sync = FullDiskStore(connect(db_path), FakeClock())
    store = Store(sync)
    http = httpx.AsyncClient(base_url="http://ollama", transport=httpx.MockTransport(ollama.handle))
    worker = Worker(store, Upstream(http), Tickets(), Wakeup(), WorkerSettings())
    return sync, worker, http


async def until(predicate: Callable[[], bool]) -> None:
    """Poll in virtual time: what the test waits for is a row the worker's thread
    writes, which no trio event announces."""
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(1)


def state_of(sync: SyncStore, job_id: str) -> JobState | None:
    job = sync.get(job_id)
    return job.state if job is not None else None


def generate(prompt: str) -> Any:
    body = json.dumps({"model": "llama3", "prompt": prompt, "stream": False}).encode()
    return new_job("llama3:latest", endpoint=Endpoint.GENERATE, body=body, stream=False)


async def test_the_worker_waits_with_backoff_while_claims_cannot_be_written(
    db_path: Path, mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="foreman")
    ollama = Ollama()
    sync, worker, http = await full_disk_worker(db_path, ollama)
    job = sync.enqueue(generate("first"))
    sync.full = True
    async with http, trio.open_nursery() as nursery:
        nursery.start_soon(supervise, worker)
        await trio.sleep(60)
        # 0.25 s doubling to 10 s: a handful of tries in a minute, not a busy loop
        assert 4 <= sync.tries <= 12
        assert ollama.generated == []
        sync.full = False
        await until(lambda: state_of(sync, job.id) is JobState.DONE)
        nursery.cancel_scope.cancel()
    assert ollama.generated == ["first"]
    assert "the worker crashed" not in caplog.text
    assert caplog.text.count("waits until it can be written") == 1
    assert "the database takes writes again" in caplog.text
    sync.conn.close()


async def test_an_answer_whose_end_cannot_be_written_is_kept_not_run_again(
    db_path: Path, mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ollama = Ollama()
    sync, worker, http = await full_disk_worker(db_path, ollama)
    job = sync.enqueue(generate("kept"))
    real_transition = sync.transition
    real_end_and_claim = sync.end_and_claim
    failed_ends: list[JobState] = []

    def filling(new: JobState) -> None:
        if new is JobState.DONE and not failed_ends:
            sync.full = True  # the disk fills while Ollama answers
        if sync.full:
            failed_ends.append(new)

    def fill_at_the_end(job_id: str, old: JobState, new: JobState, **fields: Any) -> Any:
        filling(new)
        return real_transition(job_id, old, new, **fields)

    def fill_at_the_end_and_claim(job_id: str, old: JobState, new: JobState, *rest: Any) -> Any:
        filling(new)
        return real_end_and_claim(job_id, old, new, *rest)

    # the end is written with the next claim when it can be, else alone
    monkeypatch.setattr(sync, "transition", fill_at_the_end)
    monkeypatch.setattr(sync, "end_and_claim", fill_at_the_end_and_claim)
    async with http, trio.open_nursery() as nursery:
        nursery.start_soon(supervise, worker)
        await until(lambda: len(failed_ends) >= 3)
        assert set(failed_ends) == {JobState.DONE}  # the same end, tried again
        assert state_of(sync, job.id) is JobState.WORKING
        sync.full = False
        await until(lambda: state_of(sync, job.id) is JobState.DONE)
        nursery.cancel_scope.cancel()
    done = sync.get(job.id)
    assert done is not None
    assert done.result == {"model": "llama3", "response": "ok"}
    assert done.attempts == 1
    assert ollama.generated == ["kept"]  # Ollama ran it once
    sync.conn.close()


async def test_the_supervisors_clean_up_write_waits_instead_of_escaping(
    db_path: Path,
    mock_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="foreman")
    ollama = Ollama()
    sync, worker, http = await full_disk_worker(db_path, ollama)
    job = sync.enqueue(generate("crashes once"))
    real_call = Worker._call
    crashed: list[str] = []

    async def crash_on_a_full_disk(self: Worker, job: Any, running: Any) -> None:
        if not crashed:
            crashed.append(job.id)
            sync.full = True  # the disk fills as the worker hits a bug
            raise RuntimeError("a bug in the worker")
        await real_call(self, job, running)

    monkeypatch.setattr(Worker, "_call", crash_on_a_full_disk)
    async with http, trio.open_nursery() as nursery:
        nursery.start_soon(supervise, worker)
        await trio.sleep(30)
        # the supervisor is still there, still trying to put the job back
        assert state_of(sync, job.id) is JobState.WORKING
        sync.full = False
        await until(lambda: state_of(sync, job.id) is JobState.DONE)
        nursery.cancel_scope.cancel()
    assert crashed == [job.id]
    assert "put back in the queue after the worker crashed" in caplog.text
    assert ollama.generated == ["crashes once"]
    sync.conn.close()


async def test_store_writes_that_cannot_be_written_raise_store_unwritable(db_path: Path) -> None:
    sync = FullDiskStore(connect(db_path), FakeClock())
    store = Store(sync)
    job = sync.enqueue(new_job())
    sync.full = True
    with pytest.raises(StoreUnwritable, match="cannot be written: database or disk is full"):
        await store.transition(job.id, JobState.QUEUED, JobState.CANCELLED)
    assert store.unwritable(disk_full()) is not None
    assert store.unwritable(ValueError("no")) is None
    await store.close()
