"""The numbers foreman shows on /metrics, and the live tally of unfinished jobs.

Nothing here is global: the daemon makes one `Metrics` (with its own
`CollectorRegistry`) and hands it to the parts that record. Most numbers come from the
store's committed transitions, which the broadcaster hands to `Metrics.on_job_change`:
how long a job waited, how long it ran, how long a load took, how it ended. The few
things a transition cannot tell (why an upstream call failed, a retry, an embedding
relayed) are recorded where they happen. Gauges that describe the present (jobs by
state and model, the resident model, waiting clients) are read when scraped.

What belongs to one upstream carries an `upstream` label (its configured name): whether
it is up, its slots and the jobs it runs, its resident model, its loads and their
seconds, and the jobs that ended there (a job that never ran has an empty one). One
sample stays fleet-wide: `foreman_ollama_up` without labels is 1 while any upstream is.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import attrs
import trio
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from foreman.jobs import RUNNING_STATES, Job, JobState
from foreman.policy import model_of
from foreman.status import Status, idle

CONTENT_TYPE = CONTENT_TYPE_LATEST

# seconds: from a quick retry-free queue to the starvation bound and beyond
WAIT_BUCKETS = (0.05, 0.25, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RUN_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
EMBED_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@attrs.define
class Entry:
    state: JobState
    model: str
    since: float
    # when the current attempt started running (None while queued)
    started: float | None = None
    # the name of the API key that made the job (None without keys)
    owner: str | None = None
    # its residency key (model and runner options)
    key: str = ""


class JobTally:
    """Every unfinished job's state and model, kept from the broadcaster (never the
    database, except once at start). Answers "how many are queued" in O(1), which is
    what the queue limit asks on every submission."""

    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self._jobs: dict[str, Entry] = {}
        self._queued = 0
        # unfinished jobs by the API key that made them (the keys' `max_queued`)
        self._owned: collections.Counter[str] = collections.Counter()
        # the same by (owner or "", "queued" or "running"), kept as jobs move, so /metrics
        # and the dashboard read it in O(owners) however long the queue
        self._by_owner: collections.Counter[tuple[str, str]] = collections.Counter()
        # queued jobs by residency key (what a forecast of the queue reads)
        self._queued_by_key: collections.Counter[str] = collections.Counter()
        # goes up with every change taken in: a reader can tell whether anything moved
        self.version = 0

    def load(self, rows: Iterable[tuple[str, JobState, str, str | None]]) -> None:
        """Start from the database's unfinished jobs (at start, before any request)."""
        now = self._clock()
        self._jobs = {
            job_id: Entry(
                state,
                model_of(key),
                now,
                now if state in RUNNING_STATES else None,
                owner,
                key,
            )
            for job_id, state, key, owner in rows
        }
        self._queued = sum(1 for e in self._jobs.values() if e.state is JobState.QUEUED)
        self._owned = collections.Counter(
            e.owner for e in self._jobs.values() if e.owner is not None
        )
        self._queued_by_key = collections.Counter(
            e.key for e in self._jobs.values() if e.state is JobState.QUEUED
        )
        self._by_owner = collections.Counter(_owner_kind(e) for e in self._jobs.values())
        self.version += 1

    def record(self, job: Job) -> tuple[Entry | None, Entry | None]:
        """Take in a committed change; returns the job's entry before and after it."""
        now = self._clock()
        self.version += 1
        before = self._jobs.get(job.id)
        if before is not None and before.state is JobState.QUEUED:
            self._queued -= 1
            self._queued_by_key[before.key] -= 1
            if not self._queued_by_key[before.key]:
                del self._queued_by_key[before.key]
        if before is None and not job.state.terminal and job.key_name is not None:
            self._owned[job.key_name] += 1
        if before is not None:
            self._uncount(_owner_kind(before))
        if job.state.terminal:
            self._jobs.pop(job.id, None)
            if before is not None and before.owner is not None:
                self._owned[before.owner] -= 1
                if not self._owned[before.owner]:
                    del self._owned[before.owner]
            return before, None
        started = before.started if before is not None else None
        if job.state in RUNNING_STATES and started is None:
            started = now
        if job.state is JobState.QUEUED:
            started = None
            self._queued += 1
            self._queued_by_key[job.model_key] += 1
        after = Entry(job.state, model_of(job.model_key), now, started, job.key_name, job.model_key)
        self._jobs[job.id] = after
        self._by_owner[_owner_kind(after)] += 1
        return before, after

    def _uncount(self, owner_kind: tuple[str, str]) -> None:
        self._by_owner[owner_kind] -= 1
        if not self._by_owner[owner_kind]:
            del self._by_owner[owner_kind]

    def now(self) -> float:
        return self._clock()

    @property
    def queued(self) -> int:
        return self._queued

    def queued_by_key(self) -> dict[str, int]:
        """Queued jobs per residency key, in O(keys)."""
        return dict(self._queued_by_key)

    def unfinished_of(self, owner: str) -> int:
        """Unfinished jobs the API key named `owner` made, in O(1)."""
        return self._owned[owner]

    def by_state_and_model(self) -> collections.Counter[tuple[JobState, str]]:
        return collections.Counter((e.state, e.model) for e in self._jobs.values())

    def by_owner(self) -> collections.Counter[tuple[str, str]]:
        """(owner, "queued" or "running") -> unfinished jobs: the owner is the name of the
        API key that made them, "" for jobs made without a key. A copy, in O(owners)."""
        return self._by_owner.copy()


