"""What open event streams cost the worker: submitting and draining jobs against an
instant stub with no reader on /jobs/events, then with many."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

from .common import ROOT, cpu_seconds, stack
from .loadgen import Connection
from .overhead import INSTANT, check, wait_done

# the workload and goal
JOBS = 150
READERS = 200
GOAL_RATIO = 1.5
# what marks one job change on the stream
EVENT = b"event: job\n"


class Reader:
    """One /jobs/events stream, read as fast as it comes; counts the changes it carried."""

    def __init__(self, expected: int) -> None:
        self.events = 0
        self.ready = trio.Event()
        # set once the stream has carried `expected` changes
        self.complete = trio.Event()
        self._expected = expected
        self._tail = b""

    async def read(self, url: str) -> None:
        parts = urlsplit(url)
        stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 80)
        async with stream:
            await stream.send_all(
                f"GET /jobs/events HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
            )
            head = b""
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                if not self.ready.is_set():
                    head += data
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(f"/jobs/events answered {head[:120]!r}")
                    # the stream's first comment: every change from here on reaches it
                    if b": listening" in head:
                        self.ready.set()
                # an event's marker may straddle two reads
                seen = self._tail + data
                self.events += seen.count(EVENT)
                self._tail = seen[-(len(EVENT) - 1) :]
                if self.events >= self._expected:
                    self.complete.set()


async def _submit_serially(url: str, jobs: int, first: int) -> list[str]:
    """POST /jobs one after another on one connection: the last id is the last job the
    worker takes (one model, one priority, oldest first)."""
    conn = Connection(url)
    ids = []
    try:
        for i in range(first, first + jobs):
            envelope = {"endpoint": "/api/generate", "body": {"model": "llama3", "prompt": f"s{i}"}}
            answer = await conn.send("POST", "/jobs", json.dumps(envelope).encode())
            ids.append(check(answer, "POST /jobs").json()["id"])
    finally:
        await conn.aclose()
    return ids


async def _all_done(url: str, ids: list[str]) -> None:
    conn = Connection(url)
    try:
        answer = await conn.send("GET", f"/jobs?limit={len(ids) + 10}")
        states = {job["id"]: job["state"] for job in check(answer, "GET /jobs").json()["jobs"]}
    finally:
        await conn.aclose()
    missed = [i for i in ids if states.get(i) != "done"]
    if missed:
        raise RuntimeError(f"{len(missed)} jobs did not end done, e.g. {missed[0]}")


async def _read_all(url: str, readers: int, expected: int, limit: float) -> int:
    """Open `readers` streams, say `ready` on stdout, then read until each has carried
    `expected` changes (or `limit` seconds pass); the fewest any reader saw."""
    opened = [Reader(expected) for _ in range(readers)]
    async with trio.open_nursery() as nursery:
        for reader in opened:
            nursery.start_soon(reader.read, url)
            await reader.ready.wait()
        print("ready", flush=True)
        with trio.move_on_after(limit):
            for reader in opened:
                await reader.complete.wait()
        nursery.cancel_scope.cancel()
    return min(r.events for r in opened)


def _readers_process(url: str, readers: int, expected: int) -> subprocess.Popen[str]:
    """The readers in a process of their own, as other clients would be: their reading
    does not hold up the submitting client's loop."""
    reader = subprocess.Popen(
        [sys.executable, "-m", "scripts.bench.streams", url, str(readers), str(expected)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout is not None
    line = reader.stdout.readline().strip()
    if line != "ready":
        reader.kill()
        raise RuntimeError(f"the readers did not start: {line!r}")
    return reader


async def _drain(url: str, jobs: int) -> float:
    """Seconds to submit `jobs` and for the worker to finish them."""
    started = time.perf_counter()
    ids = await _submit_serially(url, jobs, first=0)
    last = await wait_done(url, ids[-1])
    elapsed = time.perf_counter() - started
    if last["state"] != "done":
        raise RuntimeError(f"job {last['id']} ended {last['state']}: {last['error']}")
    await _all_done(url, ids)
    return elapsed


def drain_with_readers(work: Path, quick: bool) -> dict[str, Any]:
    """The same drain with no reader and with `READERS`, each on a fresh stack."""
    out: dict[str, Any] = {"jobs": JOBS, "goal_ratio": GOAL_RATIO}
    # every change of every job reaches every stream: queued, running, done at least
    expected = 3 * JOBS
    for readers in (0, READERS):
        with stack(work, f"streams-{readers}", INSTANT) as s:
            reader = _readers_process(s.url, readers, expected) if readers else None
            try:
                cpu = cpu_seconds(s.foreman_pid)
                elapsed = trio.run(_drain, s.url, JOBS)
                cpu = cpu_seconds(s.foreman_pid) - cpu
                seen = 0
                if reader is not None:
                    stdout, _ = reader.communicate(timeout=60)
                    seen = int(stdout.strip() or 0)
                    if seen < expected:
                        raise RuntimeError(f"a reader saw {seen} changes of {JOBS} jobs")
            finally:
                if reader is not None and reader.poll() is None:
                    reader.kill()
                    reader.wait()
        out[f"readers_{readers}"] = {
            "readers": readers,
            "elapsed_s": elapsed,
            # foreman's own CPU time over the drain: less at the mercy of a busy machine
            "foreman_cpu_s": cpu,
            "events_per_reader": seen,
        }
    quiet = out["readers_0"]["elapsed_s"]
    out["ratio"] = out[f"readers_{READERS}"]["elapsed_s"] / quiet
    return out


if __name__ == "__main__":
    print(trio.run(_read_all, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), 60.0), flush=True)
