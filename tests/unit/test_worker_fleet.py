"""The fleet in the worker tier: one worker per upstream over one queue, at exact
virtual times (see _fleet_harness): drain by model on every upstream, slots, models that
only some upstreams have, and an upstream that dies."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from foreman.jobs import JobState

from ._fleet_harness import TimedOllama, open_fleet
from ._worker_harness import chat

MODELS = ("a", "b", "c", "d")


async def test_two_upstreams_drain_four_models_with_few_loads(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    """The acceptance's first case: 24 chats interleaved over four models, two
    upstreams: every job answered, both upstreams work, at most models + 2 loads, and no
    upstream ever runs two models at once."""
    ollamas = [TimedOllama("gpu0"), TimedOllama("gpu1")]
    async with open_fleet(db_path, virtual_clock, ollamas) as rig:
        jobs = [await rig.submit(chat(MODELS[i % 4], f"{i}")) for i in range(24)]
        rig.start()
        await rig.until_all(JobState.DONE, len(jobs))

    final = rig.final()
    assert all(final[j.id].state is JobState.DONE for j in jobs)
    assert all(o.ran for o in ollamas)
    assert sum(len(o.loads) for o in ollamas) <= len(MODELS) + 2
    assert not any(o.mixed for o in ollamas)
    # each job names the upstream that ran it, and that upstream ran its model
    for j in jobs:
        ran_on = next(o for o in ollamas if o.name == final[j.id].upstream)
        assert f"{j.model}:latest" in {r.model for r in ran_on.ran}
    # drain by model: 6 jobs a model, 2 s a load and 1 s a job, two upstreams: the
    # fleet takes half the serial time (4 loads + 24 jobs = 32 s)
    assert max(r.end for o in ollamas for r in o.ran) <= 16.0


async def test_four_slots_run_four_at_a_time_never_five(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    durations = {}
    for slots in (1, 4):
        ollama = TimedOllama(f"gpu{slots}")
        async with open_fleet(
            db_path.with_name(f"{slots}.db"), virtual_clock, [ollama], slots=[slots]
        ) as rig:
            started = trio.current_time()
            jobs = [await rig.submit(chat("a", f"{i}")) for i in range(16)]
            rig.start()
            await rig.until_all(JobState.DONE, len(jobs))
        assert ollama.most_at_once == slots
        assert ollama.loads == ["a:latest"]
        durations[slots] = max(r.end for r in ollama.ran) - started
    # one load of 2 s, then 16 generations of 1 s: 16 s one at a time, 4 s four at a time
    assert durations == {1: 2.0 + 16.0, 4: 2.0 + 4.0}


async def test_a_job_runs_only_where_its_model_is_allowed(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    ollamas = [TimedOllama("gpu0"), TimedOllama("gpu1")]
    async with open_fleet(db_path, virtual_clock, ollamas, models=[["a*"], ["b*", "c"]]) as rig:
        jobs = [await rig.submit(chat(MODELS[i % 3], f"{i}")) for i in range(12)]
        rig.start()
        await rig.until_all(JobState.DONE, len(jobs))

    assert {r.model for r in ollamas[0].ran} == {"a:latest"}
    assert {r.model for r in ollamas[1].ran} == {"b:latest", "c:latest"}
    final = rig.final()
    assert {final[j.id].upstream for j in jobs if j.model == "a"} == {"gpu0"}


async def test_a_job_goes_where_the_model_list_has_its_model(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    """No model globs: what each upstream's /api/tags lists decides."""
    ollamas = [TimedOllama("gpu0", ["a", "b"]), TimedOllama("gpu1", ["c"])]
    async with open_fleet(db_path, virtual_clock, ollamas) as rig:
        jobs = [await rig.submit(chat(MODELS[i % 3], f"{i}")) for i in range(9)]
        rig.start()
        await rig.until_all(JobState.DONE, len(jobs))

    assert {r.model for r in ollamas[0].ran} == {"a:latest", "b:latest"}
    assert {r.model for r in ollamas[1].ran} == {"c:latest"}
    # nothing was tried where the model is not
    assert all(s.kind != "load" or s.body["model"] != "c" for s in ollamas[0].seen)


