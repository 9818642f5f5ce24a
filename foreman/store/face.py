"""The store's Trio face (`Store`): `SyncStore`'s calls on a worker thread, one at a time.

Every write runs inside a shielded cancel scope: cancellation can delay it, never tear it.
A write the database cannot take now comes out as `StoreUnwritable`. Concurrent
submissions are committed together (group commit). `Store.open` opens a SQLite file;
`Store.open_url` a PostgreSQL database (no setting selects one yet).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from foreman.jobs import Job, JobState, NewJob
from foreman.lockfile import DatabaseLock, LockHeld
from foreman.policy import Candidate, Lane, LoadCosts
from foreman.store import pg_leases
from foreman.store.errors import (
    StoreError,
    StoreUnwritable,
    database_lost,
    first_line,
    unwritable_reason,
)
from foreman.store.pg_leases import UpstreamView
from foreman.store.schema import connect
from foreman.store.sql import Activity, Ended, Overview, SyncStore, wall_clock

T = TypeVar("T")


@attrs.define(eq=False)
class _Submission:
    """One caller's submission waiting for a group commit."""

    new: NewJob
    job_id: str | None
    turn: trio.Event = attrs.field(factory=trio.Event)
    answer: tuple[Job, bool] | BaseException | None = None


class Store:
    """The async face of `SyncStore`: each call runs on a worker thread, one at a time.

    `on_change` is called (in Trio, after the commit) with every job a write changed; the
    event broadcaster hangs off it.

    Concurrent submissions are committed together (group commit): while one batch is on
    the store's thread, new submissions queue up, and the first of them leads the next
    batch as soon as the thread is free. No task and no timer: under load each fsync
    carries many jobs, alone a submission commits at once, and each caller still hears
    back only after its job is durable.
    """

    def __init__(
        self,
        sync: SyncStore,
        on_change: Callable[[Job], None] | None = None,
        lock: DatabaseLock | None = None,
    ) -> None:
        self.sync = sync
        self._limiter = trio.CapacityLimiter(1)
        self._on_change = on_change or (lambda job: None)
        self._submissions: list[_Submission] = []
        self._leading = False
        # held until `close`: one foreman per database
        self._lock = lock
        # PostgreSQL's URL, to open a new session after the connection is lost
        self.url: str | None = None

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        clock: Callable[[], float] = wall_clock,
        on_change: Callable[[Job], None] | None = None,
    ) -> Store:
        """Lock, open (creating or migrating) and test-write the database.

        Raises StoreError with one line when another process holds the database, when it
        cannot be opened, and (StoreUnwritable) when it cannot be written: foreman would
        only start to refuse every job.
        """
        lock = DatabaseLock(path)
        try:
            conn = await trio.to_thread.run_sync(_open_locked, path, lock)
        except LockHeld as exc:
            raise StoreError(str(exc)) from None
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from None
        return cls(SyncStore(conn, clock), on_change, lock)

    @classmethod
    async def open_url(
        cls,
        url: str,
        *,
        clock: Callable[[], float] = wall_clock,
        on_change: Callable[[Job], None] | None = None,
    ) -> Store:
        """Connect to the PostgreSQL database at `url` (a libpq URL), bring its schema up
        to date and test-write it.

        Raises StoreError with one line when the server cannot be reached or the schema is
        from a newer foreman, and StoreUnwritable when the server refuses writes (a
        read-only standby, a full disk). The URL is never quoted: it may hold a password.

        No lock here, unlike SQLite's lock file: several foremen sharing one database is
        what PostgreSQL is for. Which of them drives an upstream, runs recovery or the
        janitor is for leases (advisory locks held by each one's session) to decide; until
        they exist, nothing stops two foremen on one database, so nothing may select this
        backend yet.
        """
        sync = await trio.to_thread.run_sync(_open_url, url, clock)
        store = cls(sync, on_change)
        store.url = url
        return store

    def now(self) -> float:
        """The wall clock the store stamps rows with: a caller that compares a time with
        a stored one (a retry's `not_before`, a purge's cutoff) must read this one."""
        return self.sync.clock()

    def set_listener(self, on_change: Callable[[Job], None]) -> None:
        self._on_change = on_change

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read; a lost connection to PostgreSQL comes out as DatabaseLost."""
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except self.sync.driver_errors as exc:
            lost = database_lost(exc)
            if lost is None:
                raise
            raise lost from exc

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a write, shielded; a failure that says the database cannot take writes now
        (a full disk, ..., a lost connection) comes out as StoreUnwritable, which callers
        wait out."""
        with trio.CancelScope(shield=True):
            try:
                result = await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
            except self.sync.driver_errors as exc:
                down = self.unwritable(exc)
                if down is None:
                    raise
                raise down from exc
        return result

    def unwritable(self, exc: BaseException) -> StoreUnwritable | None:
        """`exc` (from any store call, a submission included) as StoreUnwritable when it
        says the database cannot take writes now (DatabaseLost when the connection to
        PostgreSQL is gone); None for any other failure."""
        if isinstance(exc, StoreUnwritable):
            return exc
        lost = database_lost(exc)
        if lost is not None:
            return lost
        reason = unwritable_reason(exc)
        return StoreUnwritable(self.sync.path, reason) if reason is not None else None

    def file_problem(self) -> str | None:
        """`SyncStore.file_problem`: a stat of the database's path, no database access
        (always None on PostgreSQL, whose files are the server's business)."""
        return self.sync.file_problem()

    async def write_problem(self) -> str | None:
        """Why the database cannot take writes now, or None: its file is gone or replaced,
        the write lock cannot be had, or a probe write fails (a full disk, a read-only
        PostgreSQL server, a lost connection)."""
        problem = self.file_problem()
        if problem is not None:
            return problem
        try:
            await self._write(self.sync.probe_write)
        except StoreUnwritable as exc:
            return exc.reason
        return None

    def _notify(self, job: Job | None) -> Job | None:
        if job is not None:
            self._on_change(job)
        return job

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self._read(self.sync.conn.close)
            finally:
                if self._lock is not None:
                    self._lock.release()

    async def enqueue(self, new: NewJob, job_id: str | None = None) -> Job:
        job, _ = await self.submit(new, job_id)
        return job

    async def submit(self, new: NewJob, job_id: str | None = None) -> tuple[Job, bool]:
        """`SyncStore.submit`, committed together with whatever submissions wait with it.

        Shielded like every write: once begun, a submission is committed (or fails)
        whether or not its caller is still there.
        """
        mine = _Submission(new, job_id)
        self._submissions.append(mine)
        with trio.CancelScope(shield=True):
            if self._leading:
                await mine.turn.wait()  # our answer, or the lead of the next batch
            if mine.answer is None:
                await self._commit_submissions()
        assert mine.answer is not None
        if isinstance(mine.answer, BaseException):
            raise mine.answer
        return mine.answer

    async def _commit_submissions(self) -> None:
        """Lead one batch: commit every waiting submission, answer each, and hand the lead
        to the first submission that arrived meanwhile (callers shield this)."""
        self._leading = True
        async with self._limiter:
            # taken once the connection is ours: whatever arrived while it was busy joins
            batch, self._submissions = self._submissions, []
            try:
                answers: list[tuple[Job, bool] | BaseException] = list(
                    await trio.to_thread.run_sync(
                        self.sync.submit_many, [(s.new, s.job_id) for s in batch]
                    )
                )
            except Exception as exc:  # the thread itself failed: every submission hears it
                answers = [exc] * len(batch)
        for submission, answer in zip(batch, answers, strict=True):
            submission.answer = answer
            if isinstance(answer, tuple) and answer[1]:
                self._on_change(answer[0])
            submission.turn.set()
        if self._submissions:
            self._submissions[0].turn.set()  # still leading: the lead passes on
        else:
            self._leading = False

    async def submit_all(self, batch: Sequence[tuple[NewJob, str]]) -> list[tuple[Job, bool]]:
        """`SyncStore.submit_all`: a batch in one commit of its own, all or none."""
        answers = await self._write(self.sync.submit_all, batch)
        for job, created in answers:
            if created:
                self._on_change(job)
        return answers

    async def retry(self, job_id: str) -> Job | None:
        return self._notify(await self._write(self.sync.retry, job_id))

    async def expire_overdue(self) -> list[Job]:
        jobs = await self._write(self.sync.expire_overdue)
        for job in jobs:
            self._on_change(job)
        return jobs

    async def delete(self, job_id: str) -> bool:
        return await self._write(self.sync.delete, job_id)

    async def purge(self, finished_before: float) -> int:
        return await self._write(self.sync.purge, finished_before)

    async def list_jobs(self, **filters: Any) -> list[Job]:
        def run() -> list[Job]:
            return self.sync.list_jobs(**filters)

        return await self._read(run)

    async def transition(
        self, job_id: str, old: JobState, new: JobState, *, loaded: bool = False, **fields: Any
    ) -> Job | None:
        def run() -> Job | None:
            return self.sync.transition(job_id, old, new, loaded=loaded, **fields)

        return self._notify(await self._write(run))

    async def claim(self, resident: str | None, max_wait: float) -> Job | None:
        job, expired = await self._write(self.sync.claim_next, resident, max_wait)
        for gone in expired:
            self._on_change(gone)
        return self._notify(job)

    async def claim_on(
        self, lane: Lane, others: Sequence[Lane], max_wait: float, costs: LoadCosts
    ) -> Job | None:
        job, expired = await self._write(self.sync.claim_on, lane, others, max_wait, costs)
        for gone in expired:
            self._on_change(gone)
        return self._notify(job)

    async def end_and_claim(
        self,
        job_id: str,
        old: JobState,
        new: JobState,
        fields: dict[str, Any],
        claim: tuple[Lane, Sequence[Lane], float, LoadCosts],
    ) -> Ended:
        """`SyncStore.end_and_claim`: a job's end and the claim for the slot it frees
        (`claim`: the lane, the others, the starvation bound, the costs), in one trip to
        the store's thread and one synced commit. Listeners hear of the end first."""
        lane, others, max_wait, costs = claim
        ended = await self._write(
            self.sync.end_and_claim, job_id, old, new, fields, lane, others, max_wait, costs
        )
        self._notify(ended.moved)
        for gone in ended.expired:
            self._on_change(gone)
        self._notify(ended.claimed)
        return ended

    async def measured_costs(self, since: float) -> LoadCosts:
        return await self._read(self.sync.measured_costs, since)

    async def recover_interrupted(self, upstream: str | None = None) -> list[Job]:
        jobs = await self._write(self.sync.recover_interrupted, upstream)
        for job in jobs:
            self._on_change(job)
        return jobs

    async def get(self, job_id: str) -> Job | None:
        return await self._read(self.sync.get, job_id)

    async def jobs_by_ids(self, ids: Sequence[str]) -> list[Job]:
        """`SyncStore.jobs_by_ids`: the jobs named, as they stand, unknown ones left out."""
        return await self._read(self.sync.jobs_by_ids, ids)

    def backend_pid(self) -> int | None:
        """The server process of the store's session now (None on SQLite): a notification
        it names as its sender came from this store's own write. Read afresh each time:
        a new connection is a new session."""
        return self.sync.backend_pid()

    async def running(self, upstream: str | None = None) -> list[Job]:
        return await self._read(self.sync.running, upstream)

    async def next_not_before(self) -> float | None:
        return await self._read(self.sync.next_not_before)

    async def count_queued(self, model_key: str | None = None) -> int:
        return await self._read(self.sync.count_queued, model_key)

    async def unfinished(self) -> list[tuple[str, JobState, str, str | None]]:
        return await self._read(self.sync.unfinished)

    async def ahead_in_key(self, job: Job) -> int:
        return await self._read(self.sync.ahead_in_key, job)

    async def forecast_reads(self, now: float) -> tuple[list[Candidate], list[Job]]:
        return await self._read(self.sync.forecast_reads, now)

    async def overview(self, running_ids: Sequence[str] = (), swaps: int = 40) -> Overview:
        return await self._read(self.sync.overview, running_ids, swaps)

    async def activity(self, since: float) -> Activity:
        return await self._read(self.sync.activity, since)

    async def prune_swaps(self, started_before: float) -> int:
        return await self._write(self.sync.prune_swaps, started_before)

    # -- replicas (PostgreSQL only: see `foreman.store.pg_leases`) -------------------------

    async def try_leases(self, keys: Sequence[int]) -> list[int]:
        """Take whichever of the leases `keys` are free; a lost connection raises
        DatabaseLost (every lease went with it)."""
        return await self._read(pg_leases.try_leases, self.sync, keys)

    async def release_lease(self, key: int) -> bool:
        return await self._read(pg_leases.release_lease, self.sync, key)

    async def upstream_views(self, names: Sequence[str]) -> list[UpstreamView]:
        return await self._read(pg_leases.upstream_views, self.sync, names)

    async def running_upstreams(self) -> list[str]:
        return await self._read(pg_leases.running_upstreams, self.sync)

    async def reconnect(self) -> None:
        """A new session on PostgreSQL after the old one was lost (it held no lease any
        more: the caller has stopped everything that relied on one). Raises StoreError
        while the server cannot be reached."""
        assert self.url is not None, "only a store opened by URL reconnects"
        url = self.url

        def reopen() -> None:
            from foreman.store.pg import pg_connect

            fresh = pg_connect(url)
            old = self.sync.conn
            self.sync.conn = self.sync.pg = fresh  # type: ignore[assignment,attr-defined]
            with contextlib.suppress(Exception):  # it is gone already: this tidies up
                old.close()

        async with self._limiter:
            await trio.to_thread.run_sync(reopen)


