"""The store's queries as plain blocking calls on one connection (`SyncStore`).

Every state change goes through `SyncStore._transition_sql`, which checks the transition
table and is a guarded update (`WHERE id=? AND state=?`), so a racing cancel and a
finishing worker cannot both win. Nothing here knows of Trio: `store.face.Store` runs these
calls on a worker thread; tests, tools and benchmarks may call them directly.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
from ulid import ULID

from foreman.jobs import Endpoint, Job, JobState, NewJob, check_transition
from foreman.policy import (
    BACKLOG_CAP,
    Candidate,
    Lane,
    LoadCosts,
    age_order,
    best_copy,
    covered_keys,
    leaving_loads_to_empty,
    model_of,
    rank,
    turn_step,
)
from foreman.residency import split_key
from foreman.store.errors import IdempotencyConflict, NotTerminal

_COLUMNS = (
    "id, endpoint, model, model_key, body, stream, state, priority, attempts, max_attempts,"
    " not_before, enqueued_at, created_at, started_at, finished_at, error, result, queue_ms, ref,"
    " idempotency_key, deadline, key_name, upstream, turn, waiter"
)

TERMINAL_SQL = "('done', 'failed', 'cancelled')"
# the most ids `SyncStore.jobs_by_ids` names in one query (a power of two)
JOBS_BY_IDS_CHUNK = 512

# the aggregates of the scheduling rule, each one seek on a partial queue index
_OLDEST_QUEUED = (
    "SELECT min(enqueued_at) FROM jobs INDEXED BY jobs_queue_age WHERE state = 'queued'"
)
_TOP_PRIORITY = "SELECT max(priority) FROM jobs INDEXED BY jobs_queue WHERE state = 'queued'"
_NEXT_PRIORITY = (
    "SELECT max(priority) FROM jobs INDEXED BY jobs_queue WHERE state = 'queued' AND priority < ?"
)
# the lookups of the scheduling rule (`SyncStore.pick`)
_CANDIDATE = "SELECT id, model_key, priority, enqueued_at, not_before, turn FROM jobs"
_OLDEST_FIRST = "ORDER BY enqueued_at, id LIMIT 1"
# the oldest runnable job of one priority that waited past the starvation bound
_STARVED_AT_PRIORITY = (
    f"{_CANDIDATE} INDEXED BY jobs_queue WHERE state = 'queued' AND priority = ?"
    f" AND enqueued_at < ? AND not_before <= ? {_OLDEST_FIRST}"
)
# the oldest runnable job of the top priority
_TOP_RUNNABLE = (
    f"{_CANDIDATE} INDEXED BY jobs_queue WHERE state = 'queued' AND not_before <= ?"
    " ORDER BY priority DESC, enqueued_at, id LIMIT 1"
)
# the runnable job of one model at one priority whose turn comes first
_MODEL_RUNNABLE = (
    f"{_CANDIDATE} INDEXED BY jobs_queue_turn WHERE state = 'queued' AND model_key = ?"
    " AND priority = ? AND not_before <= ? ORDER BY turn, enqueued_at, id LIMIT 1"
)
# the lookups of the placement rule (`SyncStore.place`): the queued keys one seek each
_NEXT_KEY = (
    "SELECT model_key FROM jobs INDEXED BY jobs_queue_model WHERE state = 'queued'"
    " AND model_key > ? ORDER BY model_key LIMIT 1"
)
# a key's best runnable job: highest priority, then oldest
_KEY_HEAD = (
    f"{_CANDIDATE} INDEXED BY jobs_queue_model WHERE state = 'queued' AND model_key = ?"
    " AND not_before <= ? ORDER BY priority DESC, enqueued_at, id LIMIT 1"
)
# a key's next job: at its highest runnable priority, the first in turn
_KEY_NEXT = (
    f"{_CANDIDATE} INDEXED BY jobs_queue_turn WHERE state = 'queued' AND model_key = ?"
    " AND not_before <= ? ORDER BY priority DESC, turn, enqueued_at, id LIMIT 1"
)
_KEY_TOP_PRIORITY = (
    "SELECT max(priority) FROM jobs INDEXED BY jobs_queue_model"
    " WHERE state = 'queued' AND model_key = ?"
)
_KEY_NEXT_PRIORITY = (
    "SELECT max(priority) FROM jobs INDEXED BY jobs_queue_model"
    " WHERE state = 'queued' AND model_key = ? AND priority < ?"
)
_KEY_STARVED_AT_PRIORITY = (
    f"{_CANDIDATE} INDEXED BY jobs_queue_model WHERE state = 'queued' AND model_key = ?"
    f" AND priority = ? AND enqueued_at < ? AND not_before <= ? {_OLDEST_FIRST}"
)
# a key's runnable jobs, counted up to a cap (`policy.BACKLOG_CAP`); in the index's order,
# so that a planner that chooses by cost (PostgreSQL's) walks the key's rows alone
_KEY_BACKLOG = (
    "SELECT count(*) FROM (SELECT 1 FROM jobs INDEXED BY jobs_queue_model"
    " WHERE state = 'queued' AND model_key = ? AND not_before <= ?"
    " ORDER BY priority DESC, enqueued_at, id LIMIT ?)"
)
# a new job's turn (`policy.turn_for`): behind its owner's last queued job of its key and
# priority, else at the front of that group, else 0; each subquery one seek
_NEW_TURN = (
    "coalesce((SELECT max(turn) FROM jobs INDEXED BY jobs_queue_owner WHERE state = 'queued'"
    " AND model_key = :key AND priority = :prio AND key_name IS :owner) + :step,"
    " (SELECT min(turn) FROM jobs INDEXED BY jobs_queue_turn WHERE state = 'queued'"
    " AND model_key = :key AND priority = :prio), 0)"
)
# a job going back to the queue rejoins its group no further forward than its front
# (`policy.requeued_turn`); the job itself is not queued while this is evaluated
_REQUEUED_TURN = (
    "max(turn, ifnull((SELECT min(turn) FROM jobs AS q INDEXED BY jobs_queue_turn"
    " WHERE q.state = 'queued' AND q.model_key = jobs.model_key"
    " AND q.priority = jobs.priority), turn))"
)
# the queued jobs of a job's key ahead of it (`SyncStore.ahead_in_key`): three counts,
# each a range of the turn index (which holds every column they read)
_AHEAD_IN_KEY = (
    "SELECT (SELECT count(*) FROM jobs INDEXED BY jobs_queue_turn WHERE state = 'queued'"
    " AND model_key = :key AND priority > :prio)"
    " + (SELECT count(*) FROM jobs INDEXED BY jobs_queue_turn WHERE state = 'queued'"
    " AND model_key = :key AND priority = :prio AND turn < :turn)"
    " + (SELECT count(*) FROM jobs INDEXED BY jobs_queue_turn WHERE state = 'queued'"
    " AND model_key = :key AND priority = :prio AND turn = :turn"
    " AND (enqueued_at, id) < (:at, :id))"
)
# every statement `SyncStore.pick` runs, with parameters of the right types, so a test
# can read each one's query plan (`SyncStore.explain_pick`)
PICK_STATEMENTS: tuple[tuple[str, tuple[Any, ...]], ...] = (
    (_OLDEST_QUEUED, ()),
    (_TOP_PRIORITY, ()),
    (_STARVED_AT_PRIORITY, (0, 0.0, 0.0)),
    (_NEXT_PRIORITY, (0,)),
    (_TOP_RUNNABLE, (0.0,)),
    (_MODEL_RUNNABLE, ("m", 0, 0.0)),
)
# and every statement `SyncStore.place` runs
PLACE_STATEMENTS: tuple[tuple[str, tuple[Any, ...]], ...] = (
    (_OLDEST_QUEUED, ()),
    (_TOP_PRIORITY, ()),
    (_NEXT_KEY, ("",)),
    (_KEY_HEAD, ("m", 0.0)),
    (_KEY_NEXT, ("m", 0.0)),
    (_KEY_TOP_PRIORITY, ("m",)),
    (_KEY_NEXT_PRIORITY, ("m", 0)),
    (_KEY_STARVED_AT_PRIORITY, ("m", 0, 0.0, 0.0)),
    (_KEY_BACKLOG, ("m", 0.0, 1)),
)


@attrs.frozen
class Swap:
    """One model load: which model, when the load began and ended, and how many jobs
    started while that model stayed resident (the one that caused the load included).

    `upstream` names the upstream that made the load; None for a load recorded before
    foreman drove several upstreams (there was only one then).
    """

    model_key: str
    job_id: str
    started_at: float
    loaded_at: float
    jobs: int
    upstream: str | None = None


@attrs.frozen
class Waiting:
    """The queued jobs of one residency key."""

    model_key: str
    count: int
    oldest_enqueued_at: float
    top_priority: int


@attrs.frozen
class Activity:
    """What the queue did over a recent window, for the dashboard's headline."""

    since: float
    # jobs that ran and ended in the window, by final state
    finished: dict[str, int]
    # the loads those jobs cost in the order they ran, and in arrival order: one per
    # change of model, counted the same way for both so the comparison is fair (a load
    # that failed, or a model already resident at start, counts alike on both sides)
    loads: int
    arrival_loads: int
    # jobs done in the last hour
    done_last_hour: int