def _owner_kind(entry: Entry) -> tuple[str, str]:
    return (entry.owner or "", "queued" if entry.state is JobState.QUEUED else "running")


class Metrics:
    def __init__(self, tally: JobTally) -> None:
        self.tally = tally
        self._status: Callable[[], Status] = idle
        # True while another replica's change is told (see `remote`)
        self._remote = False
        self.registry = CollectorRegistry()
        r = self.registry
        self.finished = Counter(
            "foreman_jobs_finished",
            "Jobs that ended, by outcome and the upstream that ran their last attempt",
            ["outcome", "upstream"],
            registry=r,
        )
        self.swaps = Counter(
            "foreman_swaps",
            "Model loads the workers made (each one a swap), by upstream",
            ["upstream"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "foreman_load_seconds",
            "Seconds a swap took: unloading the previous model and loading the next",
            ["upstream"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "foreman_queue_wait_seconds",
            "Seconds a job waited in the queue before an attempt started",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.run_time = Histogram(
            "foreman_run_seconds",
            "Seconds an attempt ran (load included), however it ended",
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "foreman_upstream_errors",
            "Failed calls to Ollama, by kind (outage, transient, permanent, timeout)",
            ["kind"],
            registry=r,
        )
        self.retries = Counter(
            "foreman_retries",
            "Attempts put back in the queue after a transient failure",
            registry=r,
        )
        self.embeddings = Counter(
            "foreman_embeddings",
            "Embedding requests relayed straight to Ollama, by route and status class",
            ["route", "status"],
            registry=r,
        )
        self.embedding_seconds = Histogram(
            "foreman_embedding_seconds",
            "Seconds an embedding request took at Ollama",
            ["route"],
            buckets=EMBED_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "foreman_rejected",
            "Requests refused before they became jobs, by reason",
            ["reason"],
            registry=r,
        )
        r.register(_Present(self))

    @property
    def status(self) -> Callable[[], Status]:
        """The present, read once per scrape (set by the daemon once the parts exist)."""
        return self._status

    @status.setter
    def status(self, read: Callable[[], Status]) -> None:
        self._status = read
        # every upstream's loads show from the start, at 0, as they did with one
        for upstream in read().upstreams:
            self.swaps.labels(upstream.name)
            self.load_seconds.labels(upstream.name)

    # -- recorded from the broadcaster ----------------------------------------------------

    @contextmanager
    def remote(self) -> Iterator[None]:
        """The changes told within are other replicas' (`foreman.replication`): the tally
        takes them, since the queue and its limits are shared, but the counters and
        histograms count what this replica's own store committed, each change once over
        all replicas (and a replica sees another's jobs only now and then: a load, a wait,
        a run it never saw begin)."""
        self._remote = True
        try:
            yield
        finally:
            self._remote = False

    def on_job_change(self, job: Job) -> None:
        before, _ = self.tally.record(job)
        if self._remote:
            return
        now = self.tally.now()
        was = before.state if before is not None else None
        if was is JobState.QUEUED and job.state in RUNNING_STATES and job.queue_ms is not None:
            self.queue_wait.observe(job.queue_ms / 1000)
        # the upstream that ran the attempt (none for a job that never ran)
        upstream = job.upstream or ""
        if was is JobState.LOADING and job.state is JobState.WORKING and before is not None:
            self.swaps.labels(upstream).inc()
            self.load_seconds.labels(upstream).observe(max(0.0, now - before.since))
        if (
            was in RUNNING_STATES
            and job.state not in RUNNING_STATES
            and before is not None
            and before.started is not None
        ):
            self.run_time.observe(max(0.0, now - before.started))
        if job.state.terminal:
            self.finished.labels(job.state.value, upstream).inc()

    # -- recorded where they happen -------------------------------------------------------

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors.labels(kind).inc()

    def retry(self) -> None:
        self.retries.inc()

    def embedding(self, route: str, status: int, seconds: float) -> None:
        self.embeddings.labels(route, f"{status // 100}xx").inc()
        self.embedding_seconds.labels(route).observe(seconds)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Present:
    """The gauges read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        jobs = GaugeMetricFamily(
            "foreman_jobs", "Unfinished jobs by state and model", labels=["state", "model"]
        )
        counts = m.tally.by_state_and_model()
        for state in (JobState.QUEUED, JobState.LOADING, JobState.WORKING):
            if not any(s is state for s, _ in counts):
                jobs.add_metric([state.value, ""], 0)
        for (state, model), n in sorted(counts.items()):
            jobs.add_metric([state.value, model], n)
        yield jobs
        status = m.status()
        owners = GaugeMetricFamily(
            "foreman_owner_jobs",
            'Unfinished jobs by the name of the API key that made them ("" without a'
            " key), queued or running",
            labels=["owner", "state"],
        )
        for (owner, kind), n in sorted(m.tally.by_owner().items()):
            owners.add_metric([owner, kind], n)
        yield owners
        resident = GaugeMetricFamily(
            "foreman_resident_model",
            "1 for the chat model each upstream holds",
            labels=["upstream", "model"],
        )
        for u in status.upstreams:
            if u.resident:
                resident.add_metric([u.name, u.resident.split(" ", 1)[0]], 1)
        yield resident
        yield GaugeMetricFamily(
            "foreman_sync_waiters",
            "Clients connected and waiting for a synchronous job's answer",
            value=status.waiters,
        )
        up = GaugeMetricFamily(
            "foreman_ollama_up",
            "1 while the upstream's worker can reach it; without labels: while any can",
            labels=["upstream"],
        )
        # fleet-wide, as before there were several upstreams
        up.add_metric([], int(status.online))
        slots = GaugeMetricFamily(
            "foreman_upstream_slots", "Jobs the upstream runs at once", labels=["upstream"]
        )
        running = GaugeMetricFamily(
            "foreman_upstream_running",
            "Jobs the upstream runs now (loading or working)",
            labels=["upstream"],
        )
        for u in status.upstreams:
            up.add_metric([u.name], int(u.online))
            slots.add_metric([u.name], u.slots)
            running.add_metric([u.name], len(u.running))
        yield up
        yield slots
        yield running
        yield GaugeMetricFamily(
            "foreman_accepting_jobs",
            "1 while new jobs are taken (0 once shutdown began)",
            value=int(status.accepting),
        )
        if status.leases is not None:
            leases = GaugeMetricFamily(
                "foreman_leases",
                "Replicas on PostgreSQL: 1 for each upstream this replica drives (holds"
                ' the lease of), 0 for the others; lease "janitor": it runs the janitor',
                labels=["lease"],
            )
            for u in status.upstreams:
                leases.add_metric([f"upstream:{u.name}"], int(u.name in status.leases.upstreams))
            leases.add_metric(["janitor"], int(status.leases.janitor))
            yield leases


__all__ = ["CONTENT_TYPE", "JobTally", "Metrics"]
