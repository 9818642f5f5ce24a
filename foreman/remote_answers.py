"""The worker's side of an answer whose client waits on another replica.

A replica's worker that starts a job whose `waiter` is another replica holds a
`RemoteTicket` in place of its client's `Ticket`: the same calls, each turned into NOTIFY
payloads (`foreman.answer_wire`) on the channel of the waiting replica
(`answers_channel`), which hands them to the client's ticket (`foreman.answer_inbox`).
Through the database rather than a route between replicas: every replica reaches the
database already, so this needs no address per replica, no second network path and no
secret of its own.

`AnswerSender` sends them in order from a connection of its own, one statement at a time
on a worker thread; what queued up while a statement ran goes in the next one together.
A statement that fails is tried once more on a new connection, then dropped and logged:
the waiting side notices the hole (a gap in the numbers, or the job's end without its
last words) and tells its client the answer was cut off.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from typing import Any

import attrs
import psycopg
import trio

from foreman.answer_wire import Close, Deliver, LetGo, Op, Take, encode
from foreman.tickets import Chunk, HeldState, Message, StreamStart, TicketState

log = logging.getLogger("foreman.answers")

# payloads waiting to be sent before a worker's `send` waits (as it waits for a slow
# client of its own replica)
PENDING_LIMIT = 4_096
# payloads in one statement at most
BATCH = 256
# after a statement failed twice, the next waits this long (doubling up to the second)
RETRY_PAUSE = (0.1, 5.0)
CONNECT_TIMEOUT = 10


def answers_channel(token: str) -> str:
    """The channel a replica listens on for the answers of its clients."""
    return f"foreman_answers_{token}"


class AnswerSender:
    """Sends the answers of this replica's workers to the replicas whose clients wait."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self._pending: collections.deque[tuple[str, str]] = collections.deque()
        self._more = trio.Event()
        self._room = trio.Event()
        self._runs = itertools.count(1)
        self._conn: psycopg.Connection[Any] | None = None
        # the connection is made and dropped on the sending thread, which `run` abandons
        # when cancelled: the lock and `_stopped` make sure no connection outlives `run`
        self._lock = threading.Lock()
        self._stopped = False
        self._pause = RETRY_PAUSE[0]
        # payloads dropped after a failed statement (their clients were cut off)
        self.dropped = 0
        # set after each statement (made anew): `flushed` waits on it
        self._sent = trio.Event()
        self._in_flight = 0

    def ticket(self, job_id: str, waiter: str) -> RemoteTicket:
        """The stand-in for a client of replica `waiter`, for one run of its job."""
        stream = f"{self.token}-{next(self._runs):x}"
        return RemoteTicket(job_id, answers_channel(waiter), stream, self)

    def put(self, channel: str, payloads: list[str]) -> None:
        """Queue payloads to send, in order (never waits)."""
        self._pending.extend((channel, payload) for payload in payloads)
        self._more.set()

    @property
    def has_room(self) -> bool:
        return len(self._pending) < PENDING_LIMIT

    async def wait_room(self) -> None:
        if self.has_room:
            await trio.lowlevel.checkpoint()
        while not self.has_room:
            if self._room.is_set():
                self._room = trio.Event()
            await self._room.wait()

    async def flushed(self) -> None:
        """Every payload queued so far is sent (or dropped): at shutdown, after the
        workers' last words and before `run` is cancelled."""
        while self._pending or self._in_flight:
            await self._sent.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send what is queued until cancelled; connects when there is something to send."""
        task_status.started()
        try:
            while True:
                if not self._pending:
                    self._more = trio.Event()
                    await self._more.wait()
                batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
                self._room.set()
                self._in_flight = len(batch)
                sent = await trio.to_thread.run_sync(self._send, batch, abandon_on_cancel=True)
                self._in_flight = 0
                self._sent.set()
                self._sent = trio.Event()
                if sent:
                    self._pause = RETRY_PAUSE[0]
                else:
                    await trio.sleep(self._pause)
                    self._pause = min(self._pause * 2, RETRY_PAUSE[1])
        finally:
            with self._lock:
                self._stopped = True
                conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def _send(self, batch: list[tuple[str, str]]) -> bool:
        """One statement for the whole batch (a worker thread; one at a time): PostgreSQL
        delivers a statement's notifications in the order they were made."""
        query = "SELECT " + ", ".join(["pg_notify(%s, %s)"] * len(batch))
        params = [value for pair in batch for value in pair]
        error: Exception | None = None
        for _ in range(2):
            try:
                self._connection().execute(query, params, prepare=False)
                return True
            except psycopg.Error as exc:
                error = exc
                with self._lock:
                    conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()
        assert error is not None
        self.dropped += len(batch)
        log.warning(
            "could not send %d parts of answers to other replicas: %s",
            len(batch),
            _first_line(error),
        )
        return False

    def _connection(self) -> psycopg.Connection[Any]:
        """The sending connection, made if there is none (on the sending thread)."""
        with self._lock:
            conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        with self._lock:
            if not self._stopped:
                self._conn = conn
                return conn
        conn.close()
        raise psycopg.OperationalError("the sender has stopped")


def _first_line(exc: Exception) -> str:
    """psycopg's message in one line (its own runs to several: a hint, a context)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@attrs.define(eq=False)
class RemoteTicket(HeldState):
    """A client waiting on another replica, as the worker sees it (`HeldTicket`): each
    call goes to that replica, where the client's own `Ticket` makes it. Its state moves
    as that ticket's does, so the worker reads here what the client has seen."""

    job_id: str
    channel: str
    stream: str
    _sender: AnswerSender
    state: TicketState = TicketState.WAITING
    _seq: int = 0

    def take(self) -> None:
        if self.state is TicketState.WAITING:
            self.state = TicketState.ANSWERING
            self._put(Take())

    def let_go(self, ended: bool) -> None:
        if self.state is TicketState.CLOSED:
            return
        self._put(LetGo(ended))
        if ended or self.state is TicketState.STREAMING:
            self.state = TicketState.CLOSED
        elif self.state is TicketState.ANSWERING:
            self.state = TicketState.WAITING

    def close(self, because: str | None = None) -> None:
        if self.state is not TicketState.CLOSED:
            self.state = TicketState.CLOSED
            self._put(Close(because))

    async def send(self, message: Message) -> bool:
        """Queued for the client, waiting while the sender is far behind."""
        if self.state is TicketState.CLOSED:
            return False
        await self._sender.wait_room()
        return self.offer(message)

    def offer(self, message: Message) -> bool:
        """Queued for the client at once (a last word is small)."""
        if self.state is TicketState.CLOSED:
            return False
        self._put(Deliver(message))
        if isinstance(message, StreamStart | Chunk) and self.state is TicketState.ANSWERING:
            self.state = TicketState.STREAMING
        return True

    def _put(self, op: Op) -> None:
        payloads = encode(self.job_id, self.stream, self._seq, op)
        self._seq += len(payloads)
        self._sender.put(self.channel, payloads)


__all__ = ["AnswerSender", "RemoteTicket", "answers_channel"]