@attrs.frozen
class Overview:
    """What the dashboard reads from the database after each change, in one go.

    `running` holds the running jobs it was asked for that the store still has, in the
    order asked (a job can end between the ask and the read: it is then read as ended).
    """

    waiting: list[Waiting]
    swaps: list[Swap]
    running: list[Job]


@attrs.frozen
class Ended:
    """What `SyncStore.end_and_claim` committed: the ended job (None when it had left the
    state it was ended from), the job claimed for the freed slot and the queued jobs its
    claim found past their deadline (failed), whether the claim was looked for at all
    (False: it failed and was undone), and, when nothing was claimed, when the earliest
    job in retry backoff becomes runnable."""

    moved: Job | None
    claimed: Job | None = None
    expired: list[Job] = attrs.field(factory=list)
    looked: bool = False
    retry_at: float | None = None
    # why the claim was undone, when it was
    claim_error: str | None = None


def wall_clock() -> float:
    """The one source of wall-clock time for stored timestamps."""
    return time.time()


_READ = object()


def _row_to_job(row: Sequence[Any], result: Any = _READ) -> Job:
    """A job from its row (`_COLUMNS`); `result`, when given, is the value of the result
    column as it was written, so its JSON need not be parsed back."""
    return Job(
        id=row[0],
        endpoint=Endpoint(row[1]),
        model=row[2],
        model_key=row[3],
        body=bytes(row[4]),
        stream=bool(row[5]),
        state=JobState(row[6]),
        priority=row[7],
        attempts=row[8],
        max_attempts=row[9],
        # RETURNING gives whole-number REALs back as ints: make them floats again
        not_before=float(row[10]),
        enqueued_at=float(row[11]),
        created_at=float(row[12]),
        started_at=_float(row[13]),
        finished_at=_float(row[14]),
        error=row[15],
        result=_result(row[16]) if result is _READ else result,
        queue_ms=row[17],
        ref=row[18],
        idempotency_key=row[19],
        deadline=_float(row[20]),
        key_name=row[21],
        upstream=row[22],
        turn=row[23],
        waiter=row[24],
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _result(text: str | None) -> Any:
    """A stored result; text that is not JSON (written by hand, or by a foreman with a
    bug) comes back as `{"raw": text}` rather than breaking every read of its row."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {"raw": text}


class SyncStore:
    """The store's queries as plain blocking methods on one connection.

    `Store` runs these on a worker thread; tests and tools may call them directly.
    """

    # what the connection's driver raises for a statement the database refused
    driver_errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float] = wall_clock):
        self.conn = conn
        self.clock = clock
        # the connection's own level (2 = FULL), which `_unsynced` returns to
        self._synchronous = int(conn.execute("PRAGMA synchronous").fetchone()[0])
        # the file this connection writes to (None in memory) and its identity, to notice
        # the file being deleted or replaced under us (SQLite itself goes on writing to
        # the unlinked file, and whatever it takes then is gone at the next start)
        name = conn.execute("PRAGMA database_list").fetchone()[2]
        self.path = Path(name) if name else None
        self._identity = _identity(self.path) if self.path is not None else None

    @contextmanager
    def _unsynced(self, unsynced: bool = True) -> Iterator[None]:
        """Commit without waiting for the disk: for the worker's own moves only.

        In WAL mode a commit at `synchronous = NORMAL` is in the operating system's hands
        when it returns (a crash of foreman loses nothing) but reaches the disk only with
        the next synced commit, which carries every commit before it. A power cut can
        undo it. The moves made this way are those a restart would undo anyway: a
        claim, loading -> working, and back to the queue after a failure; undoing one
        leaves the job queued or running, and recovery queues it. Everything someone is
        told about (a submission, an end, a cancel, a retry) stays synced before the
        answer. SQLite takes the setting only outside a transaction.
        """
        if not unsynced or self._synchronous <= 1:
            yield
            return
        self.conn.execute("PRAGMA synchronous = NORMAL")
        try:
            yield
        finally:
            self.conn.execute(f"PRAGMA synchronous = {self._synchronous}")

    # -- writes ---------------------------------------------------------------------------

    def enqueue(self, new: NewJob, job_id: str | None = None) -> Job:
        """Store a new queued job (see `submit` for idempotency keys)."""
        job, _ = self.submit(new, job_id)
        return job

    def submit(self, new: NewJob, job_id: str | None = None) -> tuple[Job, bool]:
        """Store a new job, or find the one its idempotency key already names.

        Returns the job and whether it was created. The same key with a different request
        raises IdempotencyConflict. Check and insert are one transaction, so two
        concurrent submissions with one key make one job.
        """
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            return self._insert(new, job_id)

    def submit_many(
        self, batch: Sequence[tuple[NewJob, str | None]]
    ) -> list[tuple[Job, bool] | Exception]:
        """Several submissions in one transaction: one commit, one fsync, for them all.

        The group commit behind concurrent `Store.submit` calls. Each answer is what
        `submit` would have returned or raised for that submission. Each submission runs
        inside its own savepoint, so one that fails (an idempotency conflict, a row SQLite
        or its driver refuses) is rolled back and answers its own caller alone; if the
        transaction as a whole fails, each submission is tried again on its own.
        """
        out: list[tuple[Job, bool] | Exception] = []
        try:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                for new, job_id in batch:
                    out.append(self._insert_alone(new, job_id))
        except self.driver_errors:
            if len(batch) == 1:
                raise
            out = []
            for new, job_id in batch:
                try:
                    out.append(self.submit(new, job_id))
                except Exception as exc:
                    out.append(exc)
        return out

    def submit_all(self, batch: Sequence[tuple[NewJob, str]]) -> list[tuple[Job, bool]]:
        """Several submissions as one: one transaction, one commit, all or none.

        Each answer is what `submit` would have returned. If one is refused (an
        idempotency conflict, its `index` set) or fails, nothing is stored. A key used
        twice in the batch names the job its first use made.
        """
        out: list[tuple[Job, bool]] = []
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            for index, (new, job_id) in enumerate(batch):
                try:
                    out.append(self._insert(new, job_id))
                except IdempotencyConflict as exc:
                    exc.index = index
                    raise
        return out

    def _insert_alone(self, new: NewJob, job_id: str | None) -> tuple[Job, bool] | Exception:
        """`_insert` inside a savepoint: its failure is its answer, and undoes only its own
        work. Raises only if the savepoint itself fails (the transaction is lost)."""
        self.conn.execute("SAVEPOINT submission")
        try:
            answer: tuple[Job, bool] | Exception = self._insert(new, job_id)
        except Exception as exc:
            self.conn.execute("ROLLBACK TO submission")
            answer = exc
        self.conn.execute("RELEASE submission")
        return answer

    def _insert(self, new: NewJob, job_id: str | None) -> tuple[Job, bool]:
        """`submit`'s work inside a transaction the caller holds."""
        now = self.clock()
        job_id = job_id or str(ULID())
        if new.idempotency_key is not None:
            # the unique index's own expression, so the lookup is one seek on it
            found = self.conn.execute(
                f"SELECT {_COLUMNS}, request_hash FROM jobs"
                f" WHERE ifnull(key_name, '') = ? AND idempotency_key = ?",
                (new.key_name or "", new.idempotency_key),
            ).fetchone()
            if found is not None:
                existing = _row_to_job(found)
                if found[-1] != new.request_hash:
                    raise IdempotencyConflict(existing)
                return existing, False
        row = self.conn.execute(
            f"INSERT INTO jobs (id, endpoint, model, model_key, model_name, body, stream,"
            f" state, priority, attempts, max_attempts, not_before, enqueued_at, created_at,"
            f" ref, deadline, idempotency_key, request_hash, key_name, turn, waiter)"
            f" VALUES (:id, :endpoint, :model, :key, :name, :body, :stream, 'queued', :prio,"
            f" 0, :max_attempts, 0, :now, :now, :ref, :deadline, :idem, :hash, :owner,"
            f" {_NEW_TURN}, :waiter) RETURNING {_COLUMNS}",
            {
                "id": job_id,
                "endpoint": new.endpoint.value,
                "model": new.model,
                "key": new.model_key,
                "name": split_key(new.model_key)[0],
                "body": new.body,
                "stream": int(new.stream),
                "prio": new.priority,
                "max_attempts": new.max_attempts,
                "now": now,
                "ref": new.ref,
                "deadline": new.deadline,
                "idem": new.idempotency_key,
                "hash": new.request_hash,
                "owner": new.key_name,
                "step": turn_step(new.weight),
                "waiter": new.waiter,
            },
        ).fetchone()
        return _row_to_job(row), True

    def retry(self, job_id: str) -> Job | None:
        """A failed or cancelled job back to the end of the queue, its attempts reset.

        None when the job is in any other state (or unknown)."""
        job = self.get(job_id)
        if job is None or job.state not in (JobState.FAILED, JobState.CANCELLED):
            return None
        now = self.clock()
        return self.transition(
            job_id,
            job.state,
            JobState.QUEUED,
            attempts=0,
            not_before=0.0,
            enqueued_at=now,
            started_at=None,
            finished_at=None,
            error=None,
            result=None,
            queue_ms=None,
            deadline=None,
        )

    def expire_overdue(self) -> list[Job]:
        """Fail queued jobs whose deadline passed before they could start."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            return self._expire(self.clock())

    def _expire(self, now: float) -> list[Job]:
        out: list[Job] = []
        rows = self.conn.execute(
            "SELECT id FROM jobs INDEXED BY jobs_deadline WHERE state = 'queued'"
            " AND deadline IS NOT NULL AND deadline < ?",
            (now,),
        ).fetchall()
        for (job_id,) in rows:
            moved = self._transition_sql(
                job_id,
                JobState.QUEUED,
                JobState.FAILED,
                {"finished_at": now, "error": "expired: not started before its deadline"},
            )
            if moved is not None:
                out.append(moved)
        return out

    def delete(self, job_id: str) -> bool:
        """Remove a finished job; False if unknown, NotTerminal if it has not finished."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            row = self.conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return False
            if not JobState(row[0]).terminal:
                raise NotTerminal(job_id)
            self.conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return True

    def purge(self, finished_before: float, batch: int = 1000) -> int:
        """Delete finished jobs that ended before `finished_before`, in small batches so
        a big purge never holds the write lock for long."""
        total = 0
        while True:
            with self.conn:
                cur = self.conn.execute(
                    f"DELETE FROM jobs WHERE id IN (SELECT id FROM jobs INDEXED BY jobs_finished"
                    f" WHERE state IN {TERMINAL_SQL} AND finished_at < ? LIMIT ?)",
                    (finished_before, batch),
                )
            total += cur.rowcount
            if cur.rowcount < batch:
                return total

    def _transition_sql(
        self, job_id: str, old: JobState, new: JobState, fields: dict[str, Any]
    ) -> Job | None:
        """The single place a job changes state. None when the job was not in `old`."""
        sql, params = self._transition_statement(job_id, old, new, fields)
        return self._moved(self.conn.execute(sql, params).fetchone(), fields)

    @staticmethod
    def _transition_statement(
        job_id: str, old: JobState, new: JobState, fields: dict[str, Any]
    ) -> tuple[str, list[Any]]:
        """`_transition_sql`'s guarded update, checked against the transition table."""
        check_transition(old, new)
        sets = ["state = ?"]
        params: list[Any] = [new.value]
        if new is JobState.QUEUED and old is not JobState.QUEUED:
            sets.append(f"turn = {_REQUEUED_TURN}")
        for name, value in fields.items():
            if name == "attempts_delta":
                sets.append("attempts = attempts + ?")
            elif name == "result":
                sets.append("result = ?")
                value = None if value is None else json.dumps(value, separators=(",", ":"))
            else:
                sets.append(f"{name} = ?")
            params.append(value)
        params += [job_id, old.value]
        sql = f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND state = ? RETURNING {_COLUMNS}"
        return sql, params

    @staticmethod
    def _moved(row: Sequence[Any] | None, fields: dict[str, Any]) -> Job | None:
        """The job `_transition_statement` returned, if it moved."""
        if row is None:
            return None
        # a result just written is the value in hand: not parsed back from its JSON
        return _row_to_job(row, fields["result"]) if "result" in fields else _row_to_job(row)

    def transition(
        self, job_id: str, old: JobState, new: JobState, *, loaded: bool = False, **fields: Any
    ) -> Job | None:
        """Move one job from `old` to `new`, setting `fields`, as one committed write.

        `finished_at` is stamped on terminal states. Returns None (and changes nothing)
        when the job is not in `old` any more: someone else moved it first. `loaded` (on
        loading -> working) records the model load the move ends in the swap history,
        in the same commit.
        """
        if new.terminal:
            fields.setdefault("finished_at", self.clock())
        # synced unless the move is one recovery would redo (see `_unsynced`); BEGIN, since
        # the connection is in autocommit mode and the swap's row belongs to the same commit
        with self._unsynced(not (new.terminal or old.terminal)), self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            moved = self._transition_sql(job_id, old, new, fields)
            if moved is not None and loaded and old is JobState.LOADING:
                self._send(
                    "INSERT INTO swaps (model_key, job_id, started_at, loaded_at, upstream)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        moved.model_key,
                        moved.id,
                        moved.started_at or self.clock(),
                        self.clock(),
                        moved.upstream,
                    ),
                )
            return moved

    def end_and_claim(
        self,
        job_id: str,
        old: JobState,
        new: JobState,
        fields: dict[str, Any],
        lane: Lane,
        others: Sequence[Lane],
        max_wait: float,
        costs: LoadCosts,
    ) -> Ended:
        """A job's end and the next claim for the slot it frees (`claim_on` on `lane`), in
        one transaction: one commit, synced as an end must be, for both.

        The claim runs inside a savepoint after the end: if it fails (a bug, a row the
        driver refuses), only the claim is undone and the end still commits
        (`Ended.looked` is then False, and the caller claims the usual way). When
        nothing is claimed, the earliest retry (`next_not_before`) is read in the same
        trip, so an idle worker needs no further read before it waits.
        """
        check_transition(old, new)
        if not new.terminal:
            raise ValueError(f"end_and_claim ends a job; {new.value} is not an end")
        now = self.clock()
        fields.setdefault("finished_at", now)
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            moved = self._transition_sql(job_id, old, new, fields)
            self.conn.execute("SAVEPOINT claim")
            try:
                claimed, expired = self._claim_on(lane, others, max_wait, costs, now)
                retry_at = self.next_not_before() if claimed is None else None
            except Exception as exc:
                self.conn.execute("ROLLBACK TO claim")
                self.conn.execute("RELEASE claim")
                return Ended(moved, claim_error=f"{type(exc).__name__}: {exc}")
            self.conn.execute("RELEASE claim")
        return Ended(moved, claimed, expired, True, retry_at)

    def claim(self, resident: str | None, max_wait: float) -> Job | None:
        """Pick the next job by the scheduling rule and mark it started, in one write.

        The job moves to `working` when its model is `resident` (no load needed) and to
        `loading` otherwise; its attempt count goes up by one.
        """
        return self.claim_next(resident, max_wait)[0]

    def claim_next(self, resident: str | None, max_wait: float) -> tuple[Job | None, list[Job]]:
        """`claim`, also failing (and returning) queued jobs whose deadline has passed, so
        no job starts after its deadline."""
        now = self.clock()
        with self._unsynced(), self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            expired = self._expire(now)
            picked = self.pick(resident, now, max_wait)
            if picked is None:
                return None, expired
            return self._start(picked, resident, now, None), expired

    def claim_on(
        self, lane: Lane, others: Sequence[Lane], max_wait: float, costs: LoadCosts
    ) -> tuple[Job | None, list[Job]]:
        """`claim_next` for one upstream of a fleet: the job `place` chooses for a free
        slot on `lane`, marked started there (its `upstream` is the lane's name), in one
        write; also failing queued jobs whose deadline has passed."""
        now = self.clock()
        with self._unsynced(), self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            return self._claim_on(lane, others, max_wait, costs, now)

    def _claim_on(
        self, lane: Lane, others: Sequence[Lane], max_wait: float, costs: LoadCosts, now: float
    ) -> tuple[Job | None, list[Job]]:
        """`claim_on`'s work inside a transaction the caller holds."""
        expired = self._expire(now)
        picked = self.place(lane, others, now, max_wait, costs)
        if picked is None:
            return None, expired
        return self._start(picked, lane.resident, now, lane.name), expired

    def _start(
        self, picked: Candidate, resident: str | None, now: float, upstream: str | None
    ) -> Job | None:
        """Mark a picked job started: `working` when its key is `resident`, `loading`
        otherwise; one more attempt; and one more job for the latest load on its upstream."""
        new = JobState.WORKING if picked.model_key == resident else JobState.LOADING
        fields: dict[str, Any] = {
            "attempts_delta": 1,
            "started_at": now,
            "queue_ms": int(max(0.0, now - picked.enqueued_at) * 1000),
        }
        if upstream is not None:
            fields["upstream"] = upstream
        if new is JobState.WORKING:
            # before the job's move, which it does not depend on: it may go out with it
            self._send(
                "UPDATE swaps SET jobs = jobs + 1 WHERE id = (SELECT max(id) FROM swaps"
                " WHERE upstream IS ?) AND model_key = ?",
                (upstream, picked.model_key),
            )
        return self._transition_sql(picked.id, JobState.QUEUED, new, fields)

    def _send(self, sql: str, params: Sequence[Any]) -> None:
        """A write whose answer nothing reads (PostgreSQL's store sends it together with
        the transaction's next statement)."""
        self.conn.execute(sql, params)

    def recover_interrupted(self, upstream: str | None = None) -> list[Job]:
        """Put jobs a crash left in loading/working back in the queue (run at start;
        with `upstream`, only the jobs on that upstream: a replica taking over its lease).

        A job that has used all its attempts fails instead, so a request that crashes
        foreman every time cannot crash it forever.
        """
        out: list[Job] = []
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            for job in self.running(upstream):
                if job.attempts >= job.max_attempts:
                    moved = self._transition_sql(
                        job.id,
                        job.state,
                        JobState.FAILED,
                        {
                            "finished_at": self.clock(),
                            "error": "interrupted by a restart on its last attempt",
                        },
                    )
                else:
                    moved = self._transition_sql(job.id, job.state, JobState.QUEUED, {})
                if moved is not None:
                    out.append(moved)
        return out

    # -- reads ----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row_to_job(row) if row is not None else None

    def pick(self, resident: str | None, now: float, max_wait: float) -> Candidate | None:
        """The scheduling rule of `foreman.policy.pick_next`, as indexed lookups.

        Never scans the queue: each step is a seek on a partial index; the only rows a
        step may pass over are jobs waiting out a retry backoff (not_before > now).
        """
        cutoff = now - max_wait
        # 1. starvation bound: only if the oldest queued job is old enough at all
        # INDEXED BY: left to itself SQLite answers these aggregates from jobs_by_state,
        # walking every queued row; on the partial indexes they are one seek each
        (oldest,) = self.conn.execute(_OLDEST_QUEUED).fetchone()
        if oldest is not None and oldest < cutoff:
            prio = self.conn.execute(_TOP_PRIORITY).fetchone()[0]
            while prio is not None:
                row = self.conn.execute(_STARVED_AT_PRIORITY, (prio, cutoff, now)).fetchone()
                if row is not None:
                    return Candidate(*row)
                prio = self.conn.execute(_NEXT_PRIORITY, (prio,)).fetchone()[0]
        # 2. the top priority; its oldest job decides a switch if the resident has none
        row = self.conn.execute(_TOP_RUNNABLE, (now,)).fetchone()
        if row is None:
            return None
        top = Candidate(*row)
        if resident is not None and top.model_key != resident:
            mine = self.conn.execute(_MODEL_RUNNABLE, (resident, top.priority, now)).fetchone()
            if mine is not None:
                return Candidate(*mine)
        # the oldest job decided the key; the key's first job in turn runs
        first = self.conn.execute(_MODEL_RUNNABLE, (top.model_key, top.priority, now)).fetchone()
        return Candidate(*first)

    def place(
        self, lane: Lane, others: Sequence[Lane], now: float, max_wait: float, costs: LoadCosts
    ) -> Candidate | None:
        """The placement rule of `foreman.policy.place`, as indexed lookups.

        Never scans the queue. The common case (the lane's own key has work at the top
        priority, nothing starved) is three seeks. Otherwise the queued keys are visited
        one seek each, and each key costs a seek for its best job, one per priority level
        when something starved, and a count capped at BACKLOG_CAP when a second copy is
        considered. The only rows a seek may pass over are jobs in retry backoff.
        """
        if not lane.free:
            return None
        return leaving_loads_to_empty(
            lane, others, lambda also: self._place(lane, others, now, max_wait, costs, also)
        )

    def _place(
        self,
        lane: Lane,
        others: Sequence[Lane],
        now: float,
        max_wait: float,
        costs: LoadCosts,
        also_covered: frozenset[str],
    ) -> Candidate | None:
        serves = lane.serves
        cutoff = now - max_wait
        resident = lane.resident
        drains = resident if resident is not None and serves(model_of(resident)) else None
        oldest_at, drained = self._drain_first(drains, cutoff, now)
        if drained is not None:
            return drained
        starving = oldest_at is not None and oldest_at < cutoff
        covered = covered_keys(lane, others) | also_covered
        keys = [k for k in self._queued_keys() if serves(model_of(k))]
        open_keys = [k for k in keys if k not in covered]
        busy = lane.running > 0
        if starving:
            found = self._starved_heads(open_keys, cutoff, now)
            if found:
                first = min(found, key=rank)
                return first if first.model_key == resident or not busy else None
        heads = dict(zip(open_keys, self._key_heads_of(open_keys, now), strict=True))
        runnable = [c for c in heads.values() if c is not None]
        if runnable:
            top = max(c.priority for c in runnable)
            mine = heads.get(resident) if resident is not None else None
            if mine is not None and mine.priority == top:
                return self._key_next(mine.model_key, now)
            if busy:
                return None
            oldest = min((c for c in runnable if c.priority == top), key=age_order)
            return self._key_next(oldest.model_key, now)
        if busy:
            return None
        # a key left to an empty upstream is not copied before that upstream has it
        held = [k for k in keys if k in covered and k not in also_covered]
        head = self._second_copy(held, others, now, costs)
        return None if head is None else self._key_next(head.model_key, now)

    def _drain_first(
        self, resident: str | None, cutoff: float, now: float
    ) -> tuple[float | None, Candidate | None]:
        """The oldest queued job's age, and the common case of a placement: when nothing
        waited past `cutoff`, the `resident` key's next job if it is of the top priority."""
        (oldest,) = self.conn.execute(_OLDEST_QUEUED).fetchone()
        if resident is None or (oldest is not None and oldest < cutoff):
            return oldest, None
        (top,) = self.conn.execute(_TOP_PRIORITY).fetchone()
        row = self.conn.execute(_KEY_NEXT, (resident, now)).fetchone()
        return oldest, Candidate(*row) if row is not None and row[2] == top else None

    def _fetch_each(self, sql: str, params: Sequence[Sequence[Any]]) -> list[Any]:
        """The first row (or None) of `sql` run with each of `params`: lookups that do not
        depend on each other (PostgreSQL's store sends them together)."""
        return [self.conn.execute(sql, p).fetchone() for p in params]

    def _queued_keys(self) -> list[str]:
        """Every residency key with a queued job, one seek each."""
        keys: list[str] = []
        row = self.conn.execute(_NEXT_KEY, ("",)).fetchone()
        while row is not None:
            keys.append(row[0])
            row = self.conn.execute(_NEXT_KEY, (row[0],)).fetchone()
        return keys

    def _key_heads_of(self, keys: Sequence[str], now: float) -> list[Candidate | None]:
        """`_key_head` of each of `keys`, in their order."""
        rows = self._fetch_each(_KEY_HEAD, [(k, now) for k in keys])
        return [Candidate(*row) if row is not None else None for row in rows]

    def _key_next(self, key: str, now: float) -> Candidate | None:
        """The key's first job in turn at its highest runnable priority."""
        row = self.conn.execute(_KEY_NEXT, (key, now)).fetchone()
        return Candidate(*row) if row is not None else None

    def _starved_heads(self, keys: Sequence[str], cutoff: float, now: float) -> list[Candidate]:
        """Of each of `keys` that has one, in their order: its highest-priority, then
        oldest, runnable job older than `cutoff`. Each key's priority levels are visited
        from the top, one seek each; the keys' lookups of one step do not depend on each
        other."""
        prios: dict[str, int | None] = {
            k: row[0]
            for k, row in zip(
                keys, self._fetch_each(_KEY_TOP_PRIORITY, [(k,) for k in keys]), strict=True
            )
        }
        found: dict[str, Candidate] = {}
        looking = [k for k in keys if prios[k] is not None]
        while looking:
            rows = self._fetch_each(
                _KEY_STARVED_AT_PRIORITY, [(k, prios[k], cutoff, now) for k in looking]
            )
            missed = []
            for key, row in zip(looking, rows, strict=True):
                if row is None:
                    missed.append(key)
                else:
                    found[key] = Candidate(*row)
            below = self._fetch_each(_KEY_NEXT_PRIORITY, [(k, prios[k]) for k in missed])
            for key, row in zip(missed, below, strict=True):
                prios[key] = row[0]
            looking = [k for k in missed if prios[k] is not None]
        return [found[k] for k in keys if k in found]

    def _second_copy(
        self, keys: list[str], others: Sequence[Lane], now: float, costs: LoadCosts
    ) -> Candidate | None:
        return best_copy(self._copy_options(keys, now), others, costs)

    def _copy_options(self, keys: list[str], now: float) -> Iterator[tuple[str, int, Candidate]]:
        """(key, backlog counted up to the cap, best job) of each key with runnable work."""
        heads = [
            (k, h)
            for k, h in zip(keys, self._key_heads_of(keys, now), strict=True)
            if h is not None
        ]
        backlogs = self._fetch_each(_KEY_BACKLOG, [(k, now, BACKLOG_CAP) for k, _ in heads])
        for (key, head), (backlog,) in zip(heads, backlogs, strict=True):
            yield key, int(backlog), head

    def ahead_in_key(self, job: Job) -> int:
        """How many queued jobs of `job`'s key come before it in the key's order: a higher
        priority, or its priority and an earlier turn (then older). Counted on the turn
        index alone, in time proportional to the count."""
        (ahead,) = self.conn.execute(
            _AHEAD_IN_KEY,
            {
                "key": job.model_key,
                "prio": job.priority,
                "turn": job.turn,
                "at": job.enqueued_at,
                "id": job.id,
            },
        ).fetchone()
        return int(ahead)

    def key_heads(self, now: float) -> list[Candidate]:
        """Each queued key's best runnable job by priority then age (what orders the keys
        no upstream holds), one seek per key."""
        return [h for h in self._key_heads_of(self._queued_keys(), now) if h is not None]

    def forecast_reads(self, now: float) -> tuple[list[Candidate], list[Job]]:
        """What a forecast of the queue reads, in one trip: each queued key's head
        (`key_heads`) and every running job."""
        return self.key_heads(now), self.running()

    def next_not_before(self) -> float | None:
        """When the earliest job in retry backoff becomes runnable, if any is waiting."""
        (value,) = self.conn.execute(
            "SELECT min(not_before) FROM jobs WHERE state = 'queued' AND not_before > ?",
            (self.clock(),),
        ).fetchone()
        return float(value) if value is not None else None

    def count_queued(self, model_key: str | None = None) -> int:
        if model_key is None:
            (n,) = self.conn.execute("SELECT count(*) FROM jobs WHERE state = 'queued'").fetchone()
        else:
            (n,) = self.conn.execute(
                "SELECT count(*) FROM jobs INDEXED BY jobs_queue_model"
                " WHERE state = 'queued' AND model_key = ?",
                (model_key,),
            ).fetchone()
        return int(n)

    def list_jobs(
        self,
        *,
        state: JobState | None = None,
        model_name: str | None = None,
        ref: str | None = None,
        before: str | None = None,
        limit: int = 50,
        key_name: str | None = None,
    ) -> list[Job]:
        """Newest first, filters combined; `before` is the keyset cursor (a job id)."""
        where: list[str] = []
        params: list[Any] = []
        filters = (
            ("state", state),
            ("model_name", model_name),
            ("ref", ref),
            ("key_name", key_name),
        )
        for column, value in filters:
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value.value if isinstance(value, JobState) else value)
        if before is not None:
            where.append("id < ?")
            params.append(before)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM jobs{clause} ORDER BY id DESC LIMIT ?", (*params, limit)
        ).fetchall()
        return [_row_to_job(r) for r in rows]

    def counts_by_state(self) -> dict[JobState, int]:
        rows = self.conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
        return {JobState(state): n for state, n in rows}

    def running(self, upstream: str | None = None) -> list[Job]:
        """Every job in a running state, or only those running on `upstream`."""
        if upstream is None:
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE state IN ('loading', 'working')"
            ).fetchall()
        else:
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM jobs INDEXED BY jobs_running_upstream"
                f" WHERE upstream = ? AND state IN ('loading', 'working')",
                (upstream,),
            ).fetchall()
        return [_row_to_job(r) for r in rows]

    def unfinished(self) -> list[tuple[str, JobState, str, str | None]]:
        """(id, state, residency key, key name) of every job not yet finished (for the
        live tally)."""
        rows = self.conn.execute(
            f"SELECT id, state, model_key, key_name FROM jobs WHERE state NOT IN {TERMINAL_SQL}"
        ).fetchall()
        return [(job_id, JobState(state), model, owner) for job_id, state, model, owner in rows]

    def overview(self, running_ids: Sequence[str] = (), swaps: int = 40) -> Overview:
        """The dashboard's reads after a change, in one trip to the store's thread: the
        queued jobs per model, the latest `swaps` loads (every upstream's), and the jobs
        `running_ids` names (what the workers hold, read by primary key).

        The per-model aggregate walks the queued rows of the partial queue index (about
        1 ms per 1,000 queued jobs); the dashboard spaces its reads by their cost.
        """
        waiting = [
            Waiting(key, n, float(oldest), top)
            for key, n, oldest, top in self.conn.execute(
                "SELECT model_key, count(*), min(enqueued_at), max(priority)"
                " FROM jobs INDEXED BY jobs_queue_model WHERE state = 'queued'"
                " GROUP BY model_key"
            )
        ]
        recent = [
            Swap(key, job_id, float(started), float(loaded), jobs, upstream)
            for key, job_id, started, loaded, jobs, upstream in self.conn.execute(
                "SELECT model_key, job_id, started_at, loaded_at, jobs, upstream FROM swaps"
                " ORDER BY id DESC LIMIT ?",
                (swaps,),
            )
        ]
        recent.reverse()
        return Overview(waiting, recent, self._jobs_by_id(running_ids))

    def _jobs_by_id(self, ids: Sequence[str]) -> list[Job]:
        """The jobs named, in the order named (one query; unknown ids are left out)."""
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id IN ({marks})", list(ids))
        found = {job.id: job for job in map(_row_to_job, rows)}
        return [found[i] for i in dict.fromkeys(ids) if i in found]

    def jobs_by_ids(self, ids: Sequence[str]) -> list[Job]:
        """The jobs named, each once, in the order first named; unknown ids are left out.
        Any number of ids: read by primary key, `JOBS_BY_IDS_CHUNK` to a query (one query
        for the usual few), within SQLite's bound on a statement's parameters. Each query
        names a power of two of ids (the last one repeated), so that a stream of batches
        of every size makes a few distinct statements, not one per size."""
        named = list(dict.fromkeys(ids))
        out: list[Job] = []
        for start in range(0, len(named), JOBS_BY_IDS_CHUNK):
            chunk = named[start : start + JOBS_BY_IDS_CHUNK]
            width = 1 << (len(chunk) - 1).bit_length()
            out += self._jobs_by_id(chunk + chunk[-1:] * (width - len(chunk)))
        return out

    def backend_pid(self) -> int | None:
        """The server process of this store's session (None: no server, as on SQLite)."""
        return None

    def activity(self, since: float) -> Activity:
        """The headline numbers over the jobs that ended since `since` (walks only those,
        on the index of finished jobs)."""
        finished = dict(
            self.conn.execute(
                f"SELECT state, count(*) FROM jobs INDEXED BY jobs_finished"
                f" WHERE state IN {TERMINAL_SQL} AND finished_at >= ? AND started_at IS NOT NULL"
                f" GROUP BY state",
                (since,),
            )
        )
        arrival_loads = self._model_changes(since, "created_at")
        loads = self._model_changes(since, "started_at")
        (done_last_hour,) = self.conn.execute(
            "SELECT count(*) FROM jobs INDEXED BY jobs_finished"
            f" WHERE state IN {TERMINAL_SQL} AND state = 'done' AND finished_at >= ?",
            (self.clock() - 3600,),
        ).fetchone()
        return Activity(since, finished, loads, arrival_loads, done_last_hour)

    def _model_changes(self, since: float, order: str) -> int:
        """How many loads the jobs that ran and ended since `since` cost in `order`
        (arrival: created_at; as run: started_at), counting one per change of model."""
        (count,) = self.conn.execute(
            f"SELECT count(*) FROM (SELECT model_key,"
            f" lag(model_key) OVER (ORDER BY {order}, id) AS previous"
            f" FROM jobs INDEXED BY jobs_finished WHERE state IN {TERMINAL_SQL}"
            f" AND finished_at >= ? AND started_at IS NOT NULL)"
            f" WHERE previous IS NULL OR previous != model_key",
            (since,),
        ).fetchone()
        return int(count)

    def measured_costs(self, since: float, limit: int = 5000) -> LoadCosts:
        """Each residency key's median load time (from the swap history) and median job
        time (jobs done without a load of their own), over what ended since `since`:
        the placement rule's evidence for loading a second copy. Reads at most `limit`
        recent rows of each kind, on the indexes of loads and of finished jobs."""
        loads: dict[str, list[float]] = {}
        for key, seconds in self.conn.execute(
            "SELECT model_key, loaded_at - started_at FROM swaps INDEXED BY swaps_started"
            " WHERE started_at >= ? ORDER BY started_at DESC LIMIT ?",
            (since, limit),
        ):
            loads.setdefault(key, []).append(float(seconds))
        jobs: dict[str, list[float]] = {}
        for key, seconds in self.conn.execute(
            "SELECT model_key, finished_at - started_at FROM jobs INDEXED BY jobs_finished"
            f" WHERE state IN {TERMINAL_SQL} AND state = 'done' AND finished_at >= ?"
            " AND started_at IS NOT NULL"
            " AND id NOT IN (SELECT job_id FROM swaps WHERE started_at >= ?)"
            " ORDER BY finished_at DESC LIMIT ?",
            (since, since, limit),
        ):
            jobs.setdefault(key, []).append(max(0.0, float(seconds)))
        return LoadCosts(
            {k: statistics.median(v) for k, v in loads.items()},
            {k: statistics.median(v) for k, v in jobs.items()},
        )

    def prune_swaps(self, started_before: float) -> int:
        """Forget loads older than the retention (the janitor's job)."""
        with self.conn:
            cur = self.conn.execute("DELETE FROM swaps WHERE started_at < ?", (started_before,))
        return cur.rowcount

    def probe_write(self) -> None:
        """Commit a write that changes nothing, so a full disk shows before a job meets it.

        Taking the write lock alone succeeds on a full disk; this rewrites the schema
        version as it is, which puts a page in the write-ahead log like any real write
        (unsynced: a probe needs no fsync). Raises sqlite3.Error if it cannot be written.
        """
        (version,) = self.conn.execute("PRAGMA user_version").fetchone()
        with self._unsynced(), self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(f"PRAGMA user_version = {int(version)}")

    def file_problem(self) -> str | None:
        """Why the database's path no longer leads to the file this connection writes
        (deleted, replaced), or None. One stat: cheap enough for every submission."""
        if self.path is None or self._identity is None:
            return None
        try:
            now = _identity(self.path)
        except FileNotFoundError:
            return "the database file was deleted while foreman runs; restart foreman"
        except OSError as exc:
            return f"the database file cannot be reached: {exc.strerror or exc}"
        if now != self._identity:
            return "the database file was replaced while foreman runs; restart foreman"
        return None

    def explain_pick(self) -> list[str]:
        """The query plans of `pick`'s and `place`'s statements (a test proves none scans
        the table)."""
        plans = []
        for sql, params in dict.fromkeys(PICK_STATEMENTS + PLACE_STATEMENTS):
            rows = self.conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
            plans.append(" | ".join(str(r[-1]) for r in rows))
        return plans


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino
