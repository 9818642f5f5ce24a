"""How far one box goes: enqueue rate, claim latency against queue length, memory with a
large queue, and a thousand clients waiting at once."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from foreman.store import SyncStore, connect

from .common import floor_relay, memory_kb, ms, percentile, stack, stub_control
from .loadgen import Connection
from .overhead import check, submit_jobs, wait_done

MODELS = ("llama3:latest", "qwen2.5:7b", "mistral:latest", "phi3:latest")


# the columns `queue_rows` fills, in its order
QUEUE_COLUMNS = (
    "id",
    "endpoint",
    "model",
    "model_key",
    "model_name",
    "body",
    "stream",
    "state",
    "priority",
    "attempts",
    "max_attempts",
    "not_before",
    "enqueued_at",
    "created_at",
    "finished_at",
)
QUEUE_BODY = b'{"model":"llama3","prompt":"summarise the attached note in one line"}'


def queue_rows(count: int, state: str, offset: int, now: float) -> Iterator[tuple[Any, ...]]:
    """`count` jobs in `state` (four models; three priorities when queued), numbered from
    `offset`, as rows of `QUEUE_COLUMNS`: one filling for both stores' benchmarks."""
    for i in range(offset, offset + count):
        model = MODELS[i % 4]
        yield (
            f"{i:026d}",
            "/api/generate",
            model.split(":")[0],
            model,
            model.split(":")[0],
            QUEUE_BODY,
            0,
            state,
            (i % 3) - 1 if state == "queued" else 0,
            0,
            5,
            0,
            now - 3600 + i * 1e-4,
            now - 3600 + i * 1e-4,
            now if state == "done" else None,
        )


def fill_queue(db: Path, queued: int, finished: int = 0) -> float:
    """Bulk-insert `queued` queued jobs (four models, three priorities) and `finished`
    done ones; returns the seconds it took."""
    conn = connect(db)
    started = time.perf_counter()
    now = time.time()
    sql = (
        f"INSERT INTO jobs ({', '.join(QUEUE_COLUMNS)})"
        f" VALUES ({', '.join('?' * len(QUEUE_COLUMNS))})"
    )
    try:
        for state, count, offset in (("done", finished, 0), ("queued", queued, finished)):
            for start in range(offset, offset + count, 100_000):
                size = min(100_000, offset + count - start)
                with conn:
                    conn.execute("BEGIN")
                    conn.executemany(sql, queue_rows(size, state, start, now))
        conn.execute("ANALYZE")
    finally:
        conn.close()
    return time.perf_counter() - started


def claim_latency(work: Path, queued: int, claims: int = 300) -> dict[str, Any]:
    """The next claim (the scheduling rule plus its commit) on a queue of `queued` jobs."""
    db = work / f"claim-{queued}.db"
    fill_seconds = fill_queue(db, queued)
    store = SyncStore(connect(db))
    try:
        times = []
        resident = MODELS[1]
        for _ in range(claims):
            started = time.perf_counter()
            job = store.claim(resident, 600.0)
            times.append(time.perf_counter() - started)
            assert job is not None
            resident = job.model_key
        size = db.stat().st_size
    finally:
        store.conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    return {
        "queued": queued,
        "claim_p50_ms": ms(percentile(times, 50)),
        "claim_p99_ms": ms(percentile(times, 99)),
        "fill_s": fill_seconds,
        "db_mb": size / 1e6,
    }


async def _enqueue(url: str, stub_url: str, jobs: int) -> dict[str, Any]:
    await stub_control(stub_url, "POST", "/_stub/hold")
    _, rate = await submit_jobs(url, jobs, 32)
    await stub_control(stub_url, "POST", "/_stub/release")
    return {"jobs": jobs, "submitters": 32, "jobs_per_s": rate}


def enqueue_rate(work: Path, quick: bool) -> dict[str, Any]:
    """POST /jobs from 32 concurrent submitters, at the default durability."""
    jobs = 1500 if quick else 5000
    with stack(work, "enqueue", ("--tokens", "8")) as s:
        return trio.run(_enqueue, s.url, s.stub_url, jobs)


BATCH_SIZE = 100


async def submit_batches(url: str, batches: int, size: int, submitters: int) -> float:
    """POST /jobs/batch from `submitters` concurrent clients, `batches` batches of `size`
    jobs in all; jobs/s. The bodies are encoded before the clock starts."""
    bodies = [
        json.dumps(
            {
                "jobs": [
                    {
                        "endpoint": "/api/generate",
                        "body": {"model": "llama3", "prompt": f"job {b * size + i}"},
                    }
                    for i in range(size)
                ]
            }
        ).encode()
        for b in range(batches)
    ]
    pending = iter(bodies)

    async def submitter() -> None:
        conn = Connection(url)
        try:
            for body in pending:
                answer = check(await conn.send("POST", "/jobs/batch", body), "POST /jobs/batch")
                if len(answer.json()["jobs"]) != size:
                    raise RuntimeError(f"POST /jobs/batch: {answer.body[:200]!r}")
        finally:
            await conn.aclose()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(submitters):
            nursery.start_soon(submitter)
    return batches * size / (time.perf_counter() - started)


