"""The answers this replica's clients wait for, sent by workers on other replicas.

`AnswerInbox.handler` takes the payloads of this replica's answers channel (see
`foreman.remote_answers`) and makes each call the remote worker made on its stand-in on
the client's own `Ticket`, as a worker here would. It never waits: it runs inside the
listener, which serves every notification of the replica. So a client that reads more
slowly than its answer comes cannot hold it up: once its ticket's buffer is full but for
one place, the client is cut off with a last line saying so, in that place, and never
loses a part silently. A part that never came (a gap in the numbers) cuts the client off
the same way rather than hand it an answer with a hole.

The safety net: a job that ended while a remote worker held it, and from which nothing
more is heard within `GRACE` seconds, has its ticket closed (`run`): the replica running
it died between writing the job's end and sending its last words, and the client must
not wait for ever.
"""

from __future__ import annotations

import logging
import math

import attrs
import trio

from foreman.answer_wire import Assembler, Close, Deliver, Gap, LetGo, Op, Take, WireError, parse
from foreman.jobs import Job, JobState
from foreman.remote_answers import answers_channel
from foreman.tickets import Ending, Failed, Message, Ticket, Tickets, TicketState

log = logging.getLogger("foreman.answers")

# how long a job's end waits for the last words of the replica that ran it
GRACE = 5.0

LOST_MESSAGE = (
    "the answer was cut off: part of it was lost between foreman's replicas; "
    "collect job {id}'s answer with GET /jobs/{id}"
)
SLOW_MESSAGE = (
    "the answer was cut off: the client read it more slowly than it came; "
    "collect job {id}'s answer with GET /jobs/{id}"
)
SILENT_MESSAGE = (
    "the answer was cut off: the foreman replica running job {id} stopped sending it; "
    "collect the job's answer with GET /jobs/{id}"
)

LEAVING_MESSAGE = (
    "foreman is shutting down; job {id} goes on running on another foreman replica: "
    "collect its answer with GET /jobs/{id}"
)


@attrs.define
class _Inbound:
    """One job's answer on its way here."""

    assembler: Assembler = attrs.field(factory=Assembler)
    # a worker on another replica holds the job now (it was heard taking it)
    remote: bool = False
    # when the job's end gives up waiting for more (armed by the end)
    deadline: float | None = None
    ended: Job | None = None


