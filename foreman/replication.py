"""Job changes made by other replicas, told to this one's parts: `RemoteChanges`.

Each replica's store tells its own parts of the changes it commits (`Store`'s listener).
The changes other replicas commit reach this one as notifications (a trigger on `jobs`,
channel `foreman_jobs`): `RemoteChanges` reads the jobs they name and publishes them to
the same `JobEvents`, so tickets, the tally, the board, long-polls and event streams see
every replica's jobs. Notifications name only a job, never its state: what is published
is the job as it stands when read, so a listener may see a job's latest state alone and
miss those in between (a job first seen already done).

A notification its own store session sent is ignored: that change was published when it
was committed. Notifications missed while the listener reconnected are made good by
reloading what the replica keeps of the queue (`reload`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext

import trio

from foreman.events import JobEvents, Wakeup
from foreman.jobs import JobState
from foreman.store import Store, StoreError

log = logging.getLogger("foreman")

# the channel a trigger on `jobs` notifies on, and the payload that says jobs were deleted
# (as foreman.store.pg says; not imported from it, so that this module never loads
# PostgreSQL's driver)
JOBS_CHANNEL = "foreman_jobs"
DELETED = "-"
# the pause before reading again after the store failed a read (its connection is lost)
RETRY_SECONDS = 1.0


class RemoteChanges:
    """Publishes other replicas' job changes to this replica's parts.

    `handle` is the listener's handler for `JOBS_CHANNEL`, `resync` its `on_resync`;
    `run` (started in the root nursery) does the reading. For each changed job: it is
    published to `events`; a job that became queued wakes the workers; a job that ended
    is cancelled here if a local worker runs it (`cancel_running`: it was cancelled
    through another replica). Jobs deleted, or gone by the time they are read, call
    `on_removed`. After a resync the workers look for work and `reload` rereads what
    the replica keeps of the queue (its tally, its board). The publishing happens
    within `remote()` (`Metrics.remote`: counted in the tally, not in the counters).
    """

    def __init__(
        self,
        store: Store,
        events: JobEvents,
        wakeup: Wakeup,
        *,
        cancel_running: Callable[[str], object],
        on_removed: Callable[[], None],
        reload: Callable[[], Awaitable[None]],
        remote: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self._store = store
        self._events = events
        self._wakeup = wakeup
        self._cancel_running = cancel_running
        self._on_removed = on_removed
        self._reload = reload
        self._remote = remote
        # the ids told and not yet read, in the order told; whether jobs were deleted;
        # whether notifications may have been missed
        self._pending: dict[str, None] = {}
        self._removed = False
        self._resync = False
        self._arrived = trio.Event()

    def handle(self, payload: str, sender: int) -> None:
        """A notification on `JOBS_CHANNEL` (called by the listener: never blocks)."""
        if sender == self._store.backend_pid():
            return  # our own write: published when it was committed
        if payload == DELETED:
            self._removed = True
        else:
            self._pending[payload] = None
        self._arrived.set()

    def resync(self) -> None:
        """The listener reconnected: notifications may have been missed."""
        self._resync = True
        self._arrived.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read and publish what was told, batch by batch: a batch is whatever arrived
        before this task got to run, each job read once, all in one query."""
        task_status.started()
        while True:
            await self._arrived.wait()
            self._arrived = trio.Event()
            try:
                await self._apply()
            except StoreError as exc:
                log.warning("cannot read other replicas' job changes yet: %s", exc)
                self._arrived.set()  # what was not applied is still pending
                await trio.sleep(RETRY_SECONDS)

    async def _apply(self) -> None:
        if self._resync:
            self._resync = False
            self._wakeup.notify()
            try:
                await self._reload()
            except BaseException:
                self._resync = True
                raise
        if self._removed:
            self._removed = False
            self._on_removed()
        if not self._pending:
            return
        ids = list(self._pending)
        self._pending = {}
        try:
            jobs = await self._store.jobs_by_ids(ids)
        except BaseException:
            for job_id in ids:
                self._pending.setdefault(job_id, None)
            raise
        # published with no checkpoint since the read: this replica's own changes are
        # published in the order its store committed them, and a job read here was read
        # in that same order (one connection, one call at a time), so no listener sees
        # a job go back to a state it left
        with self._remote():
            for job in jobs:
                self._events.publish(job)
        for job in jobs:
            if job.state is JobState.QUEUED:
                self._wakeup.notify()
            elif job.state.terminal:
                self._cancel_running(job.id)
        if len(jobs) < len(ids):
            self._on_removed()  # gone before it was read: deleted meanwhile


__all__ = ["DELETED", "JOBS_CHANNEL", "RemoteChanges"]
