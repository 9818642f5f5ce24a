"""Hands a running job's answer from the worker to the client waiting for it.

A synchronous request attaches a `Ticket` to its job before the job can start. The worker
sends through it what happened, as facts and never as an HTTP reply of foreman's own:
Ollama's whole answer (`Reply`), a stream's head and first part (`StreamStart`) followed
by `Chunk`s, or a classified `Failed`. The route that waits decides what its client sees,
in its route family's shape (`foreman.api.inference`). When the job reaches a terminal state
the ticket is closed, which ends the client's stream. A job with no ticket (its client is
gone, or it was submitted to be collected later) runs all the same; only its stored
result remains.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Protocol

import attrs
import trio

from foreman.jobs import Job

Headers = tuple[tuple[str, str], ...]


@attrs.frozen
class Reply:
    """Ollama's whole answer as it came (its headers without the framing), and how long
    the job waited in the queue before it ran."""

    status: int
    headers: Headers
    body: bytes
    queue_ms: int = 0


@attrs.frozen
class StreamStart:
    """The head of a streamed answer, sent with its first line so a retry stays possible
    until a byte of the body is actually relayed."""

    status: int
    headers: Headers
    first: bytes
    queue_ms: int = 0


@attrs.frozen
class Chunk:
    data: bytes


class Ending(enum.Enum):
    """How a job's run ended without an answer for its client."""

    # the job failed for good (no retry left, or a permanent failure)
    FAILED = "failed"
    # shutdown interrupted it: the job is back in the queue and runs after the restart
    PUT_BACK = "put_back"


@attrs.frozen
class Failed:
    """A run that ended without an answer: the worker's last word to the client."""

    ending: Ending
    # what went wrong (for FAILED, the job's stored error)
    message: str
    queue_ms: int = 0
    # Ollama's own error answer, untouched, when it gave one
    upstream: Reply | None = None
    # the Ollama route that gave `upstream`: the job's own, or a native call made for it
    # (the model's load, or the check that Ollama has the model)
    answered_by: str | None = None
    # Ollama's own in-band error line (or event), when its stream had begun
    line: bytes | None = None


Message = Reply | StreamStart | Chunk | Failed

# Lines buffered between the worker and a slow client before the worker waits for it.
BUFFER = 64
# ... when the worker may be on another replica: it cannot wait for this client, so a
# client that falls this far behind is cut off (see `foreman.answer_inbox`)
REMOTE_BUFFER = 1024


class TicketState(enum.Enum):
    """Where a ticket stands. Only the ticket's own methods move it."""

    # attached; the worker does not hold its job
    WAITING = "waiting"
    # the worker holds the job and the client has seen nothing of the body yet
    ANSWERING = "answering"
    # the worker holds the job and the client may have seen body bytes: a failure is final
    STREAMING = "streaming"
    # no more messages will come
    CLOSED = "closed"


# what a client reading a stream is told when the worker lets go of its job without
# ending it (the worker crashed mid-answer): a second run's answer cannot follow the
# part of the first that the client already has
INTERRUPTED_MESSAGE = (
    "the answer was cut off: foreman's worker stopped mid-answer; job {id} runs again, "
    "collect its answer with GET /jobs/{id}"
)


class HeldState:
    """What a ticket's state says, the same for a client's `Ticket` and the stand-in a
    worker holds for a client on another replica (`remote_answers.RemoteTicket`)."""

    state: TicketState

    @property
    def streamed(self) -> bool:
        """The client may have seen body bytes: from then on a failure is final."""
        return self.state is TicketState.STREAMING

    @property
    def in_worker(self) -> bool:
        """The worker holds the job; it closes the ticket itself, after its last message."""
        return self.state in (TicketState.ANSWERING, TicketState.STREAMING)


