"""Every job operation a route can ask for: submit, look up, wait, cancel, retry, purge.

Routes never touch the store or the worker directly; they call a `JobQueue`, which keeps
the rules in one place (a cancel of a running job also aborts its upstream request, a
retry wakes the worker, waiting listens to the broadcaster instead of the database).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import attrs
import trio
from ulid import ULID

from foreman.events import JobEvents, Wakeup
from foreman.jobs import Job, JobState, NewJob
from foreman.relay import Relay, Ticket
from foreman.store import Store

log = logging.getLogger("foreman.queue")


@attrs.frozen
class Submitted:
    job: Job
    # the caller's line to the worker (None unless asked for, or for a replayed key)
    ticket: Ticket | None
    # False when an idempotency key named a job that already existed
    created: bool


class JobQueue:
    def __init__(
        self,
        store: Store,
        relay: Relay,
        wakeup: Wakeup,
        events: JobEvents,
        cancel_running: Callable[[str], bool],
    ) -> None:
        self.store = store
        self.relay = relay
        self.wakeup = wakeup
        self.events = events
        self._cancel_running = cancel_running

    async def submit(self, new: NewJob, *, attach: bool = False) -> Submitted:
        """Store a job and wake the worker. With `attach`, the caller's ticket exists
        before the worker can see the job, so no byte of the answer can miss it."""
        job_id = str(ULID())
        ticket = self.relay.attach(job_id) if attach else None
        try:
            job, created = await self.store.submit(new, job_id)
        except BaseException:
            if ticket is not None:
                self.relay.detach(ticket)
            raise
        if not created:
            if ticket is not None:
                self.relay.detach(ticket)
            log.info("job %s returned again for its idempotency key", job.id)
            return Submitted(job, None, False)
        log.info("job %s model=%s state=queued priority=%d", job.id, job.model, job.priority)
        self.wakeup.notify()
        return Submitted(job, ticket, True)

    async def get(self, job_id: str) -> Job | None:
        return await self.store.get(job_id)

    async def wait(self, job_id: str, seconds: float) -> Job | None:
        """The job once it is terminal, or as it stands after `seconds` (None: unknown).

        Subscribes before reading, so a change between the read and the wait is not
        missed; while waiting it only listens to the broadcaster, never the database.
        """
        with self.events.subscription(job_id) as changes:
            job = await self.store.get(job_id)
            if job is None or job.state.terminal:
                return job
            with trio.move_on_after(seconds):
                async for job in changes:
                    if job.state.terminal:
                        break
            return job

    async def cancel(self, job_id: str, reason: str) -> Job | None:
        """Cancel a queued or running job; returns the job as it ends up (None: unknown).

        A terminal job is returned unchanged. Loops because the worker may move the job
        between our read and our guarded write.
        """
        while True:
            job = await self.store.get(job_id)
            if job is None or job.state.terminal:
                return job
            moved = await self.store.transition(job_id, job.state, JobState.CANCELLED, error=reason)
            if moved is None:
                continue
            log.info("job %s model=%s state=cancelled (%s)", job_id, moved.model, reason)
            if job.state is not JobState.QUEUED:
                self._cancel_running(job_id)
            return moved

    async def retry(self, job_id: str) -> Job | None:
        """A failed or cancelled job back in the queue (None if it is in another state)."""
        job = await self.store.retry(job_id)
        if job is not None:
            log.info("job %s model=%s state=queued (retry requested)", job.id, job.model)
            self.wakeup.notify()
        return job

    async def delete(self, job_id: str) -> bool:
        return await self.store.delete(job_id)

    async def purge(self, older_than: float) -> int:
        """Delete finished jobs that ended more than `older_than` seconds ago."""
        purged = await self.store.purge(self.store.sync.clock() - older_than)
        if purged:
            log.info("purged %d finished jobs older than %.0fs", purged, older_than)
        return purged


async def run_janitor(queue: JobQueue, retention: float, interval: float = 60.0) -> None:
    """Expire jobs past their deadline and purge finished jobs past the retention."""
    while True:
        for job in await queue.store.expire_overdue():
            log.info("job %s model=%s state=failed (expired)", job.id, job.model)
        await queue.purge(retention)
        await trio.sleep(
            min(interval, max(1.0, retention / 10)) if math.isfinite(retention) else interval
        )
