"""Job changes across replicas on one PostgreSQL: the listener (`PgListener`), the trigger
that notifies every change of a job, and `RemoteChanges`, which tells one replica's parts
of what another replica committed.

Two replicas here are two `Store`s on one database in one test process, each with its own
listener, `JobEvents`, `Wakeup` and tally. The tests wait on events with a generous
deadline, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import psycopg
import pytest
import trio

from foreman.events import JobEvents, Wakeup
from foreman.jobs import Job, JobState
from foreman.metrics import JobTally, Metrics
from foreman.replication import JOBS_CHANNEL, RemoteChanges
from foreman.store import Store, StoreError
from foreman.store.pg_listen import PgListener
from tests.unit._helpers import new_job

T = TypeVar("T")

# generous: a loaded machine must not fail a test by taking its time
DEADLINE_S = 60


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def notify(url: str, channel: str, payload: str) -> int:
    """Send one notification from a connection of its own; returns its backend pid."""

    def send() -> int:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
            return conn.info.backend_pid

    return int(await in_thread(send))


class Signal:
    """Bumped by whatever a test watches (a notification heard, a job published, ...), so
    the test waits on a change rather than polling."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def bump(self) -> None:
        self._event.set()
        self._event = trio.Event()

    def adder(self, into: list[T]) -> Callable[[T], None]:
        """Appends to `into`, then bumps."""

        def add(item: T) -> None:
            into.append(item)
            self.bump()

        return add

    async def until(self, condition: Callable[[], bool]) -> None:
        with trio.fail_after(DEADLINE_S):
            while not condition():
                await self._event.wait()


# -- the listener --------------------------------------------------------------------------------


async def test_the_listener_delivers_another_sessions_notification_with_its_sender(
    postgres_url: str,
) -> None:
    heard: list[tuple[str, int]] = []
    signal = Signal()
    listener = PgListener(postgres_url)
    add = signal.adder(heard)
    listener.listen("Mixed Case", lambda payload, pid: add((payload, pid)))
    listener.listen("other", lambda payload, pid: add(("o:" + payload, pid)))
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        sender = await notify(postgres_url, "Mixed Case", "hello")
        await notify(postgres_url, "unheard", "nobody listens")
        second = await notify(postgres_url, "other", "x")
        await signal.until(lambda: len(heard) >= 2)
        assert heard == [("hello", sender), ("o:x", second)]
        nursery.cancel_scope.cancel()
    assert listener.conn is None


async def test_a_listener_that_cannot_connect_at_first_says_so_in_one_line(
    tmp_path: Path,
) -> None:
    url = f"postgresql://secret:hunter2@/foreman?host={tmp_path}"
    listener = PgListener(url)
    listener.listen("jobs", lambda payload, pid: None)
    with pytest.raises(StoreError) as raised:
        await listener.run()
    message = str(raised.value)
    assert message.startswith("cannot listen on the database: ")
    assert "\n" not in message
    assert "hunter2" not in message
    assert listener.conn is None


async def test_the_listener_listens_again_after_its_session_is_ended_and_says_so(
    postgres_url: str,
) -> None:
    heard: list[str] = []
    resyncs: list[int] = []
    signal = Signal()
    listener = PgListener(postgres_url, on_resync=lambda: signal.adder(resyncs)(1))
    listener.listen("jobs", lambda payload, pid: signal.adder(heard)(payload))
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        assert listener.conn is not None
        first = listener.conn.info.backend_pid
        await notify(postgres_url, "jobs", "before")
        await signal.until(lambda: heard == ["before"])
        assert resyncs == []
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        await signal.until(lambda: resyncs == [1])
        assert listener.conn is not None
        assert listener.conn.info.backend_pid != first
        await notify(postgres_url, "jobs", "after")
        await signal.until(lambda: heard == ["before", "after"])
        nursery.cancel_scope.cancel()


async def test_the_listeners_connection_has_keepalives(postgres_url: str) -> None:
    listener = PgListener(postgres_url)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        assert listener.conn is not None
        given = listener.conn.info.get_parameters()
        assert given["keepalives"] == "1"
        assert int(given["keepalives_idle"]) > 0
        nursery.cancel_scope.cancel()


# -- replicas --------------------------------------------------------------------------------------


