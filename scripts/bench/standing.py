"""What knowing where a job stands costs: one position lookup on a long queue, and the
worker's throughput while queued jobs' positions are watched on their event streams."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio

from foreman.forecast import Backlog, Upstream, forecast
from foreman.policy import LoadCosts
from foreman.store import SyncStore, connect

from .common import ms, percentile, stack, stub_control, watch_stream
from .overhead import drain_time, submit_jobs
from .scale import MODELS, fill_queue

INSTANT = ("--tokens", "8")
# how many queued jobs have their positions watched, each on its own stream
WATCHED = 100


def lookup_cost(work: Path, queued: int, lookups: int = 50) -> dict[str, Any]:
    """A position lookup as GET /jobs/{id} makes it, on `queued` jobs over four models
    and three priorities: the forecast's reads and its making (once a second at most,
    shared by every lookup), and the count of the jobs ahead of one job, for the last job
    of a model's lowest priority (the longest count: every job of its model is ahead) and
    one halfway along that model's jobs."""
    db = work / f"standing-{queued}.db"
    fill_queue(db, queued)
    conn = connect(db)
    store = SyncStore(conn)
    try:
        now = time.time()
        heads, _ = store.forecast_reads(now)
        order = "ORDER BY priority DESC, turn, enqueued_at, id"
        (count,) = store.conn.execute(
            "SELECT count(*) FROM jobs WHERE state = 'queued' AND model_key = ?", (MODELS[0],)
        ).fetchone()
        last, middle = (
            store.conn.execute(
                f"SELECT id FROM jobs WHERE state = 'queued' AND model_key = ? {order}"
                " LIMIT 1 OFFSET ?",
                (MODELS[0], offset),
            ).fetchone()[0]
            for offset in (count - 1, count // 2)
        )
        costs = LoadCosts(dict.fromkeys(MODELS, 10.0), dict.fromkeys(MODELS, 2.0))
        counts = {h.model_key: queued // 4 for h in heads}
        ups = [Upstream("gpu0", 1, MODELS[0], 1.0)]
        making, back, half = [], [], []
        for _ in range(lookups):
            started = time.perf_counter()
            heads, _ = store.forecast_reads(time.time())
            backlogs = [
                Backlog(h.model_key, counts[h.model_key], h.priority, h.enqueued_at) for h in heads
            ]
            made = forecast(ups, backlogs, costs)
            making.append(time.perf_counter() - started)
            for job_id, times in ((last, back), (middle, half)):
                started = time.perf_counter()
                job = store.get(job_id)
                assert job is not None
                made.standing(job.model_key, store.ahead_in_key(job))
                times.append(time.perf_counter() - started)
        back_job = store.get(last)
        assert back_job is not None
        ahead_back = store.ahead_in_key(back_job)
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    return {
        "queued": queued,
        "ahead_of_last": ahead_back,
        "forecast_p50_ms": ms(percentile(making, 50)),
        "lookup_last_p50_ms": ms(percentile(back, 50)),
        "lookup_last_p99_ms": ms(percentile(back, 99)),
        "lookup_middle_p50_ms": ms(percentile(half, 50)),
    }


async def _drain(url: str, stub_url: str, jobs: int, watched: int) -> dict[str, Any]:
    """Queue `jobs` while the stub holds, open `watched` streams on the last of them, then
    time the worker draining the queue."""
    received = [0]
    await stub_control(stub_url, "POST", "/_stub/hold")
    ids, _ = await submit_jobs(url, jobs, 32, first=watched * 100_000)
    async with trio.open_nursery() as nursery:
        for job_id in ids[len(ids) - watched :]:
            ready = trio.Event()
            nursery.start_soon(
                watch_stream, url, f"/jobs/{job_id}/events", received, ready, _positions
            )
            await ready.wait()
        elapsed = await drain_time(url, stub_url, ids[-1])
        nursery.cancel_scope.cancel()
    return {
        "watched": watched,
        "jobs_per_s": jobs / elapsed,
        "position_events": received[0],
    }


def _positions(data: bytes) -> int:
    return data.count(b"event: position")


def throughput_watched(work: Path, quick: bool) -> dict[str, Any]:
    """Jobs/s through the worker with no position watched, then with the positions of
    `WATCHED` queued jobs watched on their event streams."""
    jobs = 600 if quick else 2000
    out: dict[str, Any] = {"jobs": jobs}
    for watched in (0, WATCHED):
        with stack(work, f"standing-{watched}", INSTANT) as s:
            out[f"watched_{watched}"] = trio.run(_drain, s.url, s.stub_url, jobs, watched)
    out["ratio"] = out[f"watched_{WATCHED}"]["jobs_per_s"] / out["watched_0"]["jobs_per_s"]
    return out
