"""Answers across replicas on a real PostgreSQL: replica "b"'s worker side (an
`AnswerSender` and its `RemoteTicket`s) sends; replica "a"'s side is a LISTEN connection
of its own feeding an `AnswerInbox`, which hands the messages to a real `Ticket`, read
as the route reads it."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import psycopg
import trio

from foreman.answer_inbox import LOST_MESSAGE, SILENT_MESSAGE, AnswerInbox
from foreman.jobs import Endpoint, Job, JobState
from foreman.remote_answers import AnswerSender, answers_channel
from foreman.store import PgListener
from foreman.tickets import Chunk, Ending, Failed, Message, Reply, StreamStart, Ticket, Tickets

# generous: a loaded machine must not fail a test by taking its time
PATIENCE = 60


class Recorded(AnswerSender):
    """A sender that tells how many payloads each statement carried, and can lose one
    payload on its way (as a notification the server never delivered)."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(url, token)
        self.batches: list[int] = []
        self.lose: set[int] = set()
        self._counted = 0

    def put(self, channel: str, payloads: list[str]) -> None:
        kept = []
        for payload in payloads:
            if self._counted not in self.lose:
                kept.append(payload)
            self._counted += 1
        super().put(channel, kept)

    def _send(self, batch: list[tuple[str, str]]) -> bool:
        self.batches.append(len(batch))
        return super()._send(batch)


@attrs.define
class Halves:
    sender: Recorded
    tickets: Tickets
    inbox: AnswerInbox
    # set (and made anew) at each notification replica "a" hears
    heard: trio.Event = attrs.field(factory=trio.Event)

    def client(self, job_id: str) -> Ticket:
        return self.tickets.attach(job_id)

    def handler(self, payload: str, pid: int) -> None:
        self.inbox.handler(payload, pid)
        self.heard.set()
        self.heard = trio.Event()

    async def until(self, predicate: Callable[[], bool]) -> None:
        with trio.fail_after(PATIENCE):
            while not predicate():
                await self.heard.wait()


@asynccontextmanager
async def _replicas(url: str, *, grace: float = 5.0) -> AsyncIterator[Halves]:
    tickets = Tickets("a")
    inbox = AnswerInbox(tickets, "a", grace=grace)
    sender = Recorded(url, "b")
    halves = Halves(sender, tickets, inbox)
    async with trio.open_nursery() as nursery:
        listener = PgListener(url)
        listener.listen(answers_channel("a"), halves.handler)
        await nursery.start(listener.run)
        await nursery.start(inbox.run)
        await nursery.start(sender.run)
        yield halves
        nursery.cancel_scope.cancel()


async def _everything(ticket: Ticket) -> list[Message]:
    """What the client reads until its ticket closes."""
    with trio.fail_after(PATIENCE):
        return [message async for message in ticket.receive_channel]


def _job(job_id: str, state: JobState) -> Job:
    return Job(
        job_id,
        Endpoint.CHAT,
        "m",
        "m:latest",
        b"{}",
        True,
        state,
        0,
        1,
        5,
        0.0,
        0.0,
        0.0,
        started_at=1.0,
        waiter="a",
    )


async def test_a_stream_of_500_parts_and_a_50_kb_reply_arrive_whole_and_in_order(
    postgres_url: str,
) -> None:
    start = StreamStart(200, (("Content-Type", "application/x-ndjson"),), b'{"n":-1}\n', 12)
    chunks = [Chunk(b'{"message":{"content":"t\xc3\xa9 %d"}}\n' % n) for n in range(500)]
    body = random.Random(16).randbytes(50_000)
    async with _replicas(postgres_url) as halves:
        streamed = halves.client("01STREAM")
        whole = halves.client("01WHOLE")
        remote = halves.sender.ticket("01STREAM", "a")
        remote.take()
        assert await remote.send(start)
        for chunk in chunks:
            assert await remote.send(chunk)
        remote.let_go(True)
        other = halves.sender.ticket("01WHOLE", "a")
        other.take()
        assert await other.send(Reply(200, (("X-Big", "yes"),), body, 3))
        other.let_go(True)

        assert await _everything(streamed) == [start, *chunks]
        assert await _everything(whole) == [Reply(200, (("X-Big", "yes"),), body, 3)]
    # what queued while a statement ran went out together
    assert max(halves.sender.batches) > 1
    assert sum(halves.sender.batches) < 520


