"""The store driven like the worker drives it, checked against the rule and the table.

A synchronous state machine: enqueue (some jobs with deadlines), claim, finish, requeue
with backoff, fail, cancel, retry, stale and illegal writes, and restarts (reopening the
file and recovering). Every single state change must be a legal transition, and every
claim must fail exactly the overdue jobs and take the job the pure rule picks.

It runs on SQLite (`TestStoreMachine`) and on PostgreSQL (`PgStoreMachine`, one database
for all the examples, emptied before each; a restart closes the connection and opens a
new one).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from foreman.jobs import (
    RUNNING_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    Endpoint,
    IllegalTransition,
    JobState,
    NewJob,
)
from foreman.policy import Candidate, pick_next
from foreman.residency import split_key
from foreman.retry import backoff_delay
from foreman.store import SyncStore, connect
from foreman.store.pg import PgSyncStore, pg_connect
from tests.pg.backends import clear

from ._strategies import MODEL_KEYS

MAX_ATTEMPTS = 3
STATE_LOG = """
CREATE TEMP TABLE state_log (seq INTEGER PRIMARY KEY, id TEXT, old TEXT, new TEXT);
CREATE TEMP TRIGGER log_insert AFTER INSERT ON main.jobs
    BEGIN INSERT INTO state_log (id, old, new) VALUES (new.id, NULL, new.state); END;
CREATE TEMP TRIGGER log_update AFTER UPDATE OF state ON main.jobs
    BEGIN INSERT INTO state_log (id, old, new) VALUES (new.id, old.state, new.state); END;
"""
# the same log on PostgreSQL: a table and a trigger function in the test's own database
PG_STATE_LOG = """
CREATE TABLE state_log (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id TEXT, old TEXT, new TEXT
);
CREATE FUNCTION log_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO state_log (id, old, new) VALUES (NEW.id, NULL, NEW.state);
    ELSE
        INSERT INTO state_log (id, old, new) VALUES (NEW.id, OLD.state, NEW.state);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER log_insert AFTER INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION log_state();
CREATE TRIGGER log_update AFTER UPDATE OF state ON jobs
    FOR EACH ROW EXECUTE FUNCTION log_state();
"""
# three models, two of them one name with different runner options
KEYS = (MODEL_KEYS[0], MODEL_KEYS[2], MODEL_KEYS[3])
# (model key, priority, seconds since the previous arrival, deadline from now or None)
BATCHES = st.lists(
    st.tuples(
        st.sampled_from(KEYS),
        st.integers(-1, 1),
        st.sampled_from([0.0, 0.5, 2.0]),
        st.one_of(st.none(), st.none(), st.sampled_from([5.0, 60.0])),
    ),
    min_size=1,
    max_size=4,
)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.store = self.first_open()
        self.resident: str | None = None
        self.running: str | None = None

    def teardown(self) -> None:
        self.store.conn.close()
        self.tmp.cleanup()

    # -- helpers --------------------------------------------------------------------------

    def first_open(self) -> SyncStore:
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / "foreman.db"
        return self.open()

    def open(self) -> SyncStore:
        """The store, with every insert and state write logged by temporary triggers, so
        each single change is checked however many a step makes."""
        conn = connect(self.path)
        conn.execute("PRAGMA synchronous = OFF")  # restarts here are clean; no fsync needed
        conn.executescript(STATE_LOG)
        return SyncStore(conn, clock=lambda: self.now)

    def check_state_log(self) -> None:
        with self.store.conn:
            log = self.store.conn.execute("SELECT id, old, new FROM state_log").fetchall()
            self.store.conn.execute("DELETE FROM state_log")
        for job_id, old, new in log:
            if old is None:
                assert new == JobState.QUEUED, f"job {job_id} created as {new}"
            else:
                assert (JobState(old), JobState(new)) in TRANSITIONS, f"job {job_id}"

    def states(self) -> dict[str, JobState]:
        rows = self.store.conn.execute("SELECT id, state FROM jobs").fetchall()
        return {job_id: JobState(state) for job_id, state in rows}

    def queued(self) -> list[Candidate]:
        rows = self.store.conn.execute(
            "SELECT id, model_key, priority, enqueued_at, not_before, turn FROM jobs"
            " WHERE state = 'queued'"
        ).fetchall()
        return [Candidate(*row) for row in rows]

    def ids_in(self, states: frozenset[JobState] | set[JobState]) -> list[str]:
        return sorted(i for i, s in self.states().items() if s in states)

    # -- rules ----------------------------------------------------------------------------

    @initialize(batch=BATCHES)
    def start_with_a_batch(self, batch: list[tuple[str, int, float, float | None]]) -> None:
        self.enqueue(batch)

    @rule(batch=BATCHES)
    def enqueue(self, batch: list[tuple[str, int, float, float | None]]) -> None:
        for key, priority, dt, deadline in batch:
            self.now += dt
            model = split_key(key)[0]
            job = self.store.enqueue(
                NewJob(
                    Endpoint.CHAT,
                    model,
                    key,
                    b'{"model":"%s"}' % model.encode(),
                    True,
                    priority,
                    MAX_ATTEMPTS,
                    deadline=None if deadline is None else self.now + deadline,
                )
            )
            assert job.state is JobState.QUEUED
            assert job.enqueued_at == self.now
            assert job.attempts == 0

    @rule(dt=st.sampled_from([0.0, 1.0, 30.0, 120.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(
        max_wait=st.sampled_from([10.0, 60.0, 1e9]),
        outcome=st.sampled_from(["finish", "finish", "hold", "transient"]),
        seed=st.integers(0, 2**32),
    )
    def work(self, max_wait: float, outcome: str, seed: int) -> None:
        """One step of the single worker: claim when idle, then load, and finish the job,
        keep it running, or put it back after a transient failure."""
        if self.running is None:
            self.claim(max_wait)
        job = self.store.get(self.running) if self.running is not None else None
        if job is None:
            return
        if outcome == "transient":
            self.transient_failure(seed)
            return
        if job.state is JobState.LOADING:
            job = self.store.transition(job.id, JobState.LOADING, JobState.WORKING)
            assert job is not None
            assert job.state is JobState.WORKING
            self.resident = job.model_key
        if outcome == "finish":
            moved = self.store.transition(job.id, JobState.WORKING, JobState.DONE, result={"ok": 1})
            assert moved is not None
            assert moved.state is JobState.DONE
            assert moved.finished_at == self.now
            assert moved.result == {"ok": 1}
            self.running = None

    def claim(self, max_wait: float) -> None:
        """Overdue jobs fail; of the rest, the claim takes what the pure rule picks."""
        overdue = {
            job_id
            for job_id, deadline in self.store.conn.execute(
                "SELECT id, deadline FROM jobs WHERE state = 'queued'"
            )
            if deadline is not None and deadline < self.now
        }
        live = [c for c in self.queued() if c.id not in overdue]
        expected = pick_next(live, self.resident, self.now, max_wait)
        before = self.store.get(expected.id) if expected is not None else None

        job, expired = self.store.claim_next(self.resident, max_wait)

        assert {j.id for j in expired} == overdue
        if overdue:
            event("claim: expired overdue jobs")
        assert all(j.state is JobState.FAILED and j.error for j in expired)
        if expected is None:
            assert job is None
            event("claim: nothing runnable")
            return
        event("claim: " + ("resident model" if expected.model_key == self.resident else "swap"))
        assert job is not None
        assert before is not None
        assert job.id == expected.id
        want = JobState.WORKING if job.model_key == self.resident else JobState.LOADING
        assert job.state is want
        assert job.attempts == before.attempts + 1
        assert job.started_at == self.now
        assert job.queue_ms == int(max(0.0, self.now - job.enqueued_at) * 1000)
        self.running = job.id

    def transient_failure(self, seed: int) -> None:
        """What the worker does with a retryable error: back off, or fail when out of tries."""
        job = self.store.get(self.running) if self.running is not None else None
        assert job is not None
        assert job.state in RUNNING_STATES
        if job.state is JobState.LOADING:
            self.resident = None
        if job.attempts < job.max_attempts:
            delay = backoff_delay(job.attempts, 2.0, 60.0, random.Random(seed))
            moved = self.store.transition(
                job.id, job.state, JobState.QUEUED, not_before=self.now + delay, error="boom"
            )
            assert moved is not None
            assert moved.not_before == self.now + delay
            assert moved.finished_at is None
        else:
            moved = self.store.transition(job.id, job.state, JobState.FAILED, error="boom")
            assert moved is not None
            assert moved.finished_at == self.now
        self.running = None

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        ids = self.ids_in({JobState.QUEUED, *RUNNING_STATES})
        if not ids:
            return
        job_id = data.draw(st.sampled_from(ids))
        old = self.states()[job_id]
        moved = self.store.transition(job_id, old, JobState.CANCELLED)
        assert moved is not None
        assert moved.state is JobState.CANCELLED
        if job_id == self.running:
            self.running = None

    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        ids = self.ids_in({JobState.FAILED, JobState.CANCELLED})
        if not ids:
            return
        job_id = data.draw(st.sampled_from(ids))
        old = self.states()[job_id]
        assert old in (JobState.FAILED, JobState.CANCELLED)
        moved = self.store.retry(job_id)
        assert moved is not None
        assert moved.state is JobState.QUEUED
        assert moved.attempts == 0
        assert moved.enqueued_at == self.now
        assert moved.finished_at is None
        assert moved.deadline is None

    @rule(data=st.data(), stale=st.booleans())
    def bad_write_changes_nothing(self, data: st.DataObject, stale: bool) -> None:
        """A write naming a state the job is no longer in returns None; a move the table
        forbids raises. Neither touches the row."""
        states = self.states()
        if not states:
            return
        job_id = data.draw(st.sampled_from(sorted(states)))
        actual = states[job_id]
        before = self.store.get(job_id)
        if stale:
            old, new = data.draw(
                st.sampled_from([t for t in sorted(TRANSITIONS) if t[0] != actual])
            )
            assert self.store.transition(job_id, old, new) is None
        else:
            new = data.draw(
                st.sampled_from([n for n in JobState if (actual, n) not in TRANSITIONS])
            )
            with pytest.raises(IllegalTransition):
                self.store.transition(job_id, actual, new)
        assert self.store.get(job_id) == before

    @rule()
    def restart(self) -> None:
        """A crash and restart: reopen the file, put interrupted jobs back or fail them."""
        running = {i: self.store.get(i) for i in self.ids_in(RUNNING_STATES)}
        self.check_state_log()
        self.store.conn.close()
        self.store = self.open()
        moved = {job.id: job for job in self.store.recover_interrupted()}
        assert set(moved) == set(running)
        for job_id, job in moved.items():
            was = running[job_id]
            assert was is not None
            if was.attempts >= was.max_attempts:
                assert job.state is JobState.FAILED
                assert job.error
            else:
                assert job.state is JobState.QUEUED
        self.running = None
        self.resident = None

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def every_state_change_is_in_the_table(self) -> None:
        self.check_state_log()

    @invariant()
    def one_job_runs_at_a_time(self) -> None:
        assert len(self.ids_in(RUNNING_STATES)) == (0 if self.running is None else 1)

    @invariant()
    def terminal_jobs_have_finished_at(self) -> None:
        for job_id in self.ids_in(TERMINAL_STATES):
            job = self.store.get(job_id)
            assert job is not None
            assert job.finished_at is not None

    @invariant()
    def store_pick_agrees_with_rule(self) -> None:
        for max_wait in (10.0, 1e9):
            expected = pick_next(self.queued(), self.resident, self.now, max_wait)
            assert self.store.pick(self.resident, self.now, max_wait) == expected


TestStoreMachine = StoreMachine.TestCase


class PgStoreMachine(StoreMachine):
    """The same machine on PostgreSQL: `url` names a database whose state log is set up
    (`PG_STATE_LOG`); each example starts by emptying it."""

    url = ""

    def teardown(self) -> None:
        self.store.conn.close()

    def first_open(self) -> SyncStore:
        store = self.open()
        clear(store)
        store.conn.execute("DELETE FROM state_log")
        return store

    def open(self) -> SyncStore:
        return PgSyncStore(pg_connect(self.url), clock=lambda: self.now)


@pytest.mark.postgres
def test_store_machine_on_postgresql(postgres_url: str) -> None:
    setup = pg_connect(postgres_url)
    setup.raw.execute(PG_STATE_LOG.encode())
    setup.close()

    class OnThisDatabase(PgStoreMachine):
        url = postgres_url

    run_state_machine_as_test(OnThisDatabase)
