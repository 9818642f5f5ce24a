"""In-process notifications: job changes to whoever waits on them, and work to the worker.

Fed by the store after each committed transition; nothing here touches the database, so
a waiter costs nothing while it waits. Event streams read `Feed`s: a change is handed to
every feed as one shared `Change`, whose encoding is made once however many streams send
it, and `StreamSlots` bounds how many streams may be open.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import attrs
import trio

from foreman.jobs import Job


class Wakeup:
    """Wakes the workers when there may be new work; a wake that races a wait is not lost.

    Shared by every worker: one armed event wakes all who armed it, so arming replaces
    the event only once it has fired (a worker arming must not orphan another's)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()

    def arm(self) -> trio.Event:
        """Call before looking for work; wait on the result if none was found."""
        if self._event.is_set():
            self._event = trio.Event()
        return self._event


Listener = Callable[[Job], None]
# a change as one kind of stream sends it (e.g. a server-sent `job` event)
Encoder = Callable[[Job], bytes]


@attrs.define(eq=False)
class Change:
    """A committed job change as event streams send it: each encoding of it is made by
    the first stream that sends it, and every other stream sends the same bytes."""

    job: Job
    _encodings: dict[Encoder, bytes] = attrs.field(factory=dict, init=False, repr=False)

    def encoded(self, encoder: Encoder) -> bytes:
        out = self._encodings.get(encoder)
        if out is None:
            out = self._encodings[encoder] = encoder(self.job)
        return out


@attrs.frozen
class Batch:
    """What an event stream writes next: `changes` in the order they were committed (none:
    a keep-alive) and, when `ended`, nothing after them: the stream closes."""

    changes: list[Change]
    ended: bool = False


class Feed:
    """One event stream's changes, in the order they were committed.

    The broadcaster only appends to it (and wakes the stream if it waits), so a change
    costs it a comparison and an append per open stream; the stream takes what has
    gathered in one go. A feed that falls `limit` changes behind ends rather than holding
    ever more jobs: its stream closes and the client reconnects and reads afresh.
    """

    def __init__(
        self, job_id: str | None, owner: str | None, limit: int, stop: Callable[[Feed], None]
    ) -> None:
        # one job's changes (None: every job's), only those of this key's jobs (None: all)
        self.job_id = job_id
        self.owner = owner
        self.ended = False
        self._limit = limit
        self._pending: list[Change] = []
        self._arrived: trio.Event | None = None
        self._stop = stop

    def offer(self, change: Change) -> None:
        """A broadcaster's hand-off: never blocks."""
        if self.ended or (self.owner is not None and change.job.key_name != self.owner):
            return
        if len(self._pending) >= self._limit:
            self.end()
            return
        self._pending.append(change)
        self._wake()

    def end(self) -> None:
        """No more changes: the stream sends what it holds and closes."""
        self.ended = True
        self._wake()

    def wake(self) -> None:
        """End the stream's wait now with nothing new, so it asks again whether its key
        still stands (the keys were reloaded)."""
        self._wake()

    def _wake(self) -> None:
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    async def wait(self) -> None:
        """Until a change is pending or the feed has ended."""
        if self._pending or self.ended:
            return
        if self._arrived is None:
            self._arrived = trio.Event()
        await self._arrived.wait()

    async def next_batch(
        self,
        wait: float,
        gather: Callable[[], float] | None,
        still_valid: Callable[[], bool],
    ) -> Batch:
        """What the stream writes next, once a change is pending or `wait` seconds have
        passed: every change, none skipped or merged.

        `still_valid` is asked then: False ends the stream with nothing more sent. With
        `gather` (how long, asked then), the stream gathers what arrives for that long
        first, so one write carries a burst. A job's stream ends with the job's first
        terminal state. An ended feed hands over what it holds, then ends the stream.
        """
        with trio.move_on_after(wait):
            await self.wait()
        if not still_valid():
            return Batch([], ended=True)
        if gather is not None and not self.ended:
            await trio.sleep(gather())
        changes = self.take()
        if self.job_id is not None:
            ends = next((i for i, c in enumerate(changes) if c.job.state.terminal), None)
            if ends is not None:
                return Batch(changes[: ends + 1], ended=True)
        return Batch(changes, ended=self.ended)

    def take(self) -> list[Change]:
        """Every pending change, oldest first (empty when none is, e.g. after `end`)."""
        taken, self._pending = self._pending, []
        return taken

    def stop(self) -> None:
        """Unsubscribe (the stream is over)."""
        self.ended = True
        self._pending = []
        self._stop(self)


class JobEvents:
    """Broadcasts every job change to per-job and queue-wide listeners.

    Listeners run synchronously inside `publish`, so they must only hand the job on
    (set an event, `send_nowait` on a channel); they must never block.
    """

    def __init__(self) -> None:
        self._by_job: defaultdict[str, list[Listener]] = defaultdict(list)
        self._all: list[Listener] = []
        # the channels of waiters (long-polls), ended together at shutdown
        self._channels: set[trio.MemorySendChannel[Job]] = set()
        # the event streams' feeds, of one job or of all
        self._feeds_by_job: defaultdict[str, set[Feed]] = defaultdict(set)
        self._feeds: set[Feed] = set()
        self._closed = False

    def publish(self, job: Job) -> None:
        for listener in list(self._by_job.get(job.id, ())):
            listener(job)
        for listener in list(self._all):
            listener(job)
        # one Change for every feed: it is encoded once, by the first stream to send it
        # (offer never adds or removes feeds, so the sets need no copy)
        of_job = self._feeds_by_job.get(job.id)
        if of_job or self._feeds:
            change = Change(job)
            for feed in of_job or ():
                feed.offer(change)
            for feed in self._feeds:
                feed.offer(change)

    def open_feed(self, job_id: str | None, owner: str | None = None, limit: int = 1024) -> Feed:
        """Changes of one job (or of all, with None; only `owner`'s jobs if given) from
        now on, until `Feed.stop`."""
        feed = Feed(job_id, owner, limit, self._drop_feed)
        if self._closed:
            feed.end()
        elif job_id is None:
            self._feeds.add(feed)
        else:
            self._feeds_by_job[job_id].add(feed)
        return feed

    def wake_all(self) -> None:
        """Every open stream looks at once whether its key still stands: a revoked key's
        streams end at the reload, not at their next change or keep-alive."""
        for feed in list(self._feeds):
            feed.wake()
        for of_job in list(self._feeds_by_job.values()):
            for feed in list(of_job):
                feed.wake()

    def _drop_feed(self, feed: Feed) -> None:
        if feed.job_id is None:
            self._feeds.discard(feed)
            return
        of_job = self._feeds_by_job.get(feed.job_id)
        if of_job is not None:
            of_job.discard(feed)
            if not of_job:
                del self._feeds_by_job[feed.job_id]

    def subscribe(self, job_id: str | None, listener: Listener) -> Callable[[], None]:
        """Start listening; returns the function that stops it."""
        target = self._all if job_id is None else self._by_job[job_id]
        target.append(listener)

        def unsubscribe() -> None:
            if listener in target:
                target.remove(listener)
            if job_id is not None and not target:
                self._by_job.pop(job_id, None)

        return unsubscribe

    @contextmanager
    def subscription(
        self, job_id: str | None, buffer: int = 1024
    ) -> Iterator[trio.MemoryReceiveChannel[Job]]:
        """Changes of one job (or of all, with None) as a channel, until the block ends."""
        receive, stop = self.open_channel(job_id, buffer)
        try:
            yield receive
        finally:
            stop()

    def open_channel(
        self, job_id: str | None, buffer: int = 1024
    ) -> tuple[trio.MemoryReceiveChannel[Job], Callable[[], None]]:
        """Changes of one job (or of all) as a channel, and the function that stops them.

        A subscriber that falls `buffer` changes behind is cut off (its channel ends)
        rather than slowing foreman down; it can read the current state and resubscribe.
        """
        send, receive = trio.open_memory_channel[Job](buffer)
        if self._closed:
            send.close()
            return receive, lambda: None
        self._channels.add(send)

        def listener(job: Job) -> None:
            try:
                send.send_nowait(job)
            except trio.WouldBlock:
                send.close()
            except trio.ClosedResourceError:
                pass

        unsubscribe = self.subscribe(job_id, listener)

        def stop() -> None:
            unsubscribe()
            self._channels.discard(send)
            send.close()

        return receive, stop

    def close_all(self) -> None:
        """End every waiter's channel, now and from now on (shutdown): long-polls answer
        with the job as it stands, event streams end."""
        self._closed = True
        for send in list(self._channels):
            send.close()
        self._channels.clear()
        for feed in self._feeds:
            feed.end()
        for of_job in self._feeds_by_job.values():
            for feed in of_job:
                feed.end()

    def feed_count(self) -> int:
        return len(self._feeds) + sum(len(v) for v in self._feeds_by_job.values())

    def watching_all(self) -> int:
        """How many feeds take every job's changes (queue-wide streams)."""
        return len(self._feeds)


class TooManyStreams(Exception):
    """A new event stream was refused: `status` is 429 when the caller's key holds its
    share, 503 when foreman holds as many as it will."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@attrs.define(eq=False)
class StreamSlot:
    """One open event stream's place, held until `release` (by the stream's end)."""

    key: str | None
    _slots: StreamSlots

    def release(self) -> None:
        self._slots.release(self)


class StreamSlots:
    """How many event streams are open, in all and per API key, against two caps.

    Every kind of stream (the job API's and the dashboard's) holds one slot: each holds a
    connection, a task and a buffer of changes alike. Without API keys every caller is
    the same one, so only the total applies. A stream releases its slot when it ends; the
    slots are held weakly as well, so a stream whose response was dropped before it began
    (the client left at once) frees its slot when it is collected, never holding it for
    good.
    """

    def __init__(self, total: int, per_key: int) -> None:
        self.total = total
        self.per_key = per_key
        self._open: weakref.WeakSet[StreamSlot] = weakref.WeakSet()

    def take(self, key: str | None) -> StreamSlot:
        """A slot for a new stream of `key` (None: no API keys); raises TooManyStreams."""
        if key is not None and sum(1 for s in self._open if s.key == key) >= self.per_key:
            raise TooManyStreams(
                f"this key holds {self.per_key} open event streams, its most;"
                " close one before opening another",
                429,
            )
        if len(self._open) >= self.total:
            raise TooManyStreams(
                f"foreman holds {self.total} open event streams, its most; try again later",
                503,
            )
        slot = StreamSlot(key, self)
        self._open.add(slot)
        return slot

    def release(self, slot: StreamSlot) -> None:
        self._open.discard(slot)

    def __len__(self) -> int:
        return len(self._open)