@attrs.define(eq=False)
class Replica:
    """One replica's parts that job changes reach, and what they heard."""

    store: Store
    events: JobEvents
    wakeup: Wakeup
    metrics: Metrics
    changes: RemoteChanges | None = None
    nursery: trio.Nursery | None = None
    # every job published, in order
    published: list[Job] = attrs.field(factory=list)
    cancelled: list[str] = attrs.field(factory=list)
    removed: int = 0
    reloads: int = 0
    # every notification the listener handed over, own ones included
    heard: list[str] = attrs.field(factory=list)

    @property
    def tally(self) -> JobTally:
        return self.metrics.tally

    def states(self, job_id: str) -> list[JobState]:
        return [j.state for j in self.published if j.id == job_id]

    def finished(self) -> dict[str, float]:
        """Jobs counted as finished on /metrics, by outcome."""
        out: dict[str, float] = {}
        for family in self.metrics.finished.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    outcome = sample.labels["outcome"]
                    out[outcome] = out.get(outcome, 0) + sample.value
        return out


@contextlib.asynccontextmanager
async def replica(
    url: str, signal: Signal, *, start_changes: bool = True
) -> AsyncIterator[Replica]:
    events = JobEvents()
    store = await Store.open_url(url, on_change=events.publish)
    tally = JobTally()
    tally.load(await store.unfinished())
    metrics = Metrics(tally)
    me = Replica(store, events, Wakeup(), metrics)
    events.subscribe(None, metrics.on_job_change)
    events.subscribe(None, signal.adder(me.published))

    def removed() -> None:
        me.removed += 1
        signal.bump()

    async def reload() -> None:
        tally.load(await store.unfinished())
        me.reloads += 1
        signal.bump()

    me.changes = changes = RemoteChanges(
        store,
        events,
        me.wakeup,
        cancel_running=signal.adder(me.cancelled),
        on_removed=removed,
        reload=reload,
        remote=metrics.remote,
    )

    def handle(payload: str, sender: int) -> None:
        me.heard.append(payload)
        signal.bump()
        changes.handle(payload, sender)

    listener = PgListener(url, on_resync=changes.resync)
    listener.listen(JOBS_CHANNEL, handle)
    try:
        async with trio.open_nursery() as nursery:
            me.nursery = nursery
            await nursery.start(listener.run)
            if start_changes:
                await nursery.start(changes.run)
            yield me
            nursery.cancel_scope.cancel()
    finally:
        await store.close()


async def test_a_job_submitted_on_one_replica_is_published_on_the_other_once(
    postgres_url: str,
) -> None:
    signal = Signal()
    async with replica(postgres_url, signal) as a, replica(postgres_url, signal) as b:
        job = await a.store.enqueue(new_job())
        await signal.until(lambda: b.states(job.id) == [JobState.QUEUED])
        assert b.published[-1] == job
        # b's own submission reaches a; had a republished its own job's notification
        # (heard before b's), a would have published it twice by then
        other = await b.store.enqueue(new_job())
        await signal.until(lambda: a.states(other.id) == [JobState.QUEUED])
        assert a.states(job.id) == [JobState.QUEUED]
        assert b.states(other.id) == [JobState.QUEUED]
        # a heard its own notification (before b's, in commit order) and let it be
        assert job.id in a.heard


async def test_a_job_queued_on_one_replica_wakes_the_others_workers(postgres_url: str) -> None:
    signal = Signal()
    async with replica(postgres_url, signal) as a, replica(postgres_url, signal) as b:
        job = await a.store.enqueue(new_job())
        await signal.until(lambda: b.states(job.id) == [JobState.QUEUED])
        claimed = await a.store.claim(None, 600)
        assert claimed is not None
        assert claimed.id == job.id
        await signal.until(lambda: JobState.LOADING in b.states(job.id))
        woken = b.wakeup.arm()
        assert not woken.is_set()
        # put back in the queue (an outage on a's upstream): b's workers may take it
        await a.store.transition(job.id, JobState.LOADING, JobState.QUEUED)
        with trio.fail_after(DEADLINE_S):
            await woken.wait()
        assert b.states(job.id)[-1] is JobState.QUEUED


async def test_a_job_cancelled_through_one_replica_is_cancelled_where_it_runs(
    postgres_url: str,
) -> None:
    signal = Signal()
    async with replica(postgres_url, signal) as a, replica(postgres_url, signal) as b:
        job = await a.store.enqueue(new_job())
        claimed = await b.store.claim(None, 600)
        assert claimed is not None
        assert claimed.id == job.id
        await signal.until(lambda: JobState.LOADING in a.states(job.id))
        assert b.cancelled == []
        await a.store.transition(job.id, JobState.LOADING, JobState.CANCELLED)
        await signal.until(lambda: b.cancelled == [job.id])
        assert b.states(job.id)[-1] is JobState.CANCELLED
        # the replica that cancelled it was told by its own store, not again remotely
        assert a.cancelled == []