class AnswerInbox:
    def __init__(self, tickets: Tickets, token: str, *, grace: float = GRACE) -> None:
        self.tickets = tickets
        self.token = token
        self.grace = grace
        self._jobs: dict[str, _Inbound] = {}
        self._wake = trio.Event()

    @property
    def channel(self) -> str:
        return answers_channel(self.token)

    def handler(self, payload: str, pid: int) -> None:
        """One payload of the answers channel (from any replica's sender, `pid`)."""
        try:
            part = parse(payload)
        except WireError as exc:
            log.warning("an answers payload that cannot be read: %s", exc)
            return
        ticket = self._open(part.job_id)
        if ticket is None:
            return
        inbound = self._jobs.setdefault(part.job_id, _Inbound())
        if inbound.deadline is not None:
            inbound.deadline = trio.current_time() + self.grace
        try:
            op = inbound.assembler.add(part)
        except (Gap, WireError) as exc:
            log.warning("answer of job %s cut off: %s", part.job_id, exc)
            self._cut_off(ticket, LOST_MESSAGE)
            return
        if op is not None:
            self._apply(ticket, inbound, op)

    def on_job_change(self, job: Job) -> None:
        """A job that ended while another replica answers its client here: its last
        words get `grace` seconds to arrive. A job back in the queue while a worker of
        another replica held it (that replica died; the job was put back by the one taking
        its upstream) is let go as that worker would have: a client that has seen part of
        a stream is told it was cut off, one that has seen nothing waits for the next
        run."""
        if job.waiter != self.token:
            return
        if job.state is JobState.QUEUED:
            inbound = self._jobs.get(job.id)
            ticket = self._open(job.id)
            if inbound is not None and inbound.remote and ticket is not None:
                self._let_go_for(ticket, inbound)
            return
        if not job.state.terminal:
            return
        ticket = self._open(job.id)
        if ticket is None:
            return
        inbound = self._jobs.get(job.id)
        if inbound is not None and inbound.remote:
            pass
        elif ticket.in_worker or not self.tickets.answered_elsewhere(job):
            # a worker of this replica holds it, or nothing was ever sent (`Tickets`)
            return
        inbound = self._jobs.setdefault(job.id, _Inbound())
        if inbound.deadline is None:
            inbound.deadline = trio.current_time() + self.grace
            inbound.ended = job
            self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Close the tickets whose job ended and whose replica went silent."""
        task_status.started()
        while True:
            now = trio.current_time()
            for job_id, inbound in list(self._jobs.items()):
                if inbound.deadline is not None and inbound.deadline <= now:
                    self._give_up(job_id, inbound)
            deadlines = [i.deadline for i in self._jobs.values() if i.deadline is not None]
            self._wake = trio.Event()
            with trio.move_on_at(min(deadlines, default=math.inf)):
                await self._wake.wait()

    def close_all(self) -> int:
        """This replica shuts down: the clients whose answer comes from another replica
        are told where to collect it (their jobs run on there). Returns how many."""
        closed = 0
        for job_id, inbound in list(self._jobs.items()):
            ticket = self._open(job_id)
            if ticket is not None and inbound.remote:
                self._cut_off(ticket, LEAVING_MESSAGE)
                closed += 1
        return closed

    def _open(self, job_id: str) -> Ticket | None:
        """The job's ticket while it takes messages (else its state here is dropped)."""
        ticket = self.tickets.get(job_id)
        if ticket is None or ticket.state is TicketState.CLOSED:
            self._jobs.pop(job_id, None)
            return None
        return ticket

    def _apply(self, ticket: Ticket, inbound: _Inbound, op: Op) -> None:
        if isinstance(op, Take):
            inbound.remote = True
            ticket.take()
        elif isinstance(op, Deliver):
            self._deliver(ticket, op.message)
        elif isinstance(op, LetGo):
            inbound.remote = False
            ticket.let_go(op.ended)
        elif isinstance(op, Close):
            ticket.close(op.because)
        if ticket.state is TicketState.CLOSED:
            self._jobs.pop(ticket.job_id, None)

    def _let_go_for(self, ticket: Ticket, inbound: _Inbound) -> None:
        """The remote worker is gone without letting go: do it for it (the job runs again)."""
        inbound.remote = False
        ticket.let_go(False)
        if ticket.state is TicketState.CLOSED:
            self._jobs.pop(ticket.job_id, None)

    def _deliver(self, ticket: Ticket, message: Message) -> None:
        """Into the ticket's buffer, keeping its last place for a last word."""
        stats = ticket.send_channel.statistics()
        if isinstance(message, Failed) or stats.current_buffer_used < stats.max_buffer_size - 1:
            ticket.offer(message)
            return
        log.warning("answer of job %s cut off: its client reads too slowly", ticket.job_id)
        self._cut_off(ticket, SLOW_MESSAGE)

    def _cut_off(self, ticket: Ticket, message: str) -> None:
        ticket.offer(Failed(Ending.PUT_BACK, message.format(id=ticket.job_id)))
        ticket.close()
        self._jobs.pop(ticket.job_id, None)

    def _give_up(self, job_id: str, inbound: _Inbound) -> None:
        del self._jobs[job_id]
        ticket = self._open(job_id)
        if ticket is None:
            return
        log.warning(
            "job %s ended and its replica sent nothing more for %gs: closing its client's wait",
            job_id,
            self.grace,
        )
        done = inbound.ended is not None and inbound.ended.state is JobState.DONE
        if ticket.streamed or done:
            self._cut_off(ticket, SILENT_MESSAGE)
        else:
            # the client hears how the job ended (failed, cancelled) from the job itself
            ticket.close()


__all__ = ["GRACE", "AnswerInbox"]
