"""What an open dashboard costs: reading its summary at several queue lengths, and the
worker's throughput with pages watching the live stream."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio

from foreman.store import SyncStore, connect

from .common import ms, percentile, stack, stub_control, watch_stream
from .overhead import drain_time, submit_jobs
from .scale import fill_queue

INSTANT = ("--tokens", "8")


def summary_cost(work: Path, queued: int, finished: int, reads: int = 20) -> dict[str, Any]:
    """A summary's reads with `queued` jobs waiting and `finished` jobs ended in the last
    day: `SyncStore.overview` (after every change) and `activity` (the headline)."""
    db = work / f"summary-{queued}.db"
    fill_queue(db, queued, finished)
    conn = connect(db)
    with conn:
        conn.execute("UPDATE jobs SET started_at = created_at WHERE state = 'done'")
    store = SyncStore(conn)
    try:
        overview, activity = [], []
        for _ in range(reads):
            started = time.perf_counter()
            store.overview()
            middle = time.perf_counter()
            store.activity(time.time() - 86400)
            overview.append(middle - started)
            activity.append(time.perf_counter() - middle)
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    return {
        "queued": queued,
        "finished": finished,
        "overview_p50_ms": ms(percentile(overview, 50)),
        "activity_p50_ms": ms(percentile(activity, 50)),
        # how long the board then waits before the next summary, and before it reads
        # the headline again
        "spacing_s": min(5.0, max(0.25, percentile(overview, 50) * 10)),
        "activity_every_s": max(1.0, percentile(activity, 50) * 20),
    }


async def _drain(url: str, stub_url: str, jobs: int, viewers: int) -> dict[str, Any]:
    """Queue `jobs` while the stub holds, then time the worker draining them with
    `viewers` dashboard streams open."""
    received = [0]
    async with trio.open_nursery() as nursery:
        for _ in range(viewers):
            ready = trio.Event()
            nursery.start_soon(watch_stream, url, "/queue/events", received, ready)
            await ready.wait()
        await stub_control(stub_url, "POST", "/_stub/hold")
        ids, _ = await submit_jobs(url, jobs, 32, first=viewers * 100_000)
        before = received[0]
        elapsed = await drain_time(url, stub_url, ids[-1])
        nursery.cancel_scope.cancel()
    return {
        "viewers": viewers,
        "jobs_per_s": jobs / elapsed,
        "kb_per_viewer_per_job": (received[0] - before) / 1024 / max(1, viewers) / jobs,
    }


def throughput_with_viewers(work: Path, quick: bool) -> dict[str, Any]:
    """Jobs/s through the worker with no dashboard open, then with five."""
    jobs = 600 if quick else 2000
    out: dict[str, Any] = {"jobs": jobs}
    for viewers in (0, 5):
        with stack(work, f"dashboard-{viewers}", INSTANT) as s:
            out[f"viewers_{viewers}"] = trio.run(_drain, s.url, s.stub_url, jobs, viewers)
    quiet = out["viewers_0"]["jobs_per_s"]
    out["ratio"] = out["viewers_5"]["jobs_per_s"] / quiet
    return out
