"""The worker's retries and job timeout, at exact virtual times (see _worker_harness)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio.testing

from foreman.jobs import JobState

from ._worker_harness import chat, gaps, hang, open_rig, status, wall

# the worker looks again this long after a retry's not_before (its idle wait's margin)
MARGIN = 0.01


async def test_a_transient_failure_waits_its_backoff_window_before_the_next_attempt(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock, retry_backoff=2.0) as rig:
        rig.ollama.script("job", status(500), status(503))
        job = await rig.submit(chat(max_attempts=3))
        rig.start()
        done = await rig.until_state(job.id, JobState.DONE)

    first, second, third = rig.ollama.times("job")
    retries = [m.job for m in rig.history(job.id) if m.job.state is JobState.QUEUED][1:]
    # attempt 1 failed at once: back in the queue for the 2 s window, tried no earlier
    assert first == 0.0
    assert retries[0].attempts == 1
    assert retries[0].error == "boom"
    assert retries[0].not_before == pytest.approx(wall(first + 2.0))
    assert wall(second) >= retries[0].not_before
    assert second - (first + 2.0) < MARGIN
    # attempt 2: the window doubles
    assert retries[1].attempts == 2
    assert retries[1].not_before == pytest.approx(wall(second + 4.0))
    assert wall(third) >= retries[1].not_before
    assert third - (second + 4.0) < MARGIN
    assert done.attempts == 3
    assert done.error is None


async def test_the_backoff_window_stops_growing_at_the_cap(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock, retry_backoff=2.0, retry_cap=5.0) as rig:
        rig.ollama.script("job", status(500), status(500), status(500))
        job = await rig.submit(chat(max_attempts=4))
        rig.start()
        await rig.until_state(job.id, JobState.DONE)
    times = rig.ollama.times("job")
    for gap, window in zip(gaps(times), [2.0, 4.0, 5.0], strict=True):
        assert window <= gap < window + MARGIN


async def test_the_last_attempt_fails_the_job_without_another_wait(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock, retry_backoff=2.0) as rig:
        rig.ollama.script("job", status(500), status(500))
        job = await rig.submit(chat(max_attempts=2))
        rig.start()
        failed = await rig.until_state(job.id, JobState.FAILED)
    assert rig.times_in(job.id, JobState.FAILED) == [rig.ollama.times("job")[1]]
    assert failed.attempts == 2
    assert failed.error == "boom"


async def test_an_attempt_that_outlasts_the_job_timeout_is_a_transient_failure_then(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock, job_timeout=5.0, retry_backoff=2.0) as rig:
        rig.ollama.script("job", hang())
        job = await rig.submit(chat(max_attempts=3))
        rig.start()
        timed_out = await rig.until_state(job.id, JobState.QUEUED, count=2)
        done = await rig.until_state(job.id, JobState.DONE)

    first, second = rig.ollama.times("job")
    # the load counts against the attempt too: the limit runs from the claim
    assert first == rig.times_in(job.id, JobState.LOADING)[0] == 0.0
    assert rig.times_in(job.id, JobState.QUEUED)[1] == 5.0
    assert timed_out.attempts == 1
    assert timed_out.error == "the attempt ran longer than the job timeout (5s)"
    assert timed_out.not_before == pytest.approx(wall(5.0 + 2.0))
    assert 7.0 <= second < 7.0 + MARGIN
    assert done.attempts == 2


async def test_a_slow_load_counts_against_the_job_timeout(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock, job_timeout=5.0) as rig:
        # 3 s to load and 4 s to answer: within the timeout each, not together
        rig.ollama.script("load", hang(3.0))
        rig.ollama.script("job", hang(4.0))
        job = await rig.submit(chat(max_attempts=3))
        rig.start()
        timed_out = await rig.until_state(job.id, JobState.QUEUED, count=2)
    assert rig.ollama.times("load")[0] == 0.0
    assert rig.ollama.times("job")[0] == 3.0
    assert rig.times_in(job.id, JobState.QUEUED)[1] == 5.0
    assert "job timeout" in (timed_out.error or "")
