"""Shutdown: the worker stops claiming; the job in hand finishes within the grace or goes
back to the queue with its attempt refunded (see _worker_harness)."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from foreman.jobs import JobState
from foreman.worker import Worker

from ._worker_harness import chat, hang, open_rig

GRACE = 2.0


async def drain(worker: Worker, grace: float) -> bool:
    """What the daemon's drain does with the worker: stop claiming, give the running job
    `grace` seconds, then interrupt it. True when it had to interrupt."""
    worker.stop_claiming()
    with trio.move_on_after(grace):
        await worker.wait_quiet()
    interrupted = worker.interrupt()
    await worker.wait_quiet()
    return interrupted


async def test_a_job_that_outlasts_the_grace_goes_back_with_its_attempt_refunded(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock) as rig:
        rig.ollama.script("job", hang())
        job = await rig.submit(chat())
        later = await rig.submit(chat("mistral"))
        rig.start()
        working = await rig.until_state(job.id, JobState.WORKING)
        assert working.attempts == 1
        await trio.sleep(3)
        assert await drain(rig.worker, GRACE)
        put_back = rig.history(job.id)[-1]
        # the worker claims nothing after the stop, however long it stays
        await trio.sleep(1000)

    assert put_back.at == 3 + GRACE
    assert put_back.job.state is JobState.QUEUED
    assert put_back.job.attempts == 0
    assert rig.ollama.times("job") == [0.0]
    assert rig.times_in(later.id, JobState.LOADING) == []
    assert rig.worker.running is None


async def test_a_job_that_finishes_within_the_grace_is_done_and_no_other_starts(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock) as rig:
        rig.ollama.script("job", hang(1.5))
        job = await rig.submit(chat())
        later = await rig.submit(chat())
        rig.start()
        await rig.until_state(job.id, JobState.WORKING)
        assert not await drain(rig.worker, GRACE)
        stopped_at = trio.current_time()
        await trio.sleep(1000)

    assert stopped_at == 1.5
    assert rig.times_in(job.id, JobState.DONE) == [1.5]
    assert rig.times_in(later.id, JobState.LOADING) == []


async def test_leaving_at_once_after_the_stop_still_puts_the_running_job_back(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    """The second signal: the whole task tree is cancelled while the job runs."""
    async with open_rig(db_path, virtual_clock) as rig:
        rig.ollama.script("job", hang())
        job = await rig.submit(chat())
        rig.start()
        await rig.until_state(job.id, JobState.WORKING)
        await trio.sleep(4)
        rig.worker.stop_claiming()
        rig.nursery.cancel_scope.cancel()

    last = rig.history(job.id)[-1]
    assert (last.at, last.job.state, last.job.attempts) == (4.0, JobState.QUEUED, 0)
