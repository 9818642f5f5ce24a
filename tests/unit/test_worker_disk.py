"""A database that cannot be written, at exact virtual times: the worker's claims wait
0.25 s doubling to 10 s (see _worker_harness; test_store_unwritable.py has the rest of
the full-disk story, whose failing store this reuses)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import httpx
import trio
import trio.testing

from foreman.jobs import JobState

from ._worker_harness import EPOCH, chat, gaps, ok, open_rig
from .test_store_unwritable import FullDiskStore


class TimedFullDisk(FullDiskStore):
    """`FullDiskStore` that notes when each write was tried (virtual time)."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float]) -> None:
        super().__init__(conn, clock)
        self.tried_at: list[float] = []

    def _fail(self) -> None:
        self.tried_at.append(self.clock() - EPOCH)
        super()._fail()


async def test_claims_that_cannot_be_written_are_tried_again_with_backoff(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock, sync=TimedFullDisk) as rig:
        sync = rig.store.sync
        assert isinstance(sync, TimedFullDisk)
        job = await rig.submit(chat())
        sync.full = True
        rig.start()
        await trio.sleep(30)
        tried = list(sync.tried_at)
        sync.full = False
        await rig.until_state(job.id, JobState.DONE)

    assert tried[0] == 0.0
    assert gaps(tried) == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    # the try after the disk has room again claims the job, 10 s after the last
    assert rig.times_in(job.id, JobState.LOADING) == [tried[-1] + 10.0]
    assert rig.ollama.times("job") == [tried[-1] + 10.0]


async def test_an_answer_in_hand_is_kept_when_its_end_waits_past_the_job_timeout(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    """The answer is whole but the disk is full: the end waits for the disk longer than
    the job timeout. The timeout bounds Ollama, not the database: the answer is written
    when the disk has room, and the job does not run again."""
    async with open_rig(db_path, virtual_clock, sync=TimedFullDisk, job_timeout=3.0) as rig:
        sync = rig.store.sync
        assert isinstance(sync, TimedFullDisk)

        async def fill_then_answer(request: httpx.Request) -> httpx.Response:
            sync.full = True  # the disk fills while Ollama answers
            return await ok()(request)

        rig.ollama.script("job", fill_then_answer)
        job = await rig.submit(chat())
        rig.start()
        await trio.sleep(20)
        sync.full = False
        done = await rig.until_state(job.id, JobState.DONE)
        await trio.sleep(100)

    assert done.attempts == 1
    assert len(rig.ollama.times("job")) == 1
    assert len(rig.times_in(job.id, JobState.QUEUED)) == 1  # its submission alone