def _open_locked(path: Path, lock: DatabaseLock) -> sqlite3.Connection:
    """`Store.open`'s blocking part: the lock first (before recovery can touch another
    foreman's running job), then the connection and a probe write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    try:
        conn = connect(path)
        try:
            SyncStore(conn).probe_write()
        except sqlite3.Error as exc:
            conn.close()
            reason = unwritable_reason(exc)
            if reason is None:
                raise
            raise StoreUnwritable(path, reason) from None
    except BaseException:
        lock.release()
        raise
    return conn


def _open_url(url: str, clock: Callable[[], float]) -> SyncStore:
    """`Store.open_url`'s blocking part. PostgreSQL's driver is imported here, so that a
    foreman on SQLite never loads it."""
    from foreman.store.pg import PgSyncStore, pg_connect

    try:
        sync = PgSyncStore(pg_connect(url), clock)
    except PgSyncStore.driver_errors as exc:  # the migration failed
        raise _opening_error(exc) from None
    try:
        sync.probe_write()
    except PgSyncStore.driver_errors as exc:
        sync.conn.close()
        raise _opening_error(exc) from None
    return sync


def _opening_error(exc: Exception) -> StoreError:
    """A driver's error while opening PostgreSQL's store, in one line."""
    lost = database_lost(exc)
    if lost is not None:
        return lost
    reason = unwritable_reason(exc)
    if reason is not None:
        return StoreUnwritable(None, reason)
    return StoreError(f"cannot open the database: {first_line(exc)}")
