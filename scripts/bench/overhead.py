"""What foreman costs per request, and the embeddings relay under a busy chat queue.

All against a stub that answers at once (no load or token delay), so what is left is
HTTP, the store and the worker. "Direct" is the same request straight to the stub.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import trio

from .common import floor_relay, ms, percentile, stack, stub_control
from .loadgen import Answer, Connection

INSTANT = ("--tokens", "8")


def generate(i: int, *, stream: bool = False, model: str = "llama3") -> bytes:
    return json.dumps({"model": model, "prompt": f"overhead {i}", "stream": stream}).encode()


def check(answer: Answer, what: str) -> Answer:
    if answer.status not in (200, 202):
        raise RuntimeError(f"{what}: {answer.status} {answer.body[:200]!r}")
    return answer


async def serial(url: str, requests: int, start: int, stream: bool) -> list[Answer]:
    conn = Connection(url)
    try:
        return [
            check(await conn.send("POST", "/api/generate", generate(i, stream=stream)), url)
            for i in range(start, start + requests)
        ]
    finally:
        await conn.aclose()


async def _latency(
    stub_url: str, relays: dict[str, str], requests: int, stream: bool
) -> dict[str, Any]:
    """Serial requests from one client, straight to the stub and through each relay (by
    name: foreman, the bare-relay floor) in alternating blocks, so drift in the machine's
    speed hits all alike; latency is to the whole answer, or to the first chunk of a
    stream. A relay's added latency is its percentile less the direct one."""
    block = 50
    targets = {"direct": stub_url, **relays}
    samples: dict[str, list[float]] = {name: [] for name in targets}
    for url in targets.values():  # warm up: the load, connections
        await serial(url, 20, 0, stream)
    for b in range(max(1, requests // block)):
        for name, url in targets.items():
            for answer in await serial(url, block, 1000 + b * block, stream):
                samples[name].append((answer.first if stream else answer.done) - answer.sent)
    out: dict[str, Any] = {"requests": len(samples["direct"])}
    for q in (50, 99):
        direct = percentile(samples["direct"], q)
        out[f"direct_p{q}_ms"] = ms(direct)
        for name in relays:
            # foreman's figures keep their plain names (added_p50_ms, ...)
            prefix = "" if name == "foreman" else f"{name}_"
            mine = percentile(samples[name], q)
            out[f"{name}_p{q}_ms"] = ms(mine)
            out[f"{prefix}added_p{q}_ms"] = ms(mine - direct)
    if "floor" in relays:
        out["over_floor_p50_ms"] = out["added_p50_ms"] - out["floor_added_p50_ms"]
    return out


async def _sync_throughput(url: str, requests: int, clients: int) -> dict[str, Any]:
    """Many clients sending synchronous requests; the one worker runs them one by one."""
    counter = iter(range(requests))

    async def client() -> None:
        conn = Connection(url)
        try:
            for i in counter:
                check(await conn.send("POST", "/api/generate", generate(10_000 + i)), "sync")
        finally:
            await conn.aclose()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)
    elapsed = time.perf_counter() - started
    return {"jobs": requests, "clients": clients, "jobs_per_s": requests / elapsed}


async def submit_jobs(
    url: str, count: int, submitters: int, first: int = 0
) -> tuple[list[str], float]:
    """POST /jobs from `submitters` concurrent clients; the ids (in order) and jobs/s."""
    ids: list[str] = [""] * count
    counter = iter(range(count))

    async def submitter() -> None:
        conn = Connection(url)
        try:
            for i in counter:
                envelope = {
                    "endpoint": "/api/generate",
                    "body": {"model": "llama3", "prompt": f"job {first + i}"},
                }
                answer = check(
                    await conn.send("POST", "/jobs", json.dumps(envelope).encode()), "POST /jobs"
                )
                ids[i] = answer.json()["id"]
        finally:
            await conn.aclose()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(submitters):
            nursery.start_soon(submitter)
    return ids, count / (time.perf_counter() - started)


async def wait_done(url: str, job_id: str, limit: float = 300.0) -> dict[str, Any]:
    conn = Connection(url)
    deadline = time.perf_counter() + limit
    try:
        while time.perf_counter() < deadline:
            job = (await conn.send("GET", f"/jobs/{job_id}?wait=30")).json()
            if job["state"] in ("done", "failed", "cancelled"):
                return dict(job)
        raise RuntimeError(f"job {job_id} did not finish within {limit}s")
    finally:
        await conn.aclose()


async def _async_throughput(url: str, stub_url: str, requests: int) -> dict[str, Any]:
    """Queue jobs while the stub is held, then time the worker draining them."""
    await stub_control(stub_url, "POST", "/_stub/hold")
    ids, _ = await submit_jobs(url, requests, 32, first=50_000)
    # the worker drains one model's queue oldest first, so the last job ends last
    elapsed = await drain_time(url, stub_url, ids[-1])
    return {"jobs": requests, "jobs_per_s": requests / elapsed}


async def drain_time(url: str, stub_url: str, last_id: str) -> float:
    """Release the held stub and time the worker until job `last_id` is done (seconds)."""
    await stub_control(stub_url, "POST", "/_stub/release")
    started = time.perf_counter()
    last = await wait_done(url, last_id)
    elapsed = time.perf_counter() - started
    if last["state"] != "done":
        raise RuntimeError(f"job {last['id']} ended {last['state']}: {last['error']}")
    return elapsed


async def stream_rate(url: str, tokens: int) -> float:
    """NDJSON lines per second over one long stream."""
    conn = Connection(url)
    try:
        answer = check(await conn.send("POST", "/api/generate", generate(7, stream=True)), url)
    finally:
        await conn.aclose()
    lines = answer.body.count(b"\n")
    if lines < tokens:
        raise RuntimeError(f"expected {tokens} lines from {url}, got {lines}")
    return lines / (answer.done - answer.first)


def overhead(work: Path, quick: bool) -> dict[str, Any]:
    """One repetition of every overhead figure, on one stub and one foreman."""
    requests = 300 if quick else 600
    with stack(work, "overhead", INSTANT) as s, floor_relay(s) as floor:

        async def main() -> dict[str, Any]:
            out: dict[str, Any] = {}
            # the floor relays whole answers only: it stands beside foreman on the
            # non-streamed figure, where the goal is measured against it
            out["non_streamed"] = await _latency(
                s.stub_url, {"foreman": s.url, "floor": floor}, requests, stream=False
            )
            out["streamed_first_chunk"] = await _latency(
                s.stub_url, {"foreman": s.url}, requests // 2, stream=True
            )
            out["worker_sync"] = await _sync_throughput(s.url, requests * 2, 32)
            out["worker_async"] = await _async_throughput(s.url, s.stub_url, requests * 2)
            direct = await _sync_throughput(s.stub_url, requests, 1)
            out["stub_alone_jobs_per_s"] = direct["jobs_per_s"]
            tokens = 5000 if quick else 20_000
            await stub_control(s.stub_url, "POST", "/_stub/config", {"tokens": tokens})
            direct_rate = await stream_rate(s.stub_url, tokens)
            relayed = await stream_rate(s.url, tokens)
            out["relay"] = {
                "chunks": tokens,
                "direct_chunks_per_s": direct_rate,
                "foreman_chunks_per_s": relayed,
                "ratio": relayed / direct_rate,
            }
            return out

        return trio.run(main)


# -- embeddings -----------------------------------------------------------------------------


async def embed_load(url: str, seconds: float, clients: int, tag: str) -> dict[str, Any]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(c: int) -> None:
        conn = Connection(url)
        i = 0
        try:
            while time.perf_counter() < deadline:
                data = json.dumps(
                    {"model": "nomic-embed-text", "input": f"{tag} note {c}.{i}"}
                ).encode()
                answer = check(await conn.send("POST", "/api/embed", data), "embed")
                latencies.append(answer.done - answer.sent)
                i += 1
        finally:
            await conn.aclose()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for c in range(clients):
            nursery.start_soon(client, c)
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
    }


def embeddings(work: Path, quick: bool) -> dict[str, Any]:
    """32 embedding clients, direct and through foreman, while chat jobs keep the worker
    (and the stub's chat slot) busy the whole time."""
    seconds = 3.0 if quick else 6.0
    flags = ("--tokens", "8", "--token-delay", "0.002")
    with stack(work, "embeddings", flags) as s:

        async def main() -> dict[str, Any]:
            # ~20 ms per chat job: enough queued to outlast both phases
            backlog = int(2 * seconds / 0.02) + 200
            await submit_jobs(s.url, backlog, 8, first=90_000)
            await embed_load(s.stub_url, 0.5, 4, "warm")
            direct = await embed_load(s.stub_url, seconds, 32, "direct")
            through = await embed_load(s.url, seconds, 32, "foreman")
            state = (await Connection(s.url).send("GET", "/jobs?state=queued&limit=1")).json()
            return {
                "clients": 32,
                "direct": direct,
                "foreman": through,
                "ratio_requests_per_s": through["requests_per_s"] / direct["requests_per_s"],
                "ratio_p99": through["p99_ms"] / direct["p99_ms"],
                "chat_queue_busy_throughout": bool(state["jobs"]),
            }

        return trio.run(main)
