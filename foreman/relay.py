"""Hands a running job's answer from the worker to the client waiting for it.

A synchronous request attaches a `Ticket` to its job before the job can start. The worker
sends the upstream answer through it: a whole `Reply`, or a `StreamStart` followed by
`Chunk`s. When the job reaches a terminal state the ticket is closed, which ends the
client's stream. A job with no ticket (its client is gone, or it was submitted to be
collected later) runs all the same; only its stored result remains.
"""

from __future__ import annotations

import attrs
import trio

from foreman.jobs import Job

Headers = tuple[tuple[str, str], ...]


@attrs.frozen
class Reply:
    """A complete answer: a non-streamed body, or an error before any stream began."""

    status: int
    headers: Headers
    body: bytes


@attrs.frozen
class StreamStart:
    """The head of a streamed answer, sent with its first line so a retry stays possible
    until a byte of the body is actually relayed."""

    status: int
    headers: Headers
    first: bytes


@attrs.frozen
class Chunk:
    data: bytes


Message = Reply | StreamStart | Chunk

# Lines buffered between the worker and a slow client before the worker waits for it.
BUFFER = 64


@attrs.define(eq=False)
class Ticket:
    job_id: str
    send_channel: trio.MemorySendChannel[Message]
    receive_channel: trio.MemoryReceiveChannel[Message]
    # set once the client may have seen body bytes: from then on a failure is final
    streamed: bool = False
    # while the worker runs the job it closes the ticket itself, after its last message
    in_worker: bool = False
    # why the ticket was closed without an answer while its job stays queued (shutdown)
    closed_because: str | None = None
    # no more messages will come
    closed: bool = False

    def close(self) -> None:
        self.closed = True
        self.send_channel.close()

    async def send(self, message: Message) -> bool:
        """Deliver to the client; False when it has gone (the job runs on regardless)."""
        try:
            await self.send_channel.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        if not isinstance(message, Reply):
            self.streamed = True
        return True

    def offer(self, message: Message) -> bool:
        """`send` without waiting: for a last word that must not wait on a slow client."""
        try:
            self.send_channel.send_nowait(message)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        if not isinstance(message, Reply):
            self.streamed = True
        return True


class Relay:
    def __init__(self) -> None:
        self._tickets: dict[str, Ticket] = {}

    def attach(self, job_id: str) -> Ticket:
        send, receive = trio.open_memory_channel[Message](BUFFER)
        ticket = Ticket(job_id, send, receive)
        self._tickets[job_id] = ticket
        return ticket

    def get(self, job_id: str) -> Ticket | None:
        return self._tickets.get(job_id)

    def detach(self, ticket: Ticket) -> None:
        if self._tickets.get(ticket.job_id) is ticket:
            del self._tickets[ticket.job_id]
        ticket.receive_channel.close()

    def on_job_change(self, job: Job) -> None:
        """Close the ticket of a job that ended away from the worker (cancelled, or failed
        at a restart): its client learns that no answer is coming."""
        if job.state.terminal:
            ticket = self._tickets.get(job.id)
            if ticket is not None and not ticket.in_worker:
                ticket.close()

    def close_waiting(self, reason: str) -> int:
        """End the wait of every client whose job is not running (shutdown): their jobs
        stay queued; each handler answers with `reason`. Returns how many."""
        closed = 0
        for ticket in list(self._tickets.values()):
            if not ticket.in_worker and not ticket.closed:
                ticket.closed_because = reason
                ticket.close()
                closed += 1
        return closed

    def __len__(self) -> int:
        return len(self._tickets)


__all__ = ["BUFFER", "Chunk", "Message", "Relay", "Reply", "StreamStart", "Ticket"]
