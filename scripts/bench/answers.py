"""What an answer's trip between replicas costs: the time from a worker's `send` on its
`RemoteTicket` to the message in the waiting client's `Ticket` on the other side
(`AnswerSender` -> PostgreSQL's NOTIFY -> a LISTEN connection -> `AnswerInbox`), per
token, for a stream paced like a model's (one token every `pace` seconds) and one sent
as fast as it comes (where the sender's batching shows).

    python -m scripts.bench.answers postgresql:///db?host=/socket/dir
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from typing import Any

import trio

from foreman.answer_inbox import AnswerInbox
from foreman.remote_answers import AnswerSender, answers_channel
from foreman.store import PgListener
from foreman.tickets import Chunk, StreamStart, Tickets

from .common import ms, percentile

LINE = b'{"model":"m","message":{"role":"assistant","content":" token"},"done":false}\n'


async def relay(url: str, tokens: int, pace: float) -> dict[str, Any]:
    """One streamed answer of `tokens` parts from one replica to a client on another. Each
    call has replica tokens and a job of its own, as replicas started anew would: a late
    notification of an earlier call (on the same database) cannot reach this one."""
    waiting, running = secrets.token_hex(6), secrets.token_hex(6)
    job = f"01BENCH{secrets.token_hex(4).upper()}"
    tickets = Tickets(waiting)
    inbox = AnswerInbox(tickets, waiting)
    sender = AnswerSender(url, running)
    client = tickets.attach(job)
    sent_at: list[float] = []
    heard_at: list[float] = []
    async with trio.open_nursery() as nursery:
        # the replica's own listener, as `foreman serve` starts it
        listener = PgListener(url)
        listener.listen(answers_channel(waiting), inbox.handler)
        await nursery.start(listener.run)
        await nursery.start(sender.run)
        remote = sender.ticket(job, waiting)
        remote.take()
        started = time.perf_counter()

        done = trio.Event()

        async def read() -> None:
            heard_at.extend([time.perf_counter() async for _ in client.receive_channel])
            done.set()

        nursery.start_soon(read)
        sent_at.append(time.perf_counter())
        await remote.send(StreamStart(200, (), LINE))
        for _ in range(tokens):
            if pace:
                await trio.sleep(pace)
            sent_at.append(time.perf_counter())
            await remote.send(Chunk(LINE))
        remote.let_go(True)
        with trio.fail_after(60):
            await done.wait()
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    delays = sorted(b - a for a, b in zip(sent_at, heard_at, strict=True))
    return {
        "tokens": tokens,
        "pace_ms": ms(pace),
        "token_p50_ms": ms(percentile(delays, 50)),
        "token_p99_ms": ms(percentile(delays, 99)),
        "tokens_per_s": len(delays) / elapsed,
    }


def measure(url: str, quick: bool = False) -> dict[str, Any]:
    # the unpaced stream stays within what a client's ticket holds (REMOTE_BUFFER): a
    # client falling further behind is cut off, which is not what is measured here
    tokens = 200 if quick else 1_000
    return {
        "paced_5ms": trio.run(relay, url, tokens // 2, 0.005),
        "unpaced": trio.run(relay, url, tokens, 0.0),
    }


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], quick="--quick" in sys.argv), indent=2))
