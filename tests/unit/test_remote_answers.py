"""Answers across replicas, in process: a worker's stand-in ticket on one side, the
client's own ticket behind an `AnswerInbox` on the other, the payloads carried between
them by hand (the PostgreSQL legs have their own tests in tests/pg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from foreman.answer_inbox import (
    GRACE,
    LEAVING_MESSAGE,
    LOST_MESSAGE,
    SILENT_MESSAGE,
    SLOW_MESSAGE,
    AnswerInbox,
)
from foreman.jobs import Endpoint, Job, JobState
from foreman.remote_answers import AnswerSender, RemoteTicket, answers_channel
from foreman.tickets import (
    INTERRUPTED_MESSAGE,
    REMOTE_BUFFER,
    Chunk,
    Ending,
    Failed,
    Message,
    Reply,
    StreamStart,
    Ticket,
    Tickets,
    TicketState,
)

from ._worker_harness import chat, open_rig

JOB = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


class Pipe(AnswerSender):
    """A sender whose payloads go straight into another replica's inbox, or are kept."""

    def __init__(self, token: str, inbox: AnswerInbox | None = None) -> None:
        super().__init__("postgresql:///unused", token)
        self.inbox = inbox
        self.sent: list[tuple[str, str]] = []
        self.lose: set[int] = set()

    def put(self, channel: str, payloads: list[str]) -> None:
        for payload in payloads:
            number = len(self.sent)
            self.sent.append((channel, payload))
            if self.inbox is not None and number not in self.lose:
                self.inbox.handler(payload, 1234)


def _replicas(lose: frozenset[int] = frozenset()) -> tuple[Ticket, RemoteTicket, AnswerInbox, Pipe]:
    """Replica "a" with its client's ticket for JOB; replica "b"'s stand-in for it."""
    tickets = Tickets("a")
    inbox = AnswerInbox(tickets, "a")
    ticket = tickets.attach(JOB)
    sender = Pipe("b", inbox)
    sender.lose = set(lose)
    return ticket, sender.ticket(JOB, "a"), inbox, sender


def _state(ticket: Ticket | RemoteTicket) -> TicketState:
    return ticket.state


