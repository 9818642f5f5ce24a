"""In-process notifications: job changes to whoever waits on them, and work to the worker.

Fed by the store after each committed transition; nothing here touches the database, so
a waiter costs nothing while it waits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

from foreman.jobs import Job


class Wakeup:
    """Wakes the worker when there may be new work; a wake that races a wait is not lost."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()

    def arm(self) -> trio.Event:
        """Call before looking for work; wait on the result if none was found."""
        self._event = trio.Event()
        return self._event


Listener = Callable[[Job], None]


class JobEvents:
    """Broadcasts every job change to per-job and queue-wide listeners.

    Listeners run synchronously inside `publish`, so they must only hand the job on
    (set an event, `send_nowait` on a channel); they must never block.
    """

    def __init__(self) -> None:
        self._by_job: defaultdict[str, list[Listener]] = defaultdict(list)
        self._all: list[Listener] = []
        # the channels of waiters (long-polls, event streams), ended together at shutdown
        self._channels: set[trio.MemorySendChannel[Job]] = set()
        self._closed = False

    def publish(self, job: Job) -> None:
        for listener in list(self._by_job.get(job.id, ())):
            listener(job)
        for listener in list(self._all):
            listener(job)

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

    def listener_count(self) -> int:
        return len(self._all) + sum(len(v) for v in self._by_job.values())
