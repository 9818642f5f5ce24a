"""The present as one snapshot: the worker's statistics, and what the board and /metrics
read through one callable."""

from __future__ import annotations

import attrs
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from foreman.board import Board
from foreman.daemon import status_reader
from foreman.events import JobEvents, Wakeup
from foreman.jobs import JobState
from foreman.metrics import JobTally, Metrics
from foreman.queue import JobQueue
from foreman.status import Status, WorkerStatistics
from foreman.store import Store, SyncStore
from foreman.tickets import Tickets
from foreman.upstream import Upstream
from foreman.worker import Running, Worker, WorkerSettings

from ._helpers import stored_job


@pytest.fixture
def worker(store: SyncStore) -> Worker:
    http = httpx.AsyncClient(base_url="http://ollama", transport=httpx.MockTransport(_unused))
    return Worker(Store(store), Upstream(http), Tickets(), Wakeup(), WorkerSettings())


def _unused(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no call to Ollama expected: {request.url}")


def _scrape(metrics: Metrics) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def test_the_worker_statistics_say_what_it_holds(worker: Worker) -> None:
    # alone, the upstream is named after its URL's host:port, with one slot
    assert worker.statistics() == WorkerStatistics(
        name="ollama", url="http://ollama", resident=None, running=(), tokens=0, online=False
    )
    worker.resident = "llama3:latest"
    worker.online = True
    worker.jobs["J1"] = Running("J1", trio.CancelScope(), JobState.WORKING, tokens=7)
    assert worker.statistics() == WorkerStatistics(
        name="ollama",
        url="http://ollama",
        resident="llama3:latest",
        running=("J1",),
        tokens=7,
        online=True,
    )
    # a snapshot: later progress does not change one already taken
    taken = worker.statistics()
    worker.jobs["J1"].tokens = 8
    assert taken.tokens == 7
    assert worker.statistics().tokens == 8


def test_the_status_joins_the_worker_the_queue_and_the_relay(
    worker: Worker, store: SyncStore
) -> None:
    tickets = Tickets()
    queue = JobQueue(Store(store), tickets, Wakeup(), JobEvents(), worker.cancel_running)
    read = status_reader([worker], queue, tickets)
    assert read() == Status(
        (WorkerStatistics(name="ollama", url="http://ollama"),), accepting=True, waiters=0
    )
    worker.resident = "llama3:latest"
    worker.online = True
    tickets.attach("J1")
    tickets.attach("J2")
    queue.accepting = False
    assert read() == Status(
        (
            WorkerStatistics(
                name="ollama", url="http://ollama", resident="llama3:latest", online=True
            ),
        ),
        accepting=False,
        waiters=2,
    )


def test_a_scrape_reads_the_status_once_and_shows_it() -> None:
    metrics = Metrics(JobTally())
    reads = []

    def status() -> Status:
        reads.append(1)
        worker = WorkerStatistics(name="gpu0", resident="llama3:latest num_ctx=8192", online=True)
        return Status((worker,), accepting=False, waiters=3)

    metrics.status = status
    reads.clear()  # wiring reads the upstreams' names once
    scraped = _scrape(metrics)
    assert len(reads) == 1
    assert scraped["foreman_resident_model{model=llama3:latest,upstream=gpu0}"] == 1
    assert scraped["foreman_sync_waiters{}"] == 3
    assert scraped["foreman_ollama_up{}"] == 1
    assert scraped["foreman_accepting_jobs{}"] == 0


def test_before_the_parts_are_wired_the_metrics_show_an_idle_foreman() -> None:
    scraped = _scrape(Metrics(JobTally()))
    assert not any(name.startswith("foreman_resident_model{") for name in scraped)
    assert scraped["foreman_sync_waiters{}"] == 0
    assert scraped["foreman_ollama_up{}"] == 0
    assert scraped["foreman_accepting_jobs{}"] == 1


async def test_a_dashboard_summary_reads_the_status_once_and_shows_it(store: SyncStore) -> None:
    reads = []

    def status() -> Status:
        reads.append(1)
        worker = WorkerStatistics(resident="llama3:latest", running=("J1",), tokens=5, online=True)
        return Status((worker,), accepting=False, waiters=2)

    board = Board(Store(store), max_wait=600, status=status)
    summary = await board.summary()
    assert len(reads) == 1
    assert summary["resident"]["chat"]["key"] == "llama3:latest"
    assert (summary["ollama_up"], summary["accepting"]) == (True, False)


def test_each_upstream_shows_under_its_own_label_and_up_is_also_fleet_wide() -> None:
    metrics = Metrics(JobTally())
    gpu0 = WorkerStatistics(
        name="gpu0", slots=4, resident="llama3:latest", running=("J1", "J2"), online=True
    )
    gpu1 = WorkerStatistics(name="gpu1", slots=1, resident="mistral:latest num_ctx=8192")
    metrics.status = lambda: Status((gpu0, gpu1))
    scraped = _scrape(metrics)
    assert scraped["foreman_ollama_up{}"] == 1  # any upstream up
    assert scraped["foreman_ollama_up{upstream=gpu0}"] == 1
    assert scraped["foreman_ollama_up{upstream=gpu1}"] == 0
    assert scraped["foreman_upstream_slots{upstream=gpu0}"] == 4
    assert scraped["foreman_upstream_slots{upstream=gpu1}"] == 1
    assert scraped["foreman_upstream_running{upstream=gpu0}"] == 2
    assert scraped["foreman_upstream_running{upstream=gpu1}"] == 0
    assert scraped["foreman_resident_model{model=llama3:latest,upstream=gpu0}"] == 1
    assert scraped["foreman_resident_model{model=mistral:latest,upstream=gpu1}"] == 1
    # every upstream's loads show from the start
    assert scraped["foreman_swaps_total{upstream=gpu0}"] == 0
    assert scraped["foreman_load_seconds_count{upstream=gpu1}"] == 0


def test_loads_and_finished_jobs_are_counted_for_the_upstream_that_ran_them() -> None:
    clock = [100.0]
    metrics = Metrics(JobTally(clock=lambda: clock[0]))
    metrics.status = lambda: Status((WorkerStatistics(name="gpu0"), WorkerStatistics(name="gpu1")))
    never_ran = stored_job("J0")
    metrics.on_job_change(never_ran)
    for job_id, upstream, load in (("J1", "gpu1", 2.5), ("J2", "gpu0", 1.0), ("J3", "gpu1", 0.5)):
        queued = stored_job(job_id)
        metrics.on_job_change(queued)
        metrics.on_job_change(attrs.evolve(queued, state=JobState.LOADING, upstream=upstream))
        clock[0] += load
        metrics.on_job_change(attrs.evolve(queued, state=JobState.WORKING, upstream=upstream))
        metrics.on_job_change(attrs.evolve(queued, state=JobState.DONE, upstream=upstream))
    metrics.on_job_change(attrs.evolve(never_ran, state=JobState.CANCELLED))
    scraped = _scrape(metrics)
    assert scraped["foreman_swaps_total{upstream=gpu1}"] == 2
    assert scraped["foreman_swaps_total{upstream=gpu0}"] == 1
    assert scraped["foreman_load_seconds_sum{upstream=gpu1}"] == 3.0
    assert scraped["foreman_load_seconds_sum{upstream=gpu0}"] == 1.0
    assert scraped["foreman_jobs_finished_total{outcome=done,upstream=gpu1}"] == 2
    assert scraped["foreman_jobs_finished_total{outcome=done,upstream=gpu0}"] == 1
    # a job that never ran ended on no upstream
    assert scraped["foreman_jobs_finished_total{outcome=cancelled,upstream=}"] == 1


def test_another_replicas_changes_move_the_tally_and_count_nowhere_else() -> None:
    """Each change is counted by the replica that committed it; the others see another's
    jobs in their latest state only (first seen working, first seen done)."""
    metrics = Metrics(JobTally(clock=lambda: 0.0))
    queued = stored_job("J1", owner="batch")
    with metrics.remote():
        metrics.on_job_change(attrs.evolve(queued, state=JobState.WORKING, upstream="gpu0"))
        metrics.on_job_change(attrs.evolve(stored_job("J2"), state=JobState.DONE))
        metrics.on_job_change(stored_job("J3"))
    assert metrics.tally.by_owner() == {("batch", "running"): 1, ("", "queued"): 1}
    with metrics.remote():
        metrics.on_job_change(attrs.evolve(queued, state=JobState.DONE, upstream="gpu0"))
    scraped = _scrape(metrics)
    assert not any(name.startswith("foreman_jobs_finished_total") for name in scraped)
    assert scraped["foreman_run_seconds_count{}"] == 0
    assert metrics.tally.by_owner() == {("", "queued"): 1}
    assert metrics.tally.unfinished_of("batch") == 0
    # this replica's own change is counted as ever
    metrics.on_job_change(attrs.evolve(stored_job("J3"), state=JobState.CANCELLED))
    assert _scrape(metrics)["foreman_jobs_finished_total{outcome=cancelled,upstream=}"] == 1


def test_unfinished_jobs_are_counted_by_owner_queued_and_running() -> None:
    """Per owner (the key's name, never the key; "" without one): what /metrics shows
    and what a key's max_queued is checked against."""
    tally = JobTally(clock=lambda: 0.0)
    tally.load([("old", JobState.WORKING, "m", "batch")])
    metrics = Metrics(tally)
    for job_id, state, owner in (
        ("a", JobState.QUEUED, "batch"),
        ("b", JobState.QUEUED, "batch"),
        ("c", JobState.QUEUED, None),
        ("b", JobState.LOADING, "batch"),
        ("a", JobState.DONE, "batch"),
    ):
        tally.record(stored_job(job_id, state, owner))
    scraped = _scrape(metrics)
    assert scraped["foreman_owner_jobs{owner=batch,state=running}"] == 2
    assert scraped["foreman_owner_jobs{owner=,state=queued}"] == 1
    assert "foreman_owner_jobs{owner=batch,state=queued}" not in scraped
    assert tally.unfinished_of("batch") == 2
    tally.record(stored_job("old", JobState.FAILED, "batch"))
    tally.record(stored_job("b", JobState.CANCELLED, "batch"))
    assert tally.unfinished_of("batch") == 0
    # a retried job is unfinished again
    tally.record(stored_job("a", JobState.QUEUED, "batch"))
    assert tally.unfinished_of("batch") == 1
