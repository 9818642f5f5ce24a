"""A job's end carries the next claim (see _worker_harness): one write for both, the
claimed job run next in the same slot, and an end that found nothing saves the loop its
own look until something wakes the workers."""

from __future__ import annotations

import itertools
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from foreman.jobs import JobState
from foreman.store import SyncStore
from foreman.tickets import Reply

from ._worker_harness import chat, hang, open_rig, wall


class CountingStore(SyncStore):
    """Counts the worker's claims, ends and idle reads; `break_claims` makes that many
    claims inside an end's write fail after they started a job."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float]) -> None:
        super().__init__(conn, clock)
        self.calls: list[str] = []
        self.break_claims = 0
        self._in_end = False

    def claim_on(self, *args: Any) -> Any:
        self.calls.append("claim_on")
        return super().claim_on(*args)

    def end_and_claim(self, *args: Any) -> Any:
        self.calls.append("end_and_claim")
        self._in_end = True
        try:
            return super().end_and_claim(*args)
        finally:
            self._in_end = False

    def next_not_before(self) -> float | None:
        if not self._in_end:
            self.calls.append("next_not_before")
        return super().next_not_before()

    def _start(self, *args: Any) -> Any:
        started = super()._start(*args)
        if self._in_end and self.break_claims:
            self.break_claims -= 1
            raise sqlite3.IntegrityError("a row the driver refuses")
        return started


def _counting(rig: Any) -> CountingStore:
    sync = rig.store.sync
    assert isinstance(sync, CountingStore)
    return sync


async def test_the_next_job_is_claimed_in_the_write_of_the_previous_ones_end(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock, sync=CountingStore) as rig:
        rig.ollama.script("job", hang(1.0), hang(1.0), hang(1.0))
        jobs = [await rig.submit(chat(text=f"job {i}")) for i in range(3)]
        tickets = [rig.worker.tickets.attach(job.id) for job in jobs]
        rig.start()
        await rig.until_state(jobs[-1].id, JobState.DONE)
        sync = _counting(rig)

    # one claim of the loop's own (the first job), then one write per end
    assert [c for c in sync.calls if c != "next_not_before"] == [
        "claim_on",
        "end_and_claim",
        "end_and_claim",
        "end_and_claim",
    ]
    ends = [rig.times_in(job.id, JobState.DONE)[0] for job in jobs]
    starts = [rig.times_in(job.id, JobState.WORKING)[0] for job in jobs]
    # the end of each and the start of the next: the same write, the end heard first
    assert starts[1:] == ends[:-1] == [1.0, 2.0]
    order = [(m.job.id, m.job.state) for m in rig.moves]
    for ended, claimed in itertools.pairwise(jobs):
        assert order.index((ended.id, JobState.DONE)) < order.index((claimed.id, JobState.WORKING))
    for ticket in tickets:
        assert isinstance(ticket.receive_channel.receive_nowait(), Reply)
    assert rig.ollama.times("job") == starts


async def test_an_end_that_found_no_work_saves_the_loop_its_look_until_a_wake(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock, sync=CountingStore) as rig:
        first = await rig.submit(chat(text="first"))
        rig.start()
        await rig.until_state(first.id, JobState.DONE)
        await trio.sleep(5)
        sync = _counting(rig)
        after_end = list(sync.calls)
        later = await rig.submit(chat(text="later"))  # wakes the workers
        await rig.until_state(later.id, JobState.DONE)

    # no claim and no read of the retries between the end and the next submission
    assert after_end == ["claim_on", "end_and_claim"]
    assert rig.times_in(later.id, JobState.WORKING) == [
        rig.times_in(first.id, JobState.DONE)[0] + 5
    ]


async def test_a_retry_seen_by_the_ends_look_is_claimed_when_due(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock, sync=CountingStore) as rig:
        await rig.submit(chat(text="first"))
        waiting = await rig.submit(chat(text="in backoff"))
        rig.store.sync.conn.execute(
            "UPDATE jobs SET not_before = ? WHERE id = ?", (wall(7.0), waiting.id)
        )
        rig.start()
        await rig.until_state(waiting.id, JobState.DONE)
        sync = _counting(rig)

    assert rig.times_in(waiting.id, JobState.WORKING) == [pytest.approx(7.005)]
    # the wait was timed by what the end's write read
    assert sync.calls[:3] == ["claim_on", "end_and_claim", "claim_on"]


async def test_a_claim_that_fails_in_the_ends_write_leaves_the_end_and_claims_apart(
    db_path: Path, virtual_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="foreman")
    async with open_rig(db_path, virtual_clock, sync=CountingStore) as rig:
        sync = _counting(rig)
        sync.break_claims = 1
        first = await rig.submit(chat(text="first"))
        second = await rig.submit(chat(text="second"))
        ticket = rig.worker.tickets.attach(first.id)
        rig.start()
        await rig.until_state(second.id, JobState.DONE)
        done = rig.store.sync.get(first.id)
        ran = rig.store.sync.get(second.id)

    assert done is not None
    assert done.state is JobState.DONE
    assert isinstance(ticket.receive_channel.receive_nowait(), Reply)
    # the claim was undone (no attempt spent) and made again by the loop
    assert ran is not None
    assert ran.attempts == 1
    assert [m.job.state for m in rig.history(second.id)] == [
        JobState.QUEUED,
        JobState.WORKING,
        JobState.DONE,
    ]
    assert sync.calls[:3] == ["claim_on", "end_and_claim", "claim_on"]
    assert "the claim made with its end failed" in caplog.text


async def test_a_job_claimed_with_an_end_as_shutdown_begins_goes_back_to_the_queue(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock, sync=CountingStore) as rig:
        sync = _counting(rig)
        first = await rig.submit(chat(text="first"))
        second = await rig.submit(chat(text="second"))
        ticket = rig.worker.tickets.attach(first.id)
        real = sync.end_and_claim

        def stop_meanwhile(*args: Any) -> Any:
            rig.worker.stopping = True  # shutdown begins while the write is made
            return real(*args)

        sync.end_and_claim = stop_meanwhile  # type: ignore[method-assign]
        rig.start()
        await rig.until_state(first.id, JobState.DONE)
        await rig.worker.wait_quiet()
        back = sync.get(second.id)

    assert isinstance(ticket.receive_channel.receive_nowait(), Reply)
    assert back is not None
    assert back.state is JobState.QUEUED
    assert back.attempts == 0
    assert rig.ollama.times("job") == [0.0]
