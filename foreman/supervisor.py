"""Keeping each upstream's worker running through its own crashes."""

from __future__ import annotations

import logging

import trio

from foreman.jobs import JobState
from foreman.store import StoreUnwritable
from foreman.worker import Worker

log = logging.getLogger("foreman.worker")


async def supervise(worker: Worker, *, restart_delay: float = 1.0) -> None:
    """Keep a worker running: log a crash, requeue its jobs, restart after a pause.

    Nothing the worker raises ends the supervisor: a database that cannot be written
    (which the worker mostly waits out itself) is waited out here too, without a
    traceback, and the clean-up write waits for it rather than escaping and taking the
    whole process (and /health) down.
    """
    delay = restart_delay
    while True:
        started = trio.current_time()
        try:
            await worker.run()
        except StoreUnwritable as exc:
            await worker.store_backoff.pause(exc, "the worker")
            await _requeue_in_flight(worker, "the database could not be written")
        except Exception:
            if trio.current_time() - started > 60:
                delay = restart_delay  # it had been healthy: not a crash loop
            log.exception("the worker crashed; restarting in %.1fs", delay)
            await _requeue_in_flight(worker, "the worker crashed")
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)


async def _requeue_in_flight(worker: Worker, why: str) -> None:
    """Put back whatever the crashed worker held: every job the store has running on its
    upstream (the store, not the worker's memory, says which). A write that fails
    because the database cannot be written is tried again with backoff."""
    worker.forget_jobs()
    while True:
        try:
            for job in await worker.store.running(worker.member.name):
                moved = await worker.store.transition(job.id, job.state, JobState.QUEUED)
                if moved is not None:
                    log.info("job %s put back in the queue after %s", moved.id, why)
        except StoreUnwritable as exc:
            await worker.store_backoff.pause(exc, "the worker")
            continue
        worker.store_backoff.succeeded()
        worker.wakeup.notify()
        return


async def take_over(worker: Worker) -> None:
    """Drive an upstream whose lease this replica just took (replicas on PostgreSQL): the
    jobs a previous holder left loading or working there go back to the queue (or fail on
    their last attempt), as after a restart, then the worker runs under `supervise`.

    The worker starts from nothing known of its upstream: it probes it before claiming."""
    worker.forget_jobs()
    worker.online = False
    name = worker.member.name
    while True:
        try:
            jobs = await worker.store.recover_interrupted(name)
        except StoreUnwritable as exc:
            await worker.store_backoff.pause(exc, "the worker")
            continue
        break
    for job in jobs:
        log.warning(
            "job %s model=%s was running on upstream %s under its previous holder; now %s",
            job.id,
            job.model,
            name,
            job.state.value,
        )
    if jobs:
        worker.wakeup.notify()
    await supervise(worker)