async def test_a_model_no_upstream_has_fails_with_ollamas_404(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    ollamas = [TimedOllama("gpu0", ["a"]), TimedOllama("gpu1", ["b"])]
    async with open_fleet(db_path, virtual_clock, ollamas) as rig:
        job = await rig.submit(chat("nope"))
        rig.start()
        await rig.until_all(JobState.FAILED, 1)

    failed = rig.final()[job.id]
    assert "not found" in (failed.error or "")
    assert failed.attempts == 1


async def test_an_upstream_that_dies_loses_nothing_and_the_other_carries_on(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    ollamas = [TimedOllama("gpu0"), TimedOllama("gpu1")]
    async with open_fleet(db_path, virtual_clock, ollamas) as rig:
        jobs = [await rig.submit(chat(("a", "b")[i % 2], f"{i}")) for i in range(12)]
        rig.start()
        # both upstreams are generating: one dies mid-answer and stays down
        await rig.pulse.until(lambda: all(o.active for o in ollamas))
        ollamas[1].down = True
        await rig.until_all(JobState.DONE, len(jobs))

    final = rig.final()
    assert all(final[j.id].state is JobState.DONE for j in jobs)
    # every job finished on the upstream that lived; the one cut off ran again there
    assert {final[j.id].upstream for j in jobs} == {"gpu0"}
    assert not ollamas[1].ran
    assert not ollamas[0].mixed
    assert all(final[j.id].attempts <= 2 for j in jobs)


async def test_one_upstream_down_at_start_the_other_does_the_work(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    ollamas = [TimedOllama("gpu0"), TimedOllama("gpu1")]
    ollamas[0].down = True
    async with open_fleet(db_path, virtual_clock, ollamas) as rig:
        jobs = [await rig.submit(chat(("a", "b")[i % 2], f"{i}")) for i in range(6)]
        rig.start()
        await rig.until_all(JobState.DONE, len(jobs))
        assert not rig.workers[0].online

    final = rig.final()
    assert {final[j.id].upstream for j in jobs} == {"gpu1"}
    assert all(final[j.id].attempts == 1 for j in jobs)


async def test_an_idle_upstream_takes_a_second_copy_of_a_long_backlog(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    """One upstream finishes model b's one job while the other still has 39 jobs of a:
    a backlog that outlasts a load many times over is worth a second copy."""
    ollamas = [TimedOllama("gpu0"), TimedOllama("gpu1")]
    async with open_fleet(db_path, virtual_clock, ollamas) as rig:
        jobs = [await rig.submit(chat("a", f"{i}")) for i in range(40)]
        jobs.append(await rig.submit(chat("b")))
        rig.start()
        await rig.until_all(JobState.DONE, len(jobs))

    assert sorted(o.loads for o in ollamas) == [["a:latest"], ["b:latest", "a:latest"]]
    assert not any(o.mixed for o in ollamas)
    # alone gpu0 would need 2 + 40 s; with the copy they share the backlog
    assert max(r.end for o in ollamas for r in o.ran) < 30.0


async def test_an_idle_upstream_that_goes_away_is_marked_down_and_back(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    """Nothing runs on gpu1, so no job would notice it went away: the idle check does,
    within one health-check period, and the probes bring it back once it answers."""
    ollamas = [TimedOllama("gpu0"), TimedOllama("gpu1")]
    async with open_fleet(db_path, virtual_clock, ollamas, health_check=10.0) as rig:
        rig.start()
        await ollamas[1].pulse.until(lambda: rig.workers[1].online)
        went = trio.current_time()
        ollamas[1].down = True
        # each probe is a request gpu1 sees: the pulse the wait wakes on
        await ollamas[1].pulse.until(lambda: not rig.workers[1].online)
        noticed = trio.current_time() - went
        assert rig.workers[0].online
        ollamas[1].down = False
        await ollamas[1].pulse.until(lambda: rig.workers[1].online)

    assert 0 < noticed <= 10.0
