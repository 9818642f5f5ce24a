"""What a NOTIFY round trip costs between two connections: the per-token price of an answer
relayed from the replica that runs a job to the replica its client waits on.

One connection sends `pg_notify` (from a Trio worker thread, as a replica's store calls
its driver); another LISTENs, and Trio reads its socket (`wait_readable`, then libpq's
`consume_input` and `notifies`: no thread). Each message carries a chunk of an answer the
size of one streamed line.

Two senders, alternating blocks: one whose session commits synchronously (the server's
setting: on, so each NOTIFY's commit waits for the WAL's flush) and one that turns
`synchronous_commit` off for its session (a notification lost in a crash of the database
server is a stream cut short either way).

- latency: one message in flight, from the send to its arrival at the listener;
- rate: messages sent back to back from one thread, each its own statement, counted as
  they arrive (in five blocks per sender, alternating).
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import trio

from .common import ms, percentile

CHANNEL = "foreman_answers_bench"
SENDERS = ("synced", "unsynced")
# one streamed line of an answer, as Ollama sends it
CHUNK = json.dumps(
    {
        "model": "llama3",
        "created_at": "2026-01-01T00:00:00.000000Z",
        "response": " token",
        "done": False,
    }
)


class Listener:
    """A LISTENing connection read from Trio: each arrival's moment, by message number."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(f"LISTEN {CHANNEL}")
        self.arrived: dict[int, float] = {}
        self.changed = trio.Event()

    async def run(self) -> None:
        pgconn = self.conn.pgconn
        while True:
            await trio.lowlevel.wait_readable(pgconn.socket)
            pgconn.consume_input()
            while (note := pgconn.notifies()) is not None:
                number = int(note.extra.partition(b" ")[0])
                self.arrived[number] = time.perf_counter()
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, number: int) -> float:
        while number not in self.arrived:
            await self.changed.wait()
        return self.arrived[number]

    def close(self) -> None:
        self.conn.close()


def sender(url: str, mode: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True)
    if mode == "unsynced":
        conn.execute("SET synchronous_commit TO off")
    return conn


def send(conn: psycopg.Connection[Any], first: int, count: int = 1) -> None:
    for number in range(first, first + count):
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{number} {CHUNK}"))


async def _measure(url: str, pings: int, burst: int, block: int) -> dict[str, Any]:
    listener = Listener(url)
    senders = {mode: sender(url, mode) for mode in SENDERS}
    latencies: dict[str, list[float]] = {mode: [] for mode in SENDERS}
    number = 0
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.run)
            for done in range(0, pings, block):
                order = SENDERS if (done // block) % 2 == 0 else SENDERS[::-1]
                for mode in order:
                    for _ in range(block):
                        started = time.perf_counter()
                        await trio.to_thread.run_sync(send, senders[mode], number)
                        arrived = await listener.wait_for(number)
                        latencies[mode].append(arrived - started)
                        number += 1
            spent = dict.fromkeys(SENDERS, 0.0)
            for done in range(0, burst, burst // 5):
                order = SENDERS if (done // (burst // 5)) % 2 == 0 else SENDERS[::-1]
                for mode in order:
                    first, count = number, burst // 5
                    started = time.perf_counter()
                    await trio.to_thread.run_sync(send, senders[mode], first, count)
                    number += count
                    arrived = await listener.wait_for(number - 1)
                    missing = [n for n in range(first, number) if n not in listener.arrived]
                    assert not missing, f"{len(missing)} notifications lost"
                    spent[mode] += arrived - started
            rates = {mode: burst / spent[mode] for mode in SENDERS}
            nursery.cancel_scope.cancel()
    finally:
        listener.close()
        for conn in senders.values():
            conn.close()
    out: dict[str, Any] = {"pings": pings, "burst": burst, "payload_bytes": len(CHUNK)}
    for mode in SENDERS:
        out[mode] = {
            "p50_ms": ms(percentile(latencies[mode], 50)),
            "p99_ms": ms(percentile(latencies[mode], 99)),
            "messages_per_s": rates[mode],
        }
    return out


def round_trips(url: str, quick: bool) -> dict[str, Any]:
    """One repetition: latency blocks alternating between the two senders, then a burst
    from each."""
    pings, burst = (200, 1000) if quick else (1000, 5000)
    return trio.run(_measure, url, pings, burst, 50)
