"""Every job operation a route can ask for: submit, look up, wait, cancel, retry, purge.

Routes never touch the store, the tickets or the worker directly; they call a `JobQueue`,
which keeps the rules in one place (a cancel of a running job also aborts its upstream
request, a retry wakes the worker, waiting listens to the broadcaster instead of the
database). The store's exceptions a route answers are named here too, so a route needs
nothing but this module.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import trio
from ulid import ULID

from foreman.events import JobEvents, Wakeup
from foreman.jobs import Job, JobState, NewJob
from foreman.metrics import JobTally
from foreman.store import IdempotencyConflict, NotTerminal, Store, StoreUnwritable
from foreman.tickets import Chunk, Ending, Failed, Message, Reply, StreamStart, Ticket, Tickets

log = logging.getLogger("foreman.queue")

# Ollama's own answer when its queue is full (two spaces, as Ollama writes it), so
# clients that already handle a busy Ollama handle a full foreman
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class Refused(Exception):
    """A new job was not taken; the client may try again after `retry_after` seconds."""

    reason = "refused"
    # the HTTP status the client gets
    status = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(Refused):
    reason = "queue_full"


class KeyQueueFull(Refused):
    """The caller's API key has as many unfinished jobs as its `max_queued` allows: the
    caller, not foreman, is asked to slow down."""

    reason = "key_queue_full"
    status = 429


# how long a key over its `max_queued` is asked to wait: about one job's turn
KEY_QUEUE_RETRY_AFTER = 5


class BatchNeverFits(Exception):
    """A batch that no wait would let in: it alone is beyond a queue limit."""


class ShuttingDown(Refused):
    reason = "shutting_down"


class DatabaseUnwritable(Refused):
    """The database cannot take the job (a full disk, its file deleted): acknowledging
    it anyway would promise what foreman cannot keep."""

    reason = "database_unwritable"


# how long a client is asked to wait when the database cannot be written: an operator
# has to free space, which takes longer than a busy queue takes to drain
UNWRITABLE_RETRY_AFTER = 30


def unwritable_message(reason: str) -> str:
    """What a client hears (the database's path stays in foreman's log and on /ready)."""
    return f"foreman cannot store new jobs now: its database cannot be written ({reason})"


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
        tickets: Tickets,
        wakeup: Wakeup,
        events: JobEvents,
        cancel_running: Callable[[str], bool],
        tally: JobTally | None = None,
        max_queue: int | None = None,
        on_removed: Callable[[], None] | None = None,
        *,
        replica: str | None = None,
    ) -> None:
        self.store = store
        self.tickets = tickets
        self.wakeup = wakeup
        self.events = events
        self._cancel_running = cancel_running
        self.tally = tally or JobTally()
        self.max_queue = max_queue
        # told when finished jobs are deleted (no job change says so)
        self._on_removed = on_removed or (lambda: None)
        # False once shutdown began: new jobs are refused, the queue is kept
        self.accepting = True
        # submissions admitted but not yet stored (they count against the limits)
        self._admitted = 0
        self._admitted_by_key: collections.Counter[str] = collections.Counter()
        # this replica's token (None without replicas): a job whose client waits here says
        # so, so that the replica that runs it sends the answer here
        self.replica = replica

    async def submit(
        self, new: NewJob, *, attach: bool = False, max_queued: int | None = None
    ) -> Submitted:
        """Store a job and wake the worker. With `attach`, the caller's ticket exists
        before the worker can see the job, so no byte of the answer can miss it.

        Raises QueueFull beyond `max_queue` queued jobs, KeyQueueFull when the job's API
        key already has `max_queued` unfinished jobs, and ShuttingDown once shutdown
        began. The check and the admission happen without a checkpoint between them, so
        concurrent submissions cannot overshoot the limit; the store's broadcast counts
        the job as queued before its admission is released.
        """
        owner = new.key_name
        self._check_room(1, owner, max_queued)
        job_id = str(ULID())
        ticket = self.tickets.attach(job_id) if attach else None
        if attach and self.replica is not None:
            new = attrs.evolve(new, waiter=self.replica)
        self._admit(1, owner)
        try:
            job, created = await self.store.submit(new, job_id)
        except Exception as exc:
            if ticket is not None:
                ticket.release()
            down = self.store.unwritable(exc)
            if down is None:
                raise
            log.warning("refusing a new job: %s", down)
            raise DatabaseUnwritable(
                unwritable_message(down.reason), UNWRITABLE_RETRY_AFTER
            ) from exc
        except BaseException:
            if ticket is not None:
                ticket.release()
            raise
        finally:
            self._release(1, owner)
        if not created:
            if ticket is not None:
                ticket.release()
            log.info("job %s returned again for its idempotency key", job.id)
            return Submitted(job, None, False)
        log.info("job %s model=%s state=queued priority=%d", job.id, job.model, job.priority)
        self.wakeup.notify()
        return Submitted(job, ticket, True)

    async def submit_all(
        self, news: Sequence[NewJob], *, owner: str | None = None, max_queued: int | None = None
    ) -> list[Submitted]:
        """Store several jobs in one commit, all or none, and wake the worker once.

        The limits count the whole batch (an idempotent replay among it too, as `submit`
        counts one): QueueFull if it would take the queue beyond `max_queue`,
        KeyQueueFull if `owner` would hold more than `max_queued` unfinished jobs, and
        BatchNeverFits (nothing to wait for) when the batch alone is beyond either limit.
        An idempotency conflict raises IdempotencyConflict with its item's `index`.
        """
        count = len(news)
        self._check_room(count, owner, max_queued)
        # ids in item order, so that listings and the scheduling rule's ties keep the
        # order the jobs were given in (sorted: within one millisecond, ULIDs are only
        # monotonic under some versions of the library)
        ids = sorted(str(ULID()) for _ in range(count))
        self._admit(count, owner)
        try:
            answers = await self.store.submit_all(list(zip(news, ids, strict=True)))
        except Exception as exc:
            down = self.store.unwritable(exc)
            if down is None:
                raise
            log.warning("refusing a batch of %d jobs: %s", count, down)
            raise DatabaseUnwritable(
                unwritable_message(down.reason), UNWRITABLE_RETRY_AFTER
            ) from exc
        finally:
            self._release(count, owner)
        created = sum(1 for _, made in answers if made)
        log.info("batch of %d jobs stored (%d new)", count, created)
        if created:
            self.wakeup.notify()
        return [Submitted(job, None, made) for job, made in answers]

    def _check_room(self, count: int, owner: str | None, max_queued: int | None) -> None:
        """Refuse `count` new jobs of `owner` that the limits have no room for: the queue's
        `max_queue` and the key's `max_queued`, each counting the submissions admitted
        and not yet stored; a batch that could never fit either is BatchNeverFits (there
        is nothing to wait for). Also refused: shutdown, and a database file that moved."""
        if not self.accepting:
            raise ShuttingDown("foreman is shutting down; try again shortly", 30)
        if self.max_queue is not None:
            if count > 1 and count > self.max_queue:
                raise BatchNeverFits(
                    f"a batch of {count} jobs can never fit the queue's limit"
                    f" (max_queue={self.max_queue}); split it"
                )
            if self.tally.queued + self._admitted + count > self.max_queue:
                raise QueueFull(BUSY_MESSAGE, 10)
        if max_queued is not None and owner is not None:
            if count > 1 and count > max_queued:
                raise BatchNeverFits(
                    f"a batch of {count} jobs can never fit key {owner}'s limit"
                    f" (max_queued={max_queued}); split it"
                )
            held = self.tally.unfinished_of(owner) + self._admitted_by_key[owner]
            if held + count > max_queued:
                more = "as many as it may" if count == 1 else f"{count} more would pass"
                raise KeyQueueFull(
                    f"key {owner} has {held} unfinished jobs, {more}"
                    f" (max_queued={max_queued}); try again when some have finished",
                    KEY_QUEUE_RETRY_AFTER,
                )
        moved = self.store.file_problem()
        if moved is not None:
            what = "a new job" if count == 1 else f"a batch of {count} jobs"
            log.warning("refusing %s: %s", what, moved)
            raise DatabaseUnwritable(unwritable_message(moved), UNWRITABLE_RETRY_AFTER)

    def _admit(self, count: int, owner: str | None) -> None:
        """Count `count` jobs of `owner` against the limits until they are stored."""
        self._admitted += count
        if owner is not None:
            self._admitted_by_key[owner] += count

    def _release(self, count: int, owner: str | None) -> None:
        """The admitted jobs are stored (the tally counts them now) or refused."""
        self._admitted -= count
        if owner is not None:
            self._admitted_by_key[owner] -= count
            if not self._admitted_by_key[owner]:
                del self._admitted_by_key[owner]

    async def get(self, job_id: str) -> Job | None:
        return await self.store.get(job_id)

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        model_name: str | None = None,
        ref: str | None = None,
        before: str | None = None,
        limit: int = 50,
        key_name: str | None = None,
    ) -> list[Job]:
        """Jobs newest first, filtered (see `Store.list_jobs`)."""
        return await self.store.list_jobs(
            state=state,
            model_name=model_name,
            ref=ref,
            before=before,
            limit=limit,
            key_name=key_name,
        )

    async def write_problem(self) -> str | None:
        """Why the database cannot take a write now, or None (a probe that changes
        nothing, so a full disk shows)."""
        return await self.store.write_problem()

    @property
    def database(self) -> Path | None:
        """The database file, for an operator's log line."""
        return self.store.sync.path

    def now(self) -> float:
        """The store's clock: the time a job's timestamps are written in."""
        return self.store.now()

    async def wait(
        self, job_id: str, seconds: float, visible: Callable[[Job], bool] | None = None
    ) -> Job | None:
        """The job once it is terminal, or as it stands after `seconds` (None: unknown,
        or not `visible` to the caller).

        Subscribes before reading, so a change between the read and the wait is not
        missed; while waiting it only listens to the broadcaster, never the database.
        """
        with self.events.subscription(job_id) as changes:
            job = await self.store.get(job_id)
            if job is not None and visible is not None and not visible(job):
                return None
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
        deleted = await self.store.delete(job_id)
        if deleted:
            self._on_removed()
        return deleted

    async def purge(self, older_than: float) -> int:
        """Delete finished jobs that ended more than `older_than` seconds ago."""
        purged = await self.store.purge(self.store.now() - older_than)
        if purged:
            log.info("purged %d finished jobs older than %.0fs", purged, older_than)
            self._on_removed()
        return purged


