"""One foreman's store on PostgreSQL beside the same store on SQLite, through the `Store`
face foreman uses (its worker thread, its group commit), in one run.

- Enqueue rate: many concurrent submitters, committed together (group commit), each job
  durable before its submitter hears back; SQLite's run and PostgreSQL's alternate.
- Claim latency: `Store.claim_on` for an idle lane, then the end of the job it started,
  with 1,000 and 100,000 jobs queued over four models; blocks of claims alternate between
  the two stores, open side by side.

PostgreSQL runs on a throwaway cluster of its own with fsync and synchronous_commit on
(pgserver.py), so that each backend's synced commits wait for the disk.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import trio

from foreman.jobs import JobState
from foreman.policy import Lane, LoadCosts
from foreman.store import Store
from tests.pg.cluster import PostgresCluster

from .common import ms, percentile
from .durability import _fresh, _new
from .pgserver import database
from .scale import MODELS, QUEUE_COLUMNS, fill_queue, queue_rows

BACKENDS = ("sqlite", "postgres")
SUBMITTERS = 32
LANE = "gpu0"


@asynccontextmanager
async def opened(store: Store) -> AsyncIterator[Store]:
    try:
        yield store
    finally:
        with trio.move_on_after(30, shield=True):
            await store.close()


async def _submit(store: Store, jobs: int, submitters: int) -> float:
    """Jobs/s accepted by `store.submit` from `submitters` concurrent callers."""
    per = jobs // submitters

    async def submitter(first: int) -> None:
        for i in range(first, first + per):
            await store.submit(_new(i))

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for s in range(submitters):
            nursery.start_soon(submitter, s * per)
    return per * submitters / (time.perf_counter() - started)


def enqueue(work: Path, cluster: PostgresCluster, quick: bool, flip: bool) -> dict[str, Any]:
    """One repetition: the same submissions on a fresh SQLite file and a fresh PostgreSQL
    database, one after the other (`flip` runs PostgreSQL first)."""
    jobs = 640 if quick else 3200
    out: dict[str, Any] = {"jobs": jobs, "submitters": SUBMITTERS}
    for backend in reversed(BACKENDS) if flip else BACKENDS:
        if backend == "sqlite":
            db = _fresh(work, "replicas-enqueue")

            async def run_sqlite(db: Path = db) -> float:
                async with opened(await Store.open(db)) as store:
                    return await _submit(store, jobs, SUBMITTERS)

            rate = trio.run(run_sqlite)
        else:
            with database(cluster) as url:

                async def run_postgres(url: str = url) -> float:
                    async with opened(await Store.open_url(url)) as store:
                        return await _submit(store, jobs, SUBMITTERS)

                rate = trio.run(run_postgres)
        out[backend] = {"jobs_per_s": rate}
    out["ratio"] = out["postgres"]["jobs_per_s"] / out["sqlite"]["jobs_per_s"]
    return out


def fill_postgres(url: str, queued: int) -> float:
    """`scale.fill_queue` on PostgreSQL: the same rows, copied in, then ANALYZE; returns the
    seconds it took. The store's own connection migrates the database first."""
    import psycopg

    from foreman.store.pg import pg_connect

    started = time.perf_counter()
    pg_connect(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction(), conn.cursor() as cur:
            columns = ", ".join(QUEUE_COLUMNS)
            with cur.copy(f"COPY jobs ({columns}) FROM STDIN") as copy:
                for row in queue_rows(queued, "queued", 0, time.time()):
                    copy.write_row(row)
        conn.execute("ANALYZE jobs")
    return time.perf_counter() - started


class _Lane:
    """One idle upstream of one slot, holding the model of the job it ran last."""

    def __init__(self) -> None:
        self.resident: str | None = MODELS[1]
        self.claims: list[float] = []
        self.ends: list[float] = []

    async def claim_and_end(self, store: Store, count: int) -> None:
        for _ in range(count):
            lane = Lane(LANE, 1, self.resident)
            started = time.perf_counter()
            job = await store.claim_on(lane, (), 600.0, LoadCosts())
            self.claims.append(time.perf_counter() - started)
            assert job is not None, "the queue ran dry"
            if job.state is JobState.LOADING:  # a swap: not what is timed
                moved = await store.transition(job.id, job.state, JobState.WORKING, loaded=True)
                assert moved is not None
                job = moved
            started = time.perf_counter()
            ended = await store.transition(
                job.id, job.state, JobState.DONE, result={"response": "ok"}
            )
            self.ends.append(time.perf_counter() - started)
            assert ended is not None
            self.resident = job.model_key

    def figures(self) -> dict[str, float]:
        return {
            "claim_p50_ms": ms(percentile(self.claims, 50)),
            "claim_p99_ms": ms(percentile(self.claims, 99)),
            "end_p50_ms": ms(percentile(self.ends, 50)),
            "end_p99_ms": ms(percentile(self.ends, 99)),
        }


def _count_statements(store: Store, count: list[int]) -> None:
    """Count what `store` sends to PostgreSQL: statements in `count[0]` (BEGIN and COMMIT
    included) and round trips to the server in `count[1]` (a statement sent alone, or a
    pipeline of several)."""
    raw = store.sync.pg.raw  # type: ignore[attr-defined]
    execute, pipeline = raw.execute, raw.pipeline
    inside = [False]

    def counted(query: Any, params: Any = None, **kw: Any) -> Any:
        count[0] += 1
        count[1] += 0 if inside[0] else 1
        return execute(query, params, **kw)

    @contextmanager
    def pipelined() -> Iterator[Any]:
        inside[0] = True
        try:
            with pipeline() as p:
                yield p
        finally:
            inside[0] = False
            count[1] += 1

    raw.execute = counted
    raw.pipeline = pipelined


def claim_latency(
    work: Path, cluster: PostgresCluster, queued: int, claims: int, block: int = 25
) -> dict[str, Any]:
    """Claims and ends on `queued` jobs in each store, open side by side, alternating
    blocks of `block` claims between them."""
    db = _fresh(work, f"replicas-claim-{queued}")
    out: dict[str, Any] = {"queued": queued, "claims": claims}
    fills = {"sqlite": fill_queue(db, queued)}
    with database(cluster) as url:
        fills["postgres"] = fill_postgres(url, queued)
        lanes = {backend: _Lane() for backend in BACKENDS}
        statements = [0, 0]

        async def run() -> None:
            async with (
                opened(await Store.open(db)) as sqlite,
                opened(await Store.open_url(url)) as postgres,
            ):
                stores = {"sqlite": sqlite, "postgres": postgres}
                _count_statements(postgres, statements)
                for done in range(0, claims, block):
                    order = BACKENDS if (done // block) % 2 == 0 else BACKENDS[::-1]
                    for backend in order:
                        await lanes[backend].claim_and_end(stores[backend], block)

        trio.run(run)
    for backend in BACKENDS:
        out[backend] = {**lanes[backend].figures(), "fill_s": fills[backend]}
    out["ratio_p50"] = out["postgres"]["claim_p50_ms"] / out["sqlite"]["claim_p50_ms"]
    # what a claim and an end are made of on PostgreSQL: one round trip per statement
    out["postgres"]["statements_per_claim_and_end"] = statements[0] / claims
    out["postgres"]["round_trips_per_claim_and_end"] = statements[1] / claims
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return out


def store_figures(
    work: Path,
    cluster: PostgresCluster,
    quick: bool,
    repeat: Callable[[int, Callable[[], dict[str, Any]]], dict[str, Any]],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The enqueue and claim figures of the section, `repeat`ed as the others are."""
    reps = 1 if quick else 3
    flips = iter(range(reps))
    log(f"replicas: enqueue through the Store, SQLite and PostgreSQL alternating x{reps}")
    out: dict[str, Any] = {
        "enqueue": repeat(reps, lambda: enqueue(work, cluster, quick, next(flips) % 2 == 1))
    }
    claims = 100 if quick else 300
    out["claim"] = {}
    for queued in (1_000, 100_000):
        log(f"replicas: claim and end with {queued:,} queued, both stores side by side")
        out["claim"][str(queued)] = repeat(
            1, lambda n=queued: claim_latency(work, cluster, n, claims)
        )
    return out
