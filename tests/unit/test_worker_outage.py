"""Ollama out of reach: the worker probes /api/version with backoff and spends no
attempt, at exact virtual times (see _worker_harness)."""

from __future__ import annotations

from pathlib import Path

import trio.testing

from foreman.jobs import JobState

from ._worker_harness import chat, gaps, open_rig

# 0.25 s doubling to 10 s between probes
PROBE_GAPS = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


async def test_probes_back_off_from_a_quarter_second_to_ten_seconds_while_ollama_is_down(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock) as rig:
        rig.ollama.down = True
        job = await rig.submit(chat())
        rig.start()
        await rig.ollama.until_seen("/api/version", len(PROBE_GAPS) + 1)
        assert rig.worker.statistics().failed_probes == len(PROBE_GAPS) + 1
        rig.ollama.down = False
        done = await rig.until_state(job.id, JobState.DONE)

    probes = rig.ollama.times("/api/version")
    assert probes[0] == 0.0
    assert gaps(probes) == [*PROBE_GAPS, 10.0]  # the last one found Ollama back
    assert rig.worker.statistics().failed_probes == len(PROBE_GAPS) + 1
    # nothing but probes while it was down; the job ran once it answered
    assert rig.times_in(job.id, JobState.LOADING) == [probes[-1]]
    assert done.attempts == 1


async def test_an_outage_found_by_a_job_gives_its_attempt_back_and_waits_for_ollama(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock) as rig:
        rig.start()
        await rig.ollama.until_seen("/api/ps", 1)  # up at start, then idle
        await trio.sleep(100)
        rig.ollama.down = True
        job = await rig.submit(chat(max_attempts=1))
        requeued = await rig.until_state(job.id, JobState.QUEUED, count=2)
        await rig.ollama.until_seen("/api/version", 5)
        rig.ollama.down = False
        done = await rig.until_state(job.id, JobState.DONE)

    probes = rig.ollama.times("/api/version")
    assert probes[0] == 0.0  # the start's probe
    # the failed load at 100 s, then probes from that moment on
    assert rig.ollama.times("load")[0] == 100.0
    assert requeued.attempts == 0
    assert probes[1] == 100.0
    assert gaps(probes[1:]) == [0.25, 0.5, 1.0, 2.0]
    assert rig.worker.statistics().failed_probes == 4
    # a job with one attempt still had it: the outage spent none
    assert done.attempts == 1