async def run_janitor(queue: JobQueue, retention: float, interval: float = 60.0) -> None:
    """Expire jobs past their deadline and purge finished jobs past the retention."""
    while True:
        try:
            for job in await queue.store.expire_overdue():
                log.info("job %s model=%s state=failed (expired)", job.id, job.model)
            await queue.purge(retention)
            if math.isfinite(retention):
                await queue.store.prune_swaps(queue.store.now() - retention)
        except StoreUnwritable as exc:
            # a full disk is no reason to stop foreman: try again next round
            log.warning("janitor: %s; trying again later", exc)
        await trio.sleep(
            min(interval, max(1.0, retention / 10)) if math.isfinite(retention) else interval
        )


__all__ = [
    "BUSY_MESSAGE",
    "UNWRITABLE_RETRY_AFTER",
    "BatchNeverFits",
    "Chunk",
    "DatabaseUnwritable",
    "Ending",
    "Failed",
    "IdempotencyConflict",
    "JobQueue",
    "KeyQueueFull",
    "Message",
    "NotTerminal",
    "QueueFull",
    "Refused",
    "Reply",
    "ShuttingDown",
    "StoreUnwritable",
    "StreamStart",
    "Submitted",
    "Ticket",
    "run_janitor",
    "unwritable_message",
]