async def _batch_enqueue(url: str, stub_url: str, batches: int) -> dict[str, Any]:
    await stub_control(stub_url, "POST", "/_stub/hold")
    rate = await submit_batches(url, batches, BATCH_SIZE, 32)
    await stub_control(stub_url, "POST", "/_stub/release")
    return {"jobs": batches * BATCH_SIZE, "batch": BATCH_SIZE, "submitters": 32, "jobs_per_s": rate}


def batch_enqueue_rate(work: Path, quick: bool) -> dict[str, Any]:
    """POST /jobs/batch, batches of 100 from 32 concurrent submitters, at the default
    durability (each batch on disk before its 202). The queue's cap is raised so that
    the held stub lets every job stay queued."""
    batches = 64 if quick else 320
    flags = ("--max-queue", str(batches * BATCH_SIZE + 1))
    with stack(work, "batch-enqueue", ("--tokens", "8"), flags) as s:
        return trio.run(_batch_enqueue, s.url, s.stub_url, batches)


def stack_floor(work: Path, quick: bool) -> dict[str, Any]:
    """The same HTTP stack doing nothing of foreman's (see floor.py), with the same client:
    a POST that only reads its body. (The bare relay's latency is measured beside
    foreman's, in overhead.py.)"""
    jobs = 1500 if quick else 5000
    with stack(work, "floor", ("--tokens", "8"), None) as s, floor_relay(s) as url:
        _, rate = trio.run(submit_jobs, url, jobs, 32)
        return {"trivial_post_per_s": rate}


def memory_with_queue(work: Path, queued: int) -> dict[str, Any]:
    """foreman's resident memory on an empty database and on one with `queued` jobs."""
    out: dict[str, Any] = {"queued": queued}
    for label, count in (("empty", 0), ("queued", queued)):
        with stack(work, f"memory-{label}", ("--tokens", "8"), None) as s:
            if count:
                fill_queue(s.db, count)
            assert s.stub is not None
            trio.run(stub_control, s.stub_url, "POST", "/_stub/hold")
            s.start_foreman()

            async def settle(url: str) -> None:
                conn = Connection(url)
                try:
                    for _ in range(20):
                        check(await conn.send("GET", "/api/version"), "version")
                    check(await conn.send("GET", "/jobs?limit=500"), "list")
                finally:
                    await conn.aclose()

            trio.run(settle, s.url)
            mem = memory_kb(s.foreman_pid)
            out[f"rss_{label}_mb"] = mem["VmRSS"] / 1024
            out[f"peak_{label}_mb"] = mem["VmHWM"] / 1024
            trio.run(stub_control, s.stub_url, "POST", "/_stub/release")
    return out


def many_clients(work: Path, clients: int) -> dict[str, Any]:
    """`clients` synchronous requests at once, each on its own connection; all must end."""
    with stack(work, "clients", ("--tokens", "8")) as s:
        before = memory_kb(s.foreman_pid)["VmRSS"]
        statuses: list[int] = []
        peak = [before]

        async def main() -> float:
            started = time.perf_counter()

            async def one(i: int) -> None:
                conn = Connection(s.url)
                try:
                    data = json.dumps(
                        {"model": "llama3", "prompt": f"client {i}", "stream": False}
                    ).encode()
                    answer = await conn.send("POST", "/api/generate", data)
                    statuses.append(answer.status)
                finally:
                    await conn.aclose()

            async def watch(cancel: trio.CancelScope) -> None:
                while not cancel.cancel_called:
                    peak.append(memory_kb(s.foreman_pid)["VmRSS"])
                    await trio.sleep(0.05)

            async with trio.open_nursery() as outer:
                watcher = trio.CancelScope()

                async def watched() -> None:
                    with watcher:
                        await watch(watcher)

                outer.start_soon(watched)
                async with trio.open_nursery() as nursery:
                    for i in range(clients):
                        nursery.start_soon(one, i)
                watcher.cancel()
            return time.perf_counter() - started

        elapsed = trio.run(main)
        return {
            "clients": clients,
            "completed_ok": sum(1 for code in statuses if code == 200),
            "elapsed_s": elapsed,
            "rss_before_mb": before / 1024,
            "rss_peak_mb": max(peak) / 1024,
        }


def job_count(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
    finally:
        conn.close()


__all__ = [
    "batch_enqueue_rate",
    "claim_latency",
    "enqueue_rate",
    "fill_queue",
    "many_clients",
    "memory_with_queue",
    "stack_floor",
    "wait_done",
]
