"""Every job operation a route can ask for: submit, look up, cancel.

Routes never touch the store or the worker directly; they call a `JobQueue`, which keeps
the rules in one place (a cancel of a running job also aborts its upstream request).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ulid import ULID

from foreman.events import Wakeup
from foreman.jobs import Job, JobState, NewJob
from foreman.relay import Relay, Ticket
from foreman.store import Store

log = logging.getLogger("foreman.queue")


class JobQueue:
    def __init__(
        self,
        store: Store,
        relay: Relay,
        wakeup: Wakeup,
        cancel_running: Callable[[str], bool],
    ) -> None:
        self.store = store
        self.relay = relay
        self.wakeup = wakeup
        self._cancel_running = cancel_running

    async def submit(self, new: NewJob, *, attach: bool = False) -> tuple[Job, Ticket | None]:
        """Store a job and wake the worker. With `attach`, the caller's ticket exists
        before the worker can see the job, so no byte of the answer can miss it."""
        job_id = str(ULID())
        ticket = self.relay.attach(job_id) if attach else None
        try:
            job = await self.store.enqueue(new, job_id)
        except BaseException:
            if ticket is not None:
                self.relay.detach(ticket)
            raise
        log.info("job %s model=%s state=queued priority=%d", job.id, job.model, job.priority)
        self.wakeup.notify()
        return job, ticket

    async def get(self, job_id: str) -> Job | None:
        return await self.store.get(job_id)

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