async def test_a_failure_arrives_as_the_worker_said_it(postgres_url: str) -> None:
    failed = Failed(
        Ending.FAILED,
        "model 'x' not found",
        4,
        upstream=Reply(404, (("Content-Type", "application/json"),), b'{"error":"nope"}'),
        answered_by="/api/chat",
        line=b'{"error":"boom"}\n',
    )
    async with _replicas(postgres_url) as halves:
        client = halves.client("01FAIL")
        remote = halves.sender.ticket("01FAIL", "a")
        remote.take()
        assert await remote.send(failed)
        remote.let_go(True)
        assert await _everything(client) == [failed]


async def test_a_notification_lost_on_the_way_cuts_the_client_off_with_a_reason(
    postgres_url: str,
) -> None:
    async with _replicas(postgres_url) as halves:
        client = halves.client("01GAP")
        remote = halves.sender.ticket("01GAP", "a")
        # take, the head, chunks 0 and 1 arrive; chunk 2 (the 5th payload) is lost
        halves.sender.lose = {4}
        remote.take()
        await remote.send(StreamStart(200, (), b"head\n"))
        for n in range(10):
            await remote.send(Chunk(b"%d\n" % n))
        remote.let_go(True)
        heard = await _everything(client)

    assert heard == [
        StreamStart(200, (), b"head\n"),
        Chunk(b"0\n"),
        Chunk(b"1\n"),
        Failed(Ending.PUT_BACK, LOST_MESSAGE.format(id="01GAP")),
    ]


async def test_a_lost_connection_of_the_sender_is_made_again_and_nothing_is_lost(
    postgres_url: str,
) -> None:
    async with _replicas(postgres_url) as halves:
        client = halves.client("01AGAIN")
        remote = halves.sender.ticket("01AGAIN", "a")
        remote.take()
        await remote.send(StreamStart(200, (), b"head\n"))
        await halves.until(lambda: client.streamed)
        assert halves.sender._conn is not None
        pid = halves.sender._conn.info.backend_pid
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for n in range(3):
            await remote.send(Chunk(b"%d\n" % n))
        remote.let_go(True)
        heard = await _everything(client)

    assert heard == [StreamStart(200, (), b"head\n"), *[Chunk(b"%d\n" % n) for n in range(3)]]
    assert halves.sender.dropped == 0


async def test_a_job_that_ended_on_a_replica_that_went_silent_ends_its_clients_wait(
    postgres_url: str,
) -> None:
    async with _replicas(postgres_url, grace=0.5) as halves:
        client = halves.client("01SILENT")
        remote = halves.sender.ticket("01SILENT", "a")
        remote.take()
        await remote.send(StreamStart(200, (), b"head\n"))
        await remote.send(Chunk(b"0\n"))
        await halves.until(lambda: client.streamed)
        # replica "b" wrote the job's end, and died before sending the rest
        halves.tickets.on_job_change(_job("01SILENT", JobState.DONE))
        halves.inbox.on_job_change(_job("01SILENT", JobState.DONE))
        heard = await _everything(client)

    assert heard == [
        StreamStart(200, (), b"head\n"),
        Chunk(b"0\n"),
        Failed(Ending.PUT_BACK, SILENT_MESSAGE.format(id="01SILENT")),
    ]


async def test_the_sender_says_when_everything_queued_has_gone_out(postgres_url: str) -> None:
    async with _replicas(postgres_url) as halves:
        client = halves.client("01FLUSH")
        remote = halves.sender.ticket("01FLUSH", "a")
        remote.take()
        for n in range(300):
            remote.offer(Chunk(b"%d\n" % n))
        with trio.fail_after(PATIENCE):
            await halves.sender.flushed()
        assert not halves.sender._pending
        # sent means in the database's hands: the client hears it all
        await halves.until(lambda: client.receive_channel.statistics().current_buffer_used == 300)
