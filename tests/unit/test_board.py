"""The dashboard's data: the swap history and headline in the store, and the Board that
hands changes to viewers."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Sequence
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foreman.api.dashboard import visible_summary
from foreman.board import (
    ACTIVITY_REFRESH,
    BATCH_SECONDS,
    MAX_SPACING,
    MIN_SPACING,
    POKE,
    Batch,
    Board,
    Change,
    Poke,
    Resync,
)
from foreman.jobs import Job, JobState
from foreman.status import Status, WorkerStatistics
from foreman.store import Activity, Overview, Store, SyncStore, connect

from ._helpers import FakeClock, later, new_job, valid


def run_job(store: SyncStore, resident: str | None) -> Job:
    """Claim the next job and finish it, loading its model if it is not `resident`."""
    job = store.claim(resident, max_wait=600)
    assert job is not None
    if job.state is JobState.LOADING:
        job = store.transition(job.id, JobState.LOADING, JobState.WORKING, loaded=True)
        assert job is not None
    done = store.transition(job.id, JobState.WORKING, JobState.DONE, result={})
    assert done is not None
    return done


# -- the swap history ---------------------------------------------------------------------


def test_a_load_is_recorded_with_the_move_that_ends_it_and_counts_the_jobs_it_served(
    store: SyncStore, clock: FakeClock
) -> None:
    for model in ["a:latest", "a:latest", "b:latest", "a:latest"]:
        store.enqueue(new_job(model))
        clock.advance(1)
    first = store.claim(None, max_wait=600)
    assert first is not None
    assert first.state is JobState.LOADING
    assert store.overview().swaps == []  # a load in progress is not a swap yet
    clock.advance(2.5)
    store.transition(first.id, JobState.LOADING, JobState.WORKING, loaded=True)
    (swap,) = store.overview().swaps
    assert (swap.model_key, swap.job_id, swap.jobs) == ("a:latest", first.id, 1)
    assert swap.loaded_at - swap.started_at == pytest.approx(2.5)
    store.transition(first.id, JobState.WORKING, JobState.DONE, result={})
    resident = "a:latest"
    for _ in range(3):
        job = run_job(store, resident)
        resident = job.model_key
    swaps = [(s.model_key, s.jobs) for s in store.overview().swaps]
    assert swaps == [("a:latest", 3), ("b:latest", 1)]


def test_a_move_to_working_without_a_load_records_no_swap(store: SyncStore) -> None:
    store.enqueue(new_job("a:latest"))
    job = store.claim(None, max_wait=600)
    assert job is not None
    store.transition(job.id, JobState.LOADING, JobState.WORKING)
    assert store.overview().swaps == []


def test_jobs_of_a_resident_model_loaded_before_any_recorded_swap_count_nowhere(
    store: SyncStore,
) -> None:
    store.enqueue(new_job("b:latest"))
    run_job(store, None)
    store.enqueue(new_job("a:latest"))
    run_job(store, "a:latest")  # resident at start: no load, and not b's job
    assert [(s.model_key, s.jobs) for s in store.overview().swaps] == [("b:latest", 1)]


def test_old_swaps_are_pruned(store: SyncStore, clock: FakeClock) -> None:
    for model in ["a:latest", "b:latest"]:
        store.enqueue(new_job(model))
        run_job(store, None)
        clock.advance(100)
    assert store.prune_swaps(clock.now - 150) == 1
    assert [s.model_key for s in store.overview().swaps] == ["b:latest"]


# -- the headline -----------------------------------------------------------------------


@given(st.lists(st.sampled_from(["a:latest", "b:latest", "c:latest"]), min_size=1, max_size=12))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_arrival_loads_count_one_load_per_change_of_model_in_arrival_order(
    tmp_path_factory: pytest.TempPathFactory, arrivals: list[str]
) -> None:
    clock = FakeClock()
    conn = connect(tmp_path_factory.mktemp("db") / "f.db")
    try:
        store = SyncStore(conn, clock)
        for model in arrivals:
            store.enqueue(new_job(model))
            clock.advance(1)
        resident = None
        for _ in arrivals:
            resident = run_job(store, resident).model_key
            clock.advance(1)
        activity = store.activity(since=0)
        expected = 1 + sum(1 for x, y in itertools.pairwise(arrivals) if x != y)
        assert activity.arrival_loads == expected
        # drained by model: one load per distinct model
        assert activity.loads == len(set(arrivals))
        assert activity.finished == {"done": len(arrivals)}
    finally:
        conn.close()


def test_the_headline_counts_only_jobs_that_ran_in_the_window(
    store: SyncStore, clock: FakeClock
) -> None:
    store.enqueue(new_job("a:latest"))
    run_job(store, None)
    clock.advance(7200)
    since = clock.now - 10
    cancelled = store.enqueue(new_job("b:latest"))
    store.transition(cancelled.id, JobState.QUEUED, JobState.CANCELLED)
    store.enqueue(new_job("c:latest"))
    run_job(store, "a:latest")
    activity = store.activity(since)
    # the old job and the one cancelled before it ran are not counted
    assert activity.finished == {"done": 1}
    assert (activity.loads, activity.arrival_loads) == (1, 1)
    assert activity.done_last_hour == 1


def test_a_load_that_failed_counts_alike_in_both_orders(store: SyncStore) -> None:
    """Nothing is 'avoided' by a job whose load failed: both sides count its load."""
    store.enqueue(new_job("a:latest"))
    job = store.claim(None, max_wait=600)
    assert job is not None
    assert job.state is JobState.LOADING
    store.transition(job.id, JobState.LOADING, JobState.FAILED, error="model not found")
    activity = store.activity(since=0)
    assert (activity.loads, activity.arrival_loads) == (1, 1)
    assert store.overview().swaps == []


def test_overview_reads_waiting_jobs_per_model_without_scanning_the_table(
    store: SyncStore, clock: FakeClock
) -> None:
    for model, priority in [("a:latest", 0), ("b:latest", 2), ("a:latest", 5)]:
        store.enqueue(new_job(model, priority=priority))
        clock.advance(1)
    waiting = {w.model_key: w for w in store.overview().waiting}
    assert (waiting["a:latest"].count, waiting["a:latest"].top_priority) == (2, 5)
    assert waiting["a:latest"].oldest_enqueued_at == 1000.0
    assert (waiting["b:latest"].count, waiting["b:latest"].oldest_enqueued_at) == (1, 1001.0)
    plan = store.conn.execute(
        "EXPLAIN QUERY PLAN SELECT model_key, count(*), min(enqueued_at), max(priority)"
        " FROM jobs INDEXED BY jobs_queue_model WHERE state = 'queued' GROUP BY model_key"
    ).fetchall()
    assert "USING INDEX jobs_queue_model" in str(plan)


def record_load(
    store: SyncStore, model_key: str, upstream: str | None, started: float, loaded: float
) -> None:
    """A row of the swap history as the workers write it (`upstream` None: as a foreman
    from before the fleet wrote it)."""
    store.conn.execute(
        "INSERT INTO swaps (model_key, job_id, started_at, loaded_at, upstream)"
        " VALUES (?, 'J', ?, ?, ?)",
        (model_key, started, loaded, upstream),
    )
    store.conn.commit()


def test_overview_reads_each_loads_upstream_and_the_running_jobs_in_the_order_asked(
    store: SyncStore,
) -> None:
    record_load(store, "a:latest", None, 1.0, 2.0)
    record_load(store, "b:latest", "gpu1", 3.0, 4.0)
    jobs = [store.enqueue(new_job(m)) for m in ("a:latest", "b:latest", "c:latest")]
    for job in jobs[:2]:
        store.transition(job.id, JobState.QUEUED, JobState.WORKING)
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    try:
        overview = store.overview([jobs[1].id, "01ARZ3NDEKTSV4RRFFQ69G5FAV", jobs[0].id])
    finally:
        store.conn.set_trace_callback(None)
    assert [(s.model_key, s.upstream) for s in overview.swaps] == [
        ("a:latest", None),
        ("b:latest", "gpu1"),
    ]
    # read by id, in one query, in the order asked; an id no longer stored is left out
    assert [j.id for j in overview.running] == [jobs[1].id, jobs[0].id]
    assert sum("FROM jobs WHERE id IN" in q for q in statements) == 1
    assert [w.model_key for w in overview.waiting] == ["c:latest"]
    assert store.overview().running == []


# -- the Board --------------------------------------------------------------------------


@pytest.fixture
async def async_store(tmp_path: Path) -> Store:
    return await Store.open(tmp_path / "board.db", clock=FakeClock())


async def test_viewers_get_every_change_in_order_and_one_poke_at_a_time(
    async_store: Store,
) -> None:
    board = Board(async_store, max_wait=600)
    feed = board.open_feed()
    job = await async_store.enqueue(new_job())
    board.on_job_change(job)
    for _ in range(100):
        board.poke()
    board.on_job_change(job)
    items = [feed.receive.receive_nowait() for _ in range(3)]
    assert isinstance(items[0], Change)
    assert items[0].version == 1
    assert isinstance(items[1], Poke)
    assert isinstance(items[2], Change)
    assert items[2].version == 2
    with pytest.raises(trio.WouldBlock):
        feed.receive.receive_nowait()
    feed.took_poke(POKE)
    board.poke()
    assert isinstance(feed.receive.receive_nowait(), Poke)
    feed.stop()
    assert board.viewers == 0


async def test_a_purge_asks_each_viewer_once_for_a_new_snapshot(async_store: Store) -> None:
    board = Board(async_store, max_wait=600)
    feed = board.open_feed()
    before = board.version
    board.jobs_removed()
    board.jobs_removed()
    board.poke()
    taken = [feed.receive.receive_nowait() for _ in range(2)]
    assert isinstance(taken[0], Resync)
    assert type(taken[1]) is Poke
    with pytest.raises(trio.WouldBlock):
        feed.receive.receive_nowait()
    assert board.version > before  # what the store says changed (fewer finished jobs)
    feed.took_poke(taken[0])
    board.jobs_removed()
    assert isinstance(feed.receive.receive_nowait(), Resync)


async def test_a_viewer_that_falls_behind_is_cut_off_and_shutdown_ends_the_rest(
    async_store: Store,
) -> None:
    board = Board(async_store, max_wait=600)
    slow = board.open_feed(buffer=2)
    fast = board.open_feed()
    job = await async_store.enqueue(new_job())
    for _ in range(3):
        board.on_job_change(job)
    assert board.viewers == 1
    received = [slow.receive.receive_nowait() for _ in range(2)]
    assert len(received) == 2
    with pytest.raises(trio.EndOfChannel):
        await slow.receive.receive()
    board.close_all()
    for _ in range(3):
        fast.receive.receive_nowait()
    with pytest.raises(trio.EndOfChannel):
        await fast.receive.receive()
    late = board.open_feed()
    with pytest.raises(trio.EndOfChannel):
        await late.receive.receive()


async def test_the_summary_is_read_once_per_change_and_tokens_are_read_fresh(
    async_store: Store,
) -> None:
    tokens = [0]
    reads: list[Sequence[str]] = []
    board = Board(
        async_store,
        max_wait=600,
        status=lambda: Status(
            (WorkerStatistics(resident="m:latest", running=("x",), tokens=tokens[0]),)
        ),
    )
    original = async_store.overview

    async def counted(running_ids: Sequence[str] = (), swaps: int = 40) -> Overview:
        reads.append(running_ids)
        return await original(running_ids, swaps)

    async_store.overview = counted  # type: ignore[method-assign]
    first = await board.summary()
    tokens[0] = 7
    board.poke()
    second = await board.summary()
    assert reads == [["x"]]
    assert first["running"] is None  # no job "x" in the store
    assert second["resident"]["chat"] == {"model": "m:latest", "key": "m:latest", "since": None}
    job = await async_store.enqueue(new_job())
    board.on_job_change(job)
    third = await board.summary()
    assert len(reads) == 2
    assert [w["count"] for w in third["waiting"]] == [1]
    assert MIN_SPACING <= board.spacing <= MAX_SPACING


async def test_the_headline_is_read_at_most_once_a_second_and_caught_up_after_a_burst(
    async_store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    board = Board(async_store, max_wait=600)
    reads: list[float] = []
    original = async_store.activity

    async def counted(since: float) -> Activity:
        reads.append(trio.current_time())
        return await original(since)

    async_store.activity = counted  # type: ignore[method-assign]
    await board.summary()
    assert len(reads) == 1
    assert board.refresh_due() is None
    for _ in range(5):  # a burst of changes within the second
        board.on_job_change(await async_store.enqueue(new_job()))
        await board.summary()
    assert len(reads) == 1
    due = board.refresh_due()
    assert due is not None
    assert due == pytest.approx(reads[0] + ACTIVITY_REFRESH, abs=0.1)
    await trio.sleep_until(due)
    await board.summary()
    assert len(reads) == 2
    assert board.refresh_due() is None


async def test_embedding_use_is_shown_and_pokes_only_when_the_model_changes(
    async_store: Store,
) -> None:
    board = Board(async_store, max_wait=600)
    feed = board.open_feed()
    board.embedding_used("nomic-embed-text:latest")
    assert isinstance(feed.receive.receive_nowait(), Poke)
    feed.took_poke(POKE)
    board.embedding_used("nomic-embed-text:latest")
    with pytest.raises(trio.WouldBlock):
        feed.receive.receive_nowait()
    summary = await board.summary()
    assert summary["resident"]["embedding"]["model"] == "nomic-embed-text:latest"


# -- a stream's next batch ----------------------------------------------------------------


async def timed(step: Awaitable[Batch | None]) -> tuple[Batch | None, float]:
    began = trio.current_time()
    out = await step
    return out, trio.current_time() - began


async def test_a_burst_is_one_batch_of_each_jobs_latest_state_sent_after_the_gather(
    async_store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    board = Board(async_store, max_wait=600)
    a = await async_store.enqueue(new_job())
    b = await async_store.enqueue(new_job())
    feed = board.open_feed()
    now = trio.current_time()
    async with trio.open_nursery() as nursery:
        later(nursery, now + 3.0, lambda: board.on_job_change(a))
        later(nursery, now + 3.01, lambda: board.on_job_change(b))
        running = attrs.evolve(a, state=JobState.WORKING)
        later(nursery, now + 3.02, lambda: board.on_job_change(running))
        # after the gather: the next batch's
        later(nursery, now + 3.5, lambda: board.on_job_change(b))
        batch, took = await timed(feed.next_batch(15.0, 0, valid))
        assert took == pytest.approx(3.0 + BATCH_SECONDS)
        assert batch is not None
        # a once, in its latest state, after b, whose last change came before a's
        assert [(c.job.id, c.job.state, c.version) for c in batch.changes] == [
            (b.id, JobState.QUEUED, 2),
            (a.id, JobState.WORKING, 3),
        ]
        assert (batch.resync, batch.ended) == (False, False)
        batch = await feed.next_batch(15.0, 0, valid)
        assert batch is not None
        assert [c.version for c in batch.changes] == [4]
        assert trio.current_time() - now == pytest.approx(3.5 + BATCH_SECONDS)


async def test_a_quiet_wait_returns_nothing_when_it_is_over(
    async_store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    feed = Board(async_store, max_wait=600).open_feed()
    batch, took = await timed(feed.next_batch(2.5, 0, valid))
    assert batch is None
    assert took == pytest.approx(2.5)
    batch, took = await timed(feed.next_batch(0.0, 0, valid))
    assert (batch, took) == (None, 0.0)


async def test_a_batch_leaves_out_what_the_snapshot_held_and_other_keys_jobs(
    async_store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    board = Board(async_store, max_wait=600)
    early = attrs.evolve(await async_store.enqueue(new_job()), key_name="svc")
    mine = attrs.evolve(await async_store.enqueue(new_job()), key_name="svc")
    theirs = attrs.evolve(await async_store.enqueue(new_job()), key_name="other")
    feed = board.open_feed(owner="svc")
    board.on_job_change(early)  # version 1: in the snapshot read at version 1
    seen = board.version
    board.on_job_change(theirs)
    board.on_job_change(mine)
    batch = await feed.next_batch(15.0, seen, valid)
    assert batch is not None
    assert [c.job.id for c in batch.changes] == [mine.id]
    everything = board.open_feed()
    board.on_job_change(theirs)
    batch = await everything.next_batch(15.0, seen, valid)
    assert batch is not None
    assert [c.job.id for c in batch.changes] == [theirs.id]


async def test_pokes_and_purges_are_taken_so_the_next_ones_arrive(
    async_store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    board = Board(async_store, max_wait=600)
    feed = board.open_feed()
    board.poke()
    assert await feed.next_batch(15.0, 0, valid) == Batch([])
    board.poke()
    board.jobs_removed()
    assert await feed.next_batch(15.0, 0, valid) == Batch([], resync=True)
    board.jobs_removed()
    board.poke()
    assert await feed.next_batch(15.0, 0, valid) == Batch([], resync=True)


async def test_a_key_that_no_longer_stands_ends_the_batch_before_any_gather(
    async_store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    board = Board(async_store, max_wait=600)
    feed = board.open_feed()
    board.on_job_change(await async_store.enqueue(new_job()))
    batch, took = await timed(feed.next_batch(15.0, 0, lambda: False))
    assert (batch, took) == (Batch([], ended=True), 0.0)
    # a quiet wait asks too, so a revoked key ends an idle stream at its keep-alive
    batch, took = await timed(board.open_feed().next_batch(4.0, 0, lambda: False))
    assert batch == Batch([], ended=True)
    assert took == pytest.approx(4.0)


async def test_a_feed_that_ends_sends_what_it_gathered_and_says_it_ended(
    async_store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    board = Board(async_store, max_wait=600)
    job = await async_store.enqueue(new_job())
    feed = board.open_feed()
    now = trio.current_time()
    async with trio.open_nursery() as nursery:
        later(nursery, now + 1.0, lambda: board.on_job_change(job))
        later(nursery, now + 1.0 + BATCH_SECONDS / 2, board.close_all)
        batch = await feed.next_batch(15.0, 0, valid)
    assert batch is not None
    assert [c.version for c in batch.changes] == [1]
    assert batch.ended
    # once ended, at once and with nothing
    batch, took = await timed(feed.next_batch(15.0, 0, valid))
    assert (batch, took) == (Batch([], ended=True), 0.0)


# -- several upstreams --------------------------------------------------------------------


async def test_the_summary_shows_one_lane_per_upstream_with_its_model_slots_and_jobs(
    async_store: Store,
) -> None:
    sync = async_store.sync
    record_load(sync, "a:latest", None, 900.0, 901.0)  # before the fleet: the first's
    record_load(sync, "b:latest", "gpu1", 950.0, 952.5)
    record_load(sync, "a:latest", "gpu0", 960.0, 961.0)
    a1, a2, b1 = [await async_store.enqueue(new_job(m)) for m in ("a:latest",) * 2 + ("b:latest",)]
    for job in (a1, a2, b1):
        await async_store.transition(job.id, JobState.QUEUED, JobState.WORKING)
    await async_store.enqueue(new_job("b:latest"))
    await async_store.enqueue(new_job("c:latest"))
    gpu0 = WorkerStatistics(
        name="gpu0", slots=4, resident="a:latest", running=(a1.id, a2.id), tokens=9, online=True
    )
    gpu1 = WorkerStatistics(
        name="gpu1", slots=1, resident="b:latest", running=(b1.id,), tokens=4, loading=True
    )
    board = Board(async_store, max_wait=600, status=lambda: Status((gpu0, gpu1)))
    summary = await board.summary()

    lanes = summary["upstreams"]
    assert [
        (u["name"], u["online"], u["slots"], u["in_use"], u["loading"], u["tokens"]) for u in lanes
    ] == [("gpu0", True, 4, 2, False, 9), ("gpu1", False, 1, 1, True, 4)]
    # each upstream's chat model, loaded since its own latest load of it
    assert [u["chat"] for u in lanes] == [
        {"model": "a:latest", "key": "a:latest", "since": 961.0},
        {"model": "b:latest", "key": "b:latest", "since": 952.5},
    ]
    # tokens are counted per upstream: a job's own only when it runs alone there
    assert [(j["id"], j["upstream"], j["tokens"]) for j in lanes[0]["running"]] == [
        (a1.id, "gpu0", None),
        (a2.id, "gpu0", None),
    ]
    assert [(j["id"], j["upstream"], j["tokens"]) for j in lanes[1]["running"]] == [
        (b1.id, "gpu1", 4)
    ]
    assert summary["running"]["id"] == a1.id
    assert summary["resident"]["chat"] == lanes[0]["chat"]
    # a load with no upstream recorded goes on the first upstream's lane
    assert [(s["model"], s["upstream"]) for s in summary["swaps"]] == [
        ("a:latest", "gpu0"),
        ("b:latest", "gpu1"),
        ("a:latest", "gpu0"),
    ]
    # a model loaded on any upstream is resident: its queue runs without a swap
    assert [(w["model"], w["resident"]) for w in summary["waiting"]] == [
        ("b:latest", True),
        ("c:latest", False),
    ]
    assert summary["ollama_up"] is True  # one of the two is reachable


async def test_a_key_that_sees_only_its_own_jobs_sees_no_one_elses_on_any_lane(
    async_store: Store,
) -> None:
    mine = await async_store.enqueue(new_job("a:latest", key_name="svc", ref="mine"))
    theirs = await async_store.enqueue(new_job("b:latest", key_name="other", ref="secret"))
    for job in (mine, theirs):
        await async_store.transition(job.id, JobState.QUEUED, JobState.WORKING)
    status = Status(
        (
            WorkerStatistics(name="gpu0", resident="b:latest", running=(theirs.id,)),
            WorkerStatistics(name="gpu1", resident="a:latest", running=(mine.id,)),
        )
    )
    board = Board(async_store, max_wait=600, status=lambda: status)
    seen = visible_summary(await board.summary(), "svc")
    (first,), (second,) = (lane["running"] for lane in seen["upstreams"])
    assert "id" not in first
    assert "ref" not in first
    assert (first["model"], first["upstream"]) == ("b:latest", "gpu0")
    assert (second["id"], second["ref"]) == (mine.id, "mine")
    assert "id" not in seen["running"]
