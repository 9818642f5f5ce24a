"""A ticket's life: who may move it, and what each state means to the worker and to the
client waiting on it."""

from __future__ import annotations

from foreman.jobs import JobState
from foreman.tickets import (
    INTERRUPTED_MESSAGE,
    Chunk,
    Ending,
    Failed,
    Reply,
    StreamStart,
    Ticket,
    Tickets,
    TicketState,
)

from ._helpers import stored_job


def state_of(ticket: Ticket) -> TicketState:
    """The ticket's state, read afresh (mypy would keep the state an earlier assert saw,
    although sending and taking change it)."""
    return ticket.state


async def test_a_ticket_streams_only_once_a_part_of_the_body_went_out() -> None:
    tickets = Tickets()
    ticket = tickets.attach("J1")
    ticket.take()
    assert state_of(ticket) is TicketState.ANSWERING
    assert ticket.in_worker
    assert not ticket.streamed
    # a failure before any byte of the body leaves a retry possible
    assert await ticket.send(Failed(Ending.FAILED, "boom"))
    assert state_of(ticket) is TicketState.ANSWERING
    assert await ticket.send(StreamStart(200, (), b"{}\n"))
    assert state_of(ticket) is TicketState.STREAMING
    assert ticket.streamed


async def test_a_whole_reply_is_not_a_stream() -> None:
    ticket = Tickets().attach("J1")
    ticket.take()
    assert await ticket.send(Reply(200, (), b"{}"))
    assert not ticket.streamed


async def test_the_worker_letting_go_before_the_body_keeps_the_client_waiting() -> None:
    tickets = Tickets()
    ticket = tickets.attach("J1")
    ticket.take()
    ticket.let_go(ended=False)
    # nothing of the body went out: the job's next run answers this client
    assert state_of(ticket) is TicketState.WAITING
    ticket.take()
    assert state_of(ticket) is TicketState.ANSWERING
    ticket.let_go(ended=True)
    assert state_of(ticket) is TicketState.CLOSED


async def test_the_worker_letting_go_mid_stream_tells_the_client_and_closes() -> None:
    # the client has part of the answer: a second run cannot follow it in the same
    # stream, so the client is told its job runs again and where to collect it
    tickets = Tickets()
    ticket = tickets.attach("J1")
    ticket.take()
    assert ticket.offer(Chunk(b"x\n"))
    ticket.let_go(ended=False)
    assert state_of(ticket) is TicketState.CLOSED
    assert not ticket.in_worker
    received = [message async for message in ticket.receive_channel]
    assert received[0] == Chunk(b"x\n")
    assert received[1] == Failed(Ending.PUT_BACK, INTERRUPTED_MESSAGE.format(id="J1"))
    assert len(received) == 2


async def test_only_tickets_the_worker_does_not_hold_are_closed_from_outside() -> None:
    tickets = Tickets()
    held = tickets.attach("J1")
    waiting = tickets.attach("J2")
    held.take()
    tickets.on_job_change(stored_job("J1", JobState.CANCELLED))
    tickets.on_job_change(stored_job("J2", JobState.CANCELLED))
    assert held.state is TicketState.ANSWERING
    assert waiting.state is TicketState.CLOSED
    assert waiting.closed_because is None

    third = tickets.attach("J3")
    assert tickets.close_waiting("shutting down") == 1
    assert third.closed_because == "shutting down"
    assert held.state is TicketState.ANSWERING


async def test_a_released_ticket_is_forgotten_and_its_worker_told_the_client_left() -> None:
    tickets = Tickets()
    ticket = tickets.attach("J1")
    newer = tickets.attach("J2")
    ticket.take()
    ticket.release()
    assert tickets.get("J1") is None
    assert len(tickets) == 1
    assert not await ticket.send(Chunk(b"x\n"))
    # releasing an old ticket leaves a newer one for the same job alone
    replaced = tickets.attach("J2")
    newer.release()
    assert tickets.get("J2") is replaced
