"""The supervisor: an unexpected error in the worker requeues the job it held and
restarts the worker after a pause that doubles in a crash loop (see _worker_harness)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio.testing

from foreman.jobs import JobState

from ._worker_harness import chat, crash, ok, open_rig


async def test_a_crash_requeues_the_held_job_and_restarts_after_the_delay(
    db_path: Path, virtual_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="foreman")
    async with open_rig(db_path, virtual_clock, restart_delay=1.0) as rig:
        rig.ollama.script("job", crash(RuntimeError("a bug")), crash(RuntimeError("again")))
        job = await rig.submit(chat(max_attempts=5))
        rig.start()
        done = await rig.until_state(job.id, JobState.DONE)

    # crashed at 0 and requeued at once; restarted 1 s later, crashed again, then 2 s
    assert rig.ollama.times("job") == [0.0, 1.0, 3.0]
    assert rig.times_in(job.id, JobState.QUEUED) == [0.0, 0.0, 1.0]
    assert done.result["message"]["content"] == "Hello there"
    assert caplog.text.count("the worker crashed; restarting in") == 2
    assert "restarting in 1.0s" in caplog.text
    assert "restarting in 2.0s" in caplog.text
    assert caplog.text.count("put back in the queue after the worker crashed") == 2


async def test_a_worker_that_ran_well_for_a_minute_restarts_after_the_first_delay_again(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock, restart_delay=1.0) as rig:
        rig.ollama.script("job", crash(RuntimeError("a bug")), ok(), crash(RuntimeError("later")))
        first = await rig.submit(chat())
        rig.start()
        await rig.until_state(first.id, JobState.DONE)
        await trio.sleep(119)
        second = await rig.submit(chat())
        await rig.until_state(second.id, JobState.DONE)

    # the first crash at 0 s restarts at 1 s; the next, after two good minutes, 1 s
    # later again rather than after the doubled 2 s of a crash loop
    assert rig.ollama.times("job") == [0.0, 1.0, 120.0, 121.0]