def _read(ticket: Ticket) -> list[Message]:
    out: list[Message] = []
    while True:
        try:
            out.append(ticket.receive_channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return out


async def test_a_streamed_answer_reaches_the_client_on_the_other_replica_in_order() -> None:
    ticket, remote, _, sender = _replicas()
    remote.take()
    assert _state(ticket) is TicketState.ANSWERING
    assert await remote.send(StreamStart(200, (("content-type", "x"),), b"first\n", 7))
    for n in range(100):
        assert await remote.send(Chunk(b"part %d\n" % n))
    assert ticket.streamed
    assert remote.streamed
    remote.let_go(True)

    assert _read(ticket) == [
        StreamStart(200, (("content-type", "x"),), b"first\n", 7),
        *[Chunk(b"part %d\n" % n) for n in range(100)],
    ]
    assert _state(ticket) is remote.state is TicketState.CLOSED
    assert {channel for channel, _ in sender.sent} == {answers_channel("a")}


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_run_let_go_unended_does_what_a_local_ticket_does(streamed: bool) -> None:
    ticket, remote, _, sender = _replicas()
    remote.take()
    if streamed:
        await remote.send(StreamStart(200, (), b"a\n"))
    remote.let_go(False)

    assert _state(ticket) is remote.state
    if streamed:
        # the client reading the stream is told, and its wait ends
        assert _read(ticket)[-1] == Failed(Ending.PUT_BACK, INTERRUPTED_MESSAGE.format(id=JOB))
        assert _state(ticket) is TicketState.CLOSED
    else:
        # it waits for the next run, wherever it runs
        assert _state(ticket) is TicketState.WAITING
        again = sender.ticket(JOB, "a")
        again.take()
        await again.send(Reply(200, (), b"{}"))
        again.let_go(True)
        assert _read(ticket) == [Reply(200, (), b"{}")]
        assert _state(ticket) is TicketState.CLOSED


@pytest.mark.parametrize("next_run", ["here", "on a third replica"])
async def test_a_run_whose_replica_died_mid_stream_is_not_followed_by_the_next_run(
    next_run: str,
) -> None:
    # replica "b" streamed part of the answer, then was killed (kill -9: it never let go);
    # the job is put back and runs again, here or elsewhere, from its beginning. The
    # client already has part of the first run: the second cannot follow it in the same
    # stream, so the client is told the job runs again, as when a worker lets go
    ticket, remote, inbox, _ = _replicas()
    remote.take()
    assert await remote.send(StreamStart(200, (), b"first run\n"))
    assert await remote.send(Chunk(b"part of it\n"))
    again: Ticket | RemoteTicket = (
        ticket if next_run == "here" else Pipe("c", inbox).ticket(JOB, "a")
    )
    again.take()
    await again.send(StreamStart(200, (), b"second run\n"))
    await again.send(Chunk(b"all of it\n"))
    again.let_go(True)

    assert _read(ticket) == [
        StreamStart(200, (), b"first run\n"),
        Chunk(b"part of it\n"),
        Failed(Ending.PUT_BACK, INTERRUPTED_MESSAGE.format(id=JOB)),
    ]
    assert _state(ticket) is TicketState.CLOSED


async def test_a_lost_part_cuts_the_client_off_and_says_so() -> None:
    # the 4th payload (chunk 2) never arrives
    ticket, remote, _, _ = _replicas(lose=frozenset({3}))
    remote.take()
    await remote.send(StreamStart(200, (), b"s\n"))
    for n in range(5):
        await remote.send(Chunk(b"%d\n" % n))
    remote.let_go(True)

    heard = _read(ticket)
    assert heard == [
        StreamStart(200, (), b"s\n"),
        Chunk(b"0\n"),
        Failed(Ending.PUT_BACK, LOST_MESSAGE.format(id=JOB)),
    ]
    assert _state(ticket) is TicketState.CLOSED


async def test_a_slow_client_is_cut_off_with_a_last_line_and_loses_no_part_silently() -> None:
    ticket, remote, _, _ = _replicas()
    remote.take()
    await remote.send(StreamStart(200, (), b"s\n"))
    for n in range(REMOTE_BUFFER + 50):
        await remote.send(Chunk(b"%d\n" % n))
    remote.let_go(True)

    heard = _read(ticket)
    # every part up to the cut, in order, then the reason in the place kept for it
    assert heard[0] == StreamStart(200, (), b"s\n")
    assert heard[1:-1] == [Chunk(b"%d\n" % n) for n in range(len(heard) - 2)]
    assert len(heard) == REMOTE_BUFFER
    assert heard[-1] == Failed(Ending.PUT_BACK, SLOW_MESSAGE.format(id=JOB))


async def test_a_payload_without_a_job_changes_nothing_and_an_unreadable_part_cuts_off() -> None:
    ticket, _, inbox, _ = _replicas()
    inbox.handler("nonsense", 1)
    assert _state(ticket) is TicketState.WAITING
    inbox.handler(f"{JOB} s 0 . Q", 1)
    assert _read(ticket) == [Failed(Ending.PUT_BACK, LOST_MESSAGE.format(id=JOB))]
    assert _state(ticket) is TicketState.CLOSED


async def test_the_answer_of_a_client_that_left_is_dropped() -> None:
    ticket, remote, inbox, _ = _replicas()
    ticket.release()
    remote.take()
    await remote.send(Reply(200, (), b"{}"))
    assert not inbox._jobs


def _job(job_id: str = JOB, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": job_id,
        "endpoint": Endpoint.CHAT,
        "model": "m",
        "model_key": "m:latest",
        "body": b"{}",
        "stream": True,
        "state": JobState.QUEUED,
        "priority": 0,
        "attempts": 0,
        "max_attempts": 5,
        "not_before": 0.0,
        "enqueued_at": 0.0,
        "created_at": 0.0,
    }
    values.update(fields)
    return Job(**values)


def test_the_worker_holds_the_clients_ticket_here_else_a_stand_in_else_nothing() -> None:
    made: list[tuple[str, str]] = []

    def remote(job_id: str, waiter: str) -> RemoteTicket:
        made.append((job_id, waiter))
        return Pipe("b").ticket(job_id, waiter)

    tickets = Tickets("b", remote=remote)
    here = tickets.attach("j1")
    assert tickets.for_job(_job("j1", waiter="b")) is here
    # its client was here and left, or nobody waits
    assert tickets.for_job(_job("j2", waiter="b")) is None
    assert tickets.for_job(_job("j3")) is None
    elsewhere = tickets.for_job(_job("j4", waiter="a"))
    assert isinstance(elsewhere, RemoteTicket)
    assert elsewhere.channel == answers_channel("a")
    assert made == [("j4", "a")]
    # one foreman: as before
    assert Tickets().for_job(_job("j5", waiter="a")) is None


def test_a_replicas_job_that_ran_keeps_its_ticket_open_for_its_last_words() -> None:
    tickets = Tickets("a")
    never_ran = tickets.attach("j1")
    ran = tickets.attach("j2")
    single = Tickets()
    alone = single.attach("j3")

    tickets.on_job_change(_job("j1", state=JobState.CANCELLED, waiter="a"))
    tickets.on_job_change(_job("j2", state=JobState.DONE, waiter="a", attempts=1))
    single.on_job_change(_job("j3", state=JobState.DONE, attempts=1))

    assert never_ran.state is TicketState.CLOSED
    assert ran.state is TicketState.WAITING
    assert alone.state is TicketState.CLOSED


@pytest.mark.parametrize("state", [JobState.DONE, JobState.FAILED])
async def test_a_job_that_ended_elsewhere_without_its_last_words_closes_its_clients_wait(
    autojump_clock: trio.testing.MockClock, state: JobState
) -> None:
    ticket, remote, inbox, _ = _replicas()
    remote.take()
    closed_at: list[float] = []

    async with trio.open_nursery() as nursery:
        await nursery.start(inbox.run)
        # the remote replica wrote the job's end and died before its last words
        inbox.on_job_change(_job(state=state, waiter="a", attempts=1))
        await trio.sleep(GRACE / 2)
        assert _state(ticket) is TicketState.ANSWERING
        # ... and a part still heard then puts the end off
        await remote.send(StreamStart(200, (), b"s\n"))
        heard = [message async for message in ticket.receive_channel]
        closed_at.append(trio.current_time())
        nursery.cancel_scope.cancel()

    assert closed_at[0] == pytest.approx(GRACE * 1.5)
    assert heard[-1] == Failed(Ending.PUT_BACK, SILENT_MESSAGE.format(id=JOB))
    assert not inbox._jobs


async def test_a_job_that_ended_with_its_last_words_is_answered_and_not_cut_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ticket, remote, inbox, _ = _replicas()
    remote.take()
    async with trio.open_nursery() as nursery:
        await nursery.start(inbox.run)
        inbox.on_job_change(_job(state=JobState.DONE, waiter="a", attempts=1))
        await trio.sleep(1)
        await remote.send(Reply(200, (), b"{}"))
        remote.let_go(True)
        await trio.sleep(GRACE * 3)
        nursery.cancel_scope.cancel()
    assert _read(ticket) == [Reply(200, (), b"{}")]


async def test_a_job_the_replica_runs_itself_is_left_to_its_own_worker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tickets = Tickets("a")
    inbox = AnswerInbox(tickets, "a")
    ticket = tickets.attach(JOB)
    ticket.take()
    async with trio.open_nursery() as nursery:
        await nursery.start(inbox.run)
        inbox.on_job_change(_job(state=JobState.DONE, waiter="a", attempts=1))
        # its own worker waits on a slow client longer than the grace
        await trio.sleep(GRACE * 3)
        nursery.cancel_scope.cancel()
    assert _state(ticket) is TicketState.ANSWERING


async def test_a_worker_answers_a_client_waiting_on_another_replica(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    client_side = Tickets("a")
    inbox = AnswerInbox(client_side, "a")
    async with open_rig(db_path, virtual_clock) as rig:
        sender = Pipe("b", inbox)
        rig.worker.tickets = Tickets("b", remote=sender.ticket)
        job = await rig.submit(chat(waiter="a"))
        ticket = client_side.attach(job.id)
        rig.start()
        await rig.until_state(job.id, JobState.DONE)
        await trio.testing.wait_all_tasks_blocked()

    (heard,) = _read(ticket)
    assert isinstance(heard, Reply)
    assert heard.status == 200
    assert _state(ticket) is TicketState.CLOSED


async def test_a_replica_shutting_down_tells_clients_answered_from_elsewhere_where_to_look() -> (
    None
):
    ticket, remote, inbox, _ = _replicas()
    remote.take()
    await remote.send(StreamStart(200, (), b"s\n"))
    waiting = inbox.tickets.attach("other")

    assert inbox.close_all() == 1

    assert _read(ticket) == [
        StreamStart(200, (), b"s\n"),
        Failed(Ending.PUT_BACK, LEAVING_MESSAGE.format(id=JOB)),
    ]
    assert _state(ticket) is TicketState.CLOSED
    # a client whose job nobody runs now is `Tickets.close_waiting`'s
    assert _state(waiting) is TicketState.WAITING


# -- a replica that died while its worker held the job -------------------------------------


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_job_put_back_after_its_remote_worker_died_is_let_go_for_it(
    streamed: bool,
) -> None:
    ticket, remote, inbox, sender = _replicas()
    remote.take()
    if streamed:
        await remote.send(StreamStart(200, (), b"a\n"))
    # replica "b" dies: no let-go ever comes; the replica taking its upstream puts the job
    # back in the queue, and that change reaches this replica
    inbox.on_job_change(_job(state=JobState.QUEUED, attempts=1, waiter="a"))
    if streamed:
        assert _read(ticket)[-1] == Failed(Ending.PUT_BACK, INTERRUPTED_MESSAGE.format(id=JOB))
        assert _state(ticket) is TicketState.CLOSED
    else:
        assert _state(ticket) is TicketState.WAITING
        # the next run, on replica "c", answers the client whole
        again = Pipe("c", inbox).ticket(JOB, "a")
        again.take()
        await again.send(Reply(200, (), b"{}"))
        again.let_go(True)
        assert _read(ticket) == [Reply(200, (), b"{}")]
    assert sender.sent


async def test_a_new_run_heard_before_the_put_back_lets_the_dead_run_go_first() -> None:
    ticket, remote, inbox, _ = _replicas()
    remote.take()
    await remote.send(StreamStart(200, (), b"first run\n"))
    # the put-back was missed (the job was claimed again before this replica read it):
    # the next run's first words arrive while the dead run still holds the ticket
    again = Pipe("c", inbox).ticket(JOB, "a")
    again.take()
    await again.send(StreamStart(200, (), b"second run\n"))
    messages = _read(ticket)
    assert messages[0] == StreamStart(200, (), b"first run\n")
    assert messages[-1] == Failed(Ending.PUT_BACK, INTERRUPTED_MESSAGE.format(id=JOB))
    assert StreamStart(200, (), b"second run\n") not in messages
    assert _state(ticket) is TicketState.CLOSED


def test_a_worker_starting_a_job_whose_last_holder_vanished_lets_go_for_it() -> None:
    tickets = Tickets("a")
    streaming = tickets.attach(JOB)
    streaming.take()
    streaming.offer(StreamStart(200, (), b"old\n"))
    # this replica's worker takes the job over: the client already has part of a stream
    held = tickets.for_job(_job(waiter="a"))
    assert held is streaming
    held.take()
    assert _read(streaming)[-1] == Failed(Ending.PUT_BACK, INTERRUPTED_MESSAGE.format(id=JOB))
    assert streaming.state is TicketState.CLOSED
    waiting = tickets.attach("01ARZ3NDEKTSV4RRFFQ69G5FAW")
    waiting.take()
    # one that has seen nothing is answered by the new run
    again = tickets.for_job(_job("01ARZ3NDEKTSV4RRFFQ69G5FAW", waiter="a"))
    assert again is waiting
    again.take()
    assert waiting.state is TicketState.ANSWERING
