"""What a synchronous answer costs when it crosses between replicas: two `foreman serve`
processes on one PostgreSQL database and one stub upstream. The first replica started holds
the upstream's lease (it drives it); a client of the other replica gets its answer relayed
through NOTIFY. Requests alternate in blocks between the two replicas, so that the machine's
drift hits both alike.

- per request: serial non-streamed /api/chat on an instant stub, to the driving replica and
  to the other; the difference of their percentiles is the latency a crossing adds;
- per token: serial streamed /api/chat on a stub paced at `PACE_S` per token (`TOKENS`
  tokens): the time to the first line, the gaps between consecutive lines as the client
  receives them, and each line's delay since the request against the same line's median
  through the driving replica (the extra delay of each line).
"""

from __future__ import annotations

import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import trio

from .common import ms, percentile, stub_control
from .fleet import wait_ready
from .loadgen import Connection
from .overhead import check
from .replica_procs import all_leased, leases, replica, running, stubs

SIDES = ("driving", "other")
TOKENS = 50
PACE_S = 0.02
BLOCK = 25
STREAM_BLOCK = 5


def chat(i: int, *, stream: bool) -> bytes:
    message = {"role": "user", "content": f"crossing {i}"}
    return json.dumps({"model": "llama3", "messages": [message], "stream": stream}).encode()


async def _requests(urls: dict[str, str], requests: int) -> dict[str, Any]:
    """Serial non-streamed chats, blocks of `BLOCK` alternating between the two sides."""
    conns = {side: Connection(url) for side, url in urls.items()}
    samples: dict[str, list[float]] = {side: [] for side in SIDES}
    try:
        for side in SIDES:  # warm up: the model's load, the connections
            for i in range(10):
                check(await conns[side].send("POST", "/api/chat", chat(i, stream=False)), side)
        for b in range(max(1, requests // BLOCK)):
            for side in SIDES if b % 2 == 0 else SIDES[::-1]:
                for i in range(BLOCK):
                    body = chat(1000 + b * BLOCK + i, stream=False)
                    answer = check(await conns[side].send("POST", "/api/chat", body), side)
                    samples[side].append(answer.done - answer.sent)
    finally:
        for conn in conns.values():
            await conn.aclose()
    out: dict[str, Any] = {"requests": len(samples["driving"])}
    for q in (50, 99):
        for side in SIDES:
            out[f"{side}_p{q}_ms"] = ms(percentile(samples[side], q))
        out[f"added_p{q}_ms"] = out[f"other_p{q}_ms"] - out[f"driving_p{q}_ms"]
    return out


async def _stream(conn: Connection, i: int) -> list[float]:
    """One streamed chat; each line's arrival, in seconds since the request was sent."""
    arrivals: list[float] = []

    def heard(chunk: bytes) -> None:
        now = time.perf_counter()
        arrivals.extend([now] * chunk.count(b"\n"))

    answer = check(await conn.send("POST", "/api/chat", chat(i, stream=True), on_chunk=heard), "")
    return [moment - answer.sent for moment in arrivals]


def line_figures(streams: dict[str, list[list[float]]], tokens: int, pace: float) -> dict[str, Any]:
    """The figures of streamed answers by side (each a list of its lines' times since its
    request). A line's extra delay is its time less the median time of the same line
    through the driving replica; the driving replica's own lines measure the noise."""
    lines = min(len(s) for side in SIDES for s in streams[side])
    reference = [statistics.median(s[n] for s in streams["driving"]) for n in range(lines)]
    out: dict[str, Any] = {
        "streams": len(streams["driving"]),
        "tokens": tokens,
        "pace_ms": ms(pace),
        "lines": lines,
    }
    for side in SIDES:
        firsts = [s[0] for s in streams[side]]
        gaps = [b - a for s in streams[side] for a, b in itertools.pairwise(s[:lines])]
        extra = [s[n] - reference[n] for s in streams[side] for n in range(lines)]
        for q in (50, 99):
            out[f"{side}_first_p{q}_ms"] = ms(percentile(firsts, q))
            out[f"{side}_gap_p{q}_ms"] = ms(percentile(gaps, q))
            out[f"{side}_line_extra_p{q}_ms"] = ms(percentile(extra, q))
    for q in (50, 99):
        out[f"first_added_p{q}_ms"] = out[f"other_first_p{q}_ms"] - out[f"driving_first_p{q}_ms"]
    return out


async def _streams(urls: dict[str, str], count: int) -> dict[str, list[list[float]]]:
    """Serial streamed chats, blocks of `STREAM_BLOCK` alternating between the sides."""
    conns = {side: Connection(url) for side, url in urls.items()}
    out: dict[str, list[list[float]]] = {side: [] for side in SIDES}
    try:
        for side in SIDES:  # warm up
            await _stream(conns[side], 0)
        for b in range(max(1, count // STREAM_BLOCK)):
            for side in SIDES if b % 2 == 0 else SIDES[::-1]:
                for i in range(STREAM_BLOCK):
                    out[side].append(await _stream(conns[side], 1000 + b * STREAM_BLOCK + i))
    finally:
        for conn in conns.values():
            await conn.aclose()
    return out


def crossing(work: Path, make_db: Any, quick: bool) -> dict[str, Any]:
    """Both figures on two replicas and one stub; the first replica drives the stub."""
    folder = Path(tempfile.mkdtemp(prefix="replicas-crossing-", dir=work))
    stub_procs, (stub_url,) = stubs(folder, 1, ("--tokens", "8"))
    requests = 100 if quick else 400
    streamed = 10 if quick else 40
    try:
        with make_db() as db_url:
            first = replica(folder, "driving", db_url, [stub_url])
            with running([first]) as (driving,):
                trio.run(wait_ready, driving)
                trio.run(all_leased, [driving], 1)
                with running([replica(folder, "other", db_url, [stub_url])]) as (other,):
                    trio.run(wait_ready, other)
                    urls = {"driving": driving, "other": other}
                    out: dict[str, Any] = {"request": trio.run(_requests, urls, requests)}
                    paced = {"tokens": TOKENS, "token_delay": PACE_S}
                    trio.run(stub_control, stub_url, "POST", "/_stub/config", paced)
                    lines = trio.run(_streams, urls, streamed)
                    out["token"] = line_figures(lines, TOKENS, PACE_S)
                    # the lease stayed where it was: the figures are of the crossing
                    out["leases"] = trio.run(_leases_of, urls)
                out["waiters"] = waiters(db_url)
    finally:
        for proc in stub_procs:
            proc.terminate(timeout=15)
    return out


def waiters(db_url: str) -> list[int]:
    """The jobs each replica waited on (by its token in the `waiter` column), most first:
    two counts show that each side's answers were waited on by the replica the client
    reached, so the other's crossed between the replicas."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM jobs WHERE waiter IS NOT NULL GROUP BY waiter ORDER BY 1 DESC"
        ).fetchall()
    return [int(count) for (count,) in rows]


async def _leases_of(urls: dict[str, str]) -> str:
    held = {side: len(await leases(url)) for side, url in urls.items()}
    return ", ".join(f"{side} {count}" for side, count in held.items())