@attrs.define(eq=False)
class Ticket(HeldState):
    job_id: str
    send_channel: trio.MemorySendChannel[Message]
    receive_channel: trio.MemoryReceiveChannel[Message]
    _tickets: Tickets
    state: TicketState = TicketState.WAITING
    # why the ticket was closed without an answer while its job stays queued (shutdown)
    closed_because: str | None = None

    def take(self) -> None:
        """The worker starts the job: from now on it alone closes the ticket. A client
        reading a stream when a new run starts has part of a run whose worker never let
        go (its replica died): it is told, as by `let_go`, and its ticket closes."""
        if self.state is TicketState.WAITING:
            self.state = TicketState.ANSWERING
        elif self.state is TicketState.STREAMING:
            self.let_go(ended=False)

    def let_go(self, ended: bool) -> None:
        """The worker is done with the job: closed if the job `ended` (or was aborted).
        Otherwise the job runs again: a client that has seen none of the body waits for
        that run; one reading the stream is told, and its ticket closes (the job's answer
        is collected through the job API)."""
        if ended:
            self.close()
        elif self.state is TicketState.STREAMING:
            self.offer(Failed(Ending.PUT_BACK, INTERRUPTED_MESSAGE.format(id=self.job_id)))
            self.close()
        elif self.state is TicketState.ANSWERING:
            self.state = TicketState.WAITING

    def close(self, because: str | None = None) -> None:
        """No more messages: the client's wait or stream ends. `because`: the job stays
        queued, and this is what its client is told (shutdown)."""
        if because is not None:
            self.closed_because = because
        self.state = TicketState.CLOSED
        self.send_channel.close()

    def release(self) -> None:
        """The client is done with the ticket (it has its answer, or it left)."""
        self._tickets.forget(self)
        self.receive_channel.close()

    async def send(self, message: Message) -> bool:
        """Deliver to the client; False when it has gone (the job runs on regardless)."""
        try:
            await self.send_channel.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self._sent(message)
        return True

    def offer(self, message: Message) -> bool:
        """`send` without waiting: for a last word that must not wait on a slow client."""
        try:
            self.send_channel.send_nowait(message)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self._sent(message)
        return True

    def _sent(self, message: Message) -> None:
        if isinstance(message, StreamStart | Chunk) and self.state is TicketState.ANSWERING:
            self.state = TicketState.STREAMING


class HeldTicket(Protocol):
    """What the worker holds of a job's client: a `Ticket`, or the stand-in of a client
    waiting on another replica (`foreman.remote_answers.RemoteTicket`)."""

    @property
    def job_id(self) -> str: ...

    @property
    def streamed(self) -> bool: ...

    @property
    def in_worker(self) -> bool: ...

    def take(self) -> None: ...

    def let_go(self, ended: bool) -> None: ...

    async def send(self, message: Message) -> bool: ...

    def offer(self, message: Message) -> bool: ...


class Tickets:
    """The tickets of the clients waiting now, one per job at most.

    With replicas, `token` is this replica's, and `remote(job_id, waiter)` makes the
    stand-in the worker holds for a client that waits on the replica `waiter`."""

    def __init__(
        self,
        token: str | None = None,
        remote: Callable[[str, str], HeldTicket] | None = None,
    ) -> None:
        self._tickets: dict[str, Ticket] = {}
        self.token = token
        self._remote = remote

    def attach(self, job_id: str) -> Ticket:
        buffer = BUFFER if self.token is None else REMOTE_BUFFER
        send, receive = trio.open_memory_channel[Message](buffer)
        ticket = Ticket(job_id, send, receive, self)
        self._tickets[job_id] = ticket
        return ticket

    def get(self, job_id: str) -> Ticket | None:
        return self._tickets.get(job_id)

    def for_job(self, job: Job) -> HeldTicket | None:
        """What the worker starting `job` holds of its client: the client's ticket here,
        else the stand-in of one waiting on another replica, else None (nobody waits)."""
        ticket = self._tickets.get(job.id)
        if ticket is not None:
            return ticket
        if self._remote is None or job.waiter is None or job.waiter == self.token:
            return None
        return self._remote(job.id, job.waiter)

    def forget(self, ticket: Ticket) -> None:
        """Drop a released ticket (not a newer one for the same job)."""
        if self._tickets.get(ticket.job_id) is ticket:
            del self._tickets[ticket.job_id]

    def on_job_change(self, job: Job) -> None:
        """Close the ticket of a job that ended away from the worker (cancelled, or failed
        at a restart): its client learns that no answer is coming."""
        if job.state.terminal:
            ticket = self._tickets.get(job.id)
            if ticket is None or ticket.in_worker:
                return
            if self.answered_elsewhere(job):
                # another replica ran it: its last messages may still be on their way
                # here, and `AnswerInbox` closes the ticket once they came (or never will)
                return
            ticket.close()

    def answered_elsewhere(self, job: Job) -> bool:
        """A replica's client whose job has run (anywhere): a worker elsewhere may be
        sending its answer."""
        ran = job.attempts > 0 or job.started_at is not None
        return self.token is not None and job.waiter == self.token and ran

    def close_waiting(self, reason: str) -> int:
        """End the wait of every client whose job is not running (shutdown): their jobs
        stay queued; each handler answers with `reason`. Returns how many."""
        closed = 0
        for ticket in list(self._tickets.values()):
            if not ticket.in_worker and ticket.state is not TicketState.CLOSED:
                ticket.close(reason)
                closed += 1
        return closed

    def __len__(self) -> int:
        return len(self._tickets)


__all__ = [
    "BUFFER",
    "INTERRUPTED_MESSAGE",
    "REMOTE_BUFFER",
    "Chunk",
    "Ending",
    "Failed",
    "HeldState",
    "HeldTicket",
    "Message",
    "Reply",
    "StreamStart",
    "Ticket",
    "TicketState",
    "Tickets",
]
