"""A database that cannot be written, at exact virtual times: the worker's claims wait
0.25 s doubling to 10 s (see _worker_harness; test_store_unwritable.py has the rest of
the full-disk story, whose failing store this reuses)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import trio
import trio.testing

from foreman.jobs import JobState

from ._worker_harness import EPOCH, chat, gaps, open_rig
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