async def test_jobs_deleted_through_one_replica_tell_the_other(postgres_url: str) -> None:
    signal = Signal()
    async with replica(postgres_url, signal) as a, replica(postgres_url, signal) as b:
        jobs = [await a.store.enqueue(new_job()) for _ in range(3)]
        for job in jobs:
            await a.store.transition(job.id, JobState.QUEUED, JobState.CANCELLED)
        await signal.until(lambda: all(b.states(j.id)[-1:] == [JobState.CANCELLED] for j in jobs))
        assert b.removed == 0
        assert await a.store.delete(jobs[0].id)
        await signal.until(lambda: b.removed == 1)
        assert await a.store.purge(a.store.now() + 1) == 2
        await signal.until(lambda: b.removed == 2)
        assert a.removed == 0


async def test_a_tally_fed_only_by_remote_changes_counts_what_the_store_holds(
    postgres_url: str,
) -> None:
    signal = Signal()
    async with (
        replica(postgres_url, signal) as a,
        replica(postgres_url, signal, start_changes=False) as b,
    ):
        jobs = [
            await a.store.enqueue(new_job(f"m{i % 3}:latest", key_name=f"k{i % 2}"))
            for i in range(12)
        ]
        # b reads only once a has moved every job: it sees each one's last state alone
        # (some first seen running, some first seen already done)
        running = []
        for _ in range(8):
            claimed = await a.store.claim(None, 600)
            assert claimed is not None
            running.append(claimed.id)
            await a.store.transition(claimed.id, JobState.LOADING, JobState.WORKING)
        for job_id in running[:3]:
            await a.store.transition(job_id, JobState.WORKING, JobState.DONE)
        await a.store.transition(running[3], JobState.WORKING, JobState.QUEUED)
        await a.store.transition(running[4], JobState.WORKING, JobState.FAILED)
        waiting = [j.id for j in jobs if j.id not in running]
        await a.store.transition(waiting[0], JobState.QUEUED, JobState.CANCELLED)
        await signal.until(lambda: b.heard.count(waiting[0]) == 2)
        assert b.published == []
        assert b.nursery is not None
        assert b.changes is not None
        await b.nursery.start(b.changes.run)
        last = await a.store.enqueue(new_job("m0:latest", key_name="k1"))
        await signal.until(lambda: b.states(last.id) == [JobState.QUEUED])
        assert b.states(running[0]) == [JobState.DONE]
        assert b.states(running[5]) == [JobState.WORKING]
        truth = JobTally()
        truth.load(await a.store.unfinished())
        assert b.tally.by_state_and_model() == truth.by_state_and_model()
        assert b.tally.queued == truth.queued == 5
        assert b.tally.by_owner() == truth.by_owner()
        assert b.tally.queued_by_key() == truth.queued_by_key()
        assert b.tally.unfinished_of("k0") == truth.unfinished_of("k0")
        assert b.tally.unfinished_of("k1") == truth.unfinished_of("k1")
        # what ended is counted by the replica that ended it, not again by the other
        assert a.finished() == {"done": 3, "failed": 1, "cancelled": 1}
        assert b.finished() == {}


async def test_after_its_listener_reconnects_a_replica_reloads_and_looks_for_work(
    postgres_url: str,
) -> None:
    signal = Signal()
    async with replica(postgres_url, signal) as a:
        woken = a.wakeup.arm()
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN%' AND datname = current_database()"
            )
        with trio.fail_after(DEADLINE_S):
            await woken.wait()
        await signal.until(lambda: a.reloads == 1)


async def test_a_job_gone_before_it_is_read_counts_as_removed(postgres_url: str) -> None:
    signal = Signal()
    async with (
        replica(postgres_url, signal) as a,
        replica(postgres_url, signal, start_changes=False) as b,
    ):
        job = await a.store.enqueue(new_job())
        await a.store.transition(job.id, JobState.QUEUED, JobState.CANCELLED)
        assert await a.store.delete(job.id)
        await signal.until(lambda: b.heard == [job.id, job.id, "-"])
        assert b.nursery is not None
        assert b.changes is not None
        await b.nursery.start(b.changes.run)
        # once for the delete, once for the job it cannot find
        await signal.until(lambda: b.removed == 2)
        assert b.published == []
