"""The job store on a real SQLite file and on PostgreSQL: writes, the claim, recovery;
on SQLite also its schema, file and plans."""

from __future__ import annotations

import random
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from foreman.jobs import Endpoint, IllegalTransition, Job, JobState
from foreman.policy import BACKLOG_CAP, TURN, Candidate, Lane, LoadCosts
from foreman.store import (
    MIGRATIONS,
    PICK_STATEMENTS,
    PLACE_STATEMENTS,
    SCHEMA_VERSION,
    Store,
    StoreError,
    SyncStore,
    connect,
    migrate,
)
from foreman.store.pg import PgSyncStore
from foreman.store.sql import JOBS_BY_IDS_CHUNK
from tests.pg.backends import BACKENDS, database, open_face, open_store, sqlite_only

from ._helpers import FakeClock, new_job


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> SyncStore:
    """The store on each backend; a SQLite-only test says `@sqlite_only`."""
    return open_store(request, request.param, tmp_path / "state", clock)


def _duplicate_key_error(store: SyncStore) -> type[Exception]:
    """What the backend's driver raises for a row whose primary key is taken."""
    if store.driver_errors == (sqlite3.Error,):
        return sqlite3.IntegrityError
    import psycopg

    return psycopg.errors.UniqueViolation


# -- enqueue and get --------------------------------------------------------------------------


def test_enqueue_then_get_round_trips_every_field_and_the_exact_body_bytes(store, clock):
    body = b'{"model":"m","prompt":"caf\xc3\xa9"}\x00\xff\r\n  '
    new = new_job(
        "m:latest",
        priority=-3,
        endpoint=Endpoint.GENERATE,
        model="M",
        body=body,
        stream=False,
        max_attempts=7,
        ref="client-1",
    )

    job = store.enqueue(new)
    again = store.get(job.id)

    assert again == job
    assert type(again.body) is bytes
    assert again.body == body
    assert (again.endpoint, again.model, again.model_key) == (
        Endpoint.GENERATE,
        "M",
        "m:latest",
    )
    assert (again.stream, again.priority, again.max_attempts, again.ref) == (
        False,
        -3,
        7,
        "client-1",
    )
    assert again.state is JobState.QUEUED
    assert again.attempts == 0
    assert again.not_before == 0
    assert again.enqueued_at == again.created_at == clock.now
    assert again.started_at is None
    assert again.finished_at is None
    assert again.result is None
    assert again.error is None
    assert again.queue_ms is None


def test_enqueue_gives_each_job_its_own_id(store):
    ids = {store.enqueue(new_job()).id for _ in range(50)}
    assert len(ids) == 50


def test_enqueue_keeps_a_given_id(store):
    assert store.enqueue(new_job(), job_id="mine").id == "mine"
    assert store.get("mine") is not None


def test_enqueue_with_a_taken_id_fails_and_keeps_the_first_job(store):
    first = store.enqueue(new_job("a:latest"), job_id="dup")
    with pytest.raises(_duplicate_key_error(store)):
        store.enqueue(new_job("b:latest"), job_id="dup")
    assert store.get("dup") == first
    assert not store.conn.in_transaction


def test_get_of_an_unknown_job_is_none(store):
    assert store.get("nope") is None


def test_jobs_survive_closing_and_reopening_the_file(db_path, clock):
    conn = connect(db_path)
    job = SyncStore(conn, clock).enqueue(new_job())
    conn.close()

    conn = connect(db_path)
    try:
        assert SyncStore(conn, clock).get(job.id) == job
    finally:
        conn.close()


# -- transitions ------------------------------------------------------------------------------


def test_transition_writes_fields_and_stamps_finished_at_on_a_terminal_state(store, clock):
    job = store.enqueue(new_job("m:latest"))
    store.claim("m:latest", 600)
    clock.advance(5)

    done = store.transition(
        job.id, JobState.WORKING, JobState.DONE, result={"message": {"content": "hi"}}
    )

    assert done is not None
    assert done.state is JobState.DONE
    assert done.finished_at == clock.now
    assert done.result == {"message": {"content": "hi"}}
    assert store.get(job.id) == done


def test_transition_to_a_live_state_does_not_stamp_finished_at(store):
    job = store.enqueue(new_job())
    moved = store.transition(job.id, JobState.QUEUED, JobState.LOADING)
    assert moved is not None
    assert moved.finished_at is None


def test_guarded_transition_returns_none_and_changes_nothing_when_the_state_moved(store):
    job = store.enqueue(new_job("m:latest"))
    claimed = store.claim("other:latest", 600)  # now loading
    assert claimed is not None
    assert claimed.state is JobState.LOADING

    # a cancel that still believes the job is queued loses the race
    assert store.transition(job.id, JobState.QUEUED, JobState.CANCELLED) is None

    assert store.get(job.id) == claimed


def test_transition_of_an_unknown_job_returns_none(store):
    assert store.transition("nope", JobState.QUEUED, JobState.CANCELLED) is None


def test_illegal_transition_raises_and_writes_nothing(store):
    job = store.enqueue(new_job())

    with pytest.raises(IllegalTransition):
        store.transition(job.id, JobState.QUEUED, JobState.DONE, result={"x": 1})

    assert store.get(job.id) == job
    assert not store.conn.in_transaction


def test_retry_of_a_failed_job_puts_it_back_in_the_queue(store):
    job = store.enqueue(new_job())
    store.transition(job.id, JobState.QUEUED, JobState.FAILED, error="bad")

    again = store.transition(job.id, JobState.FAILED, JobState.QUEUED)

    assert again is not None
    assert again.state is JobState.QUEUED
    assert store.claim(None, 600) is not None


def test_attempts_delta_gives_an_attempt_back(store):
    job = store.enqueue(new_job())
    claimed = store.claim(None, 600)
    assert claimed is not None
    assert claimed.attempts == 1

    back = store.transition(job.id, JobState.LOADING, JobState.QUEUED, attempts_delta=-1)

    assert back is not None
    assert back.attempts == 0


# -- claim ------------------------------------------------------------------------------------


def test_claim_on_an_empty_queue_returns_none(store):
    assert store.claim("m:latest", 600) is None


def test_claim_counts_the_attempt_and_records_start_and_queue_time(store, clock):
    job = store.enqueue(new_job())
    clock.advance(2.5)

    claimed = store.claim(None, 600)

    assert claimed is not None
    assert claimed.id == job.id
    assert claimed.attempts == 1
    assert claimed.started_at == clock.now
    assert claimed.queue_ms == 2500
    assert store.get(job.id) == claimed


def test_claim_of_the_resident_model_goes_straight_to_working(store):
    store.enqueue(new_job("m:latest"))
    claimed = store.claim("m:latest", 600)
    assert claimed is not None
    assert claimed.state is JobState.WORKING


@pytest.mark.parametrize("resident", [None, "other:latest", 'm:latest {"num_ctx":8192}'])
def test_claim_of_a_model_that_is_not_resident_goes_to_loading(store, resident):
    store.enqueue(new_job("m:latest"))
    claimed = store.claim(resident, 600)
    assert claimed is not None
    assert claimed.state is JobState.LOADING


def test_claim_drains_the_resident_model_before_older_jobs(store, clock):
    ids: dict[str, list[str]] = {}
    for name in ["B", "A", "B", "A", "C", "B", "A"]:
        clock.advance(1)
        ids.setdefault(name, []).append(store.enqueue(new_job(f"{name}:latest")).id)

    order = []
    resident = "A:latest"
    while (job := store.claim(resident, 600)) is not None:
        order.append(job.id)
        resident = job.model_key
        store.transition(job.id, job.state, JobState.CANCELLED)

    assert order == ids["A"] + ids["B"] + ids["C"]


def test_claim_never_hands_out_the_same_job_twice(store):
    for _ in range(3):
        store.enqueue(new_job())
    seen = [store.claim(None, 600) for _ in range(4)]
    assert seen[3] is None
    assert len({j.id for j in seen[:3] if j is not None}) == 3


def test_claim_skips_a_job_waiting_out_its_backoff_until_it_is_due(store, clock):
    job = store.enqueue(new_job())
    store.claim(None, 600)
    store.transition(job.id, JobState.LOADING, JobState.QUEUED, not_before=clock.now + 10)

    assert store.claim(None, 600) is None
    clock.advance(9.9)
    assert store.claim(None, 600) is None
    clock.advance(0.1)
    again = store.claim(None, 600)
    assert again is not None
    assert again.id == job.id
    assert again.attempts == 2


def test_claim_lets_a_starved_job_overtake_the_resident_model(store, clock):
    old = store.enqueue(new_job("B:latest"))
    clock.advance(700)
    store.enqueue(new_job("A:latest"))

    claimed = store.claim("A:latest", max_wait=600)

    assert claimed is not None
    assert claimed.id == old.id


def test_claim_takes_the_highest_priority_first(store):
    store.enqueue(new_job("A:latest", priority=0))
    urgent = store.enqueue(new_job("B:latest", priority=5))
    claimed = store.claim("A:latest", 600)
    assert claimed is not None
    assert claimed.id == urgent.id


# -- recovery after a crash -------------------------------------------------------------------


def test_recover_interrupted_requeues_running_jobs_and_fails_exhausted_ones(store, clock):
    loading = store.enqueue(new_job("a:latest", max_attempts=3))
    working = store.enqueue(new_job("b:latest", max_attempts=3))
    last_try = store.enqueue(new_job("c:latest", max_attempts=1))
    waiting = store.enqueue(new_job("d:latest"))
    done = store.enqueue(new_job("e:latest"))
    store.transition(loading.id, JobState.QUEUED, JobState.LOADING, attempts_delta=1)
    store.transition(working.id, JobState.QUEUED, JobState.WORKING, attempts_delta=1)
    store.transition(last_try.id, JobState.QUEUED, JobState.WORKING, attempts_delta=1)
    store.transition(done.id, JobState.QUEUED, JobState.WORKING)
    store.transition(done.id, JobState.WORKING, JobState.DONE)
    clock.advance(30)

    moved = {job.id: job for job in store.recover_interrupted()}

    assert set(moved) == {loading.id, working.id, last_try.id}
    for job_id in (loading.id, working.id):
        assert moved[job_id].state is JobState.QUEUED
        assert moved[job_id].attempts == 1
        assert store.get(job_id) == moved[job_id]
    failed = moved[last_try.id]
    assert failed.state is JobState.FAILED
    assert failed.error
    assert "restart" in failed.error
    assert failed.finished_at == clock.now
    assert store.get(waiting.id) == waiting
    got_done = store.get(done.id)
    assert got_done is not None
    assert got_done.state is JobState.DONE
    assert store.running() == []
    assert store.recover_interrupted() == []


# -- reads ------------------------------------------------------------------------------------


def test_next_not_before_is_the_earliest_pending_backoff(store, clock):
    assert store.next_not_before() is None
    a, b, c = (store.enqueue(new_job()) for _ in range(3))
    for job, delay in ((a, 30), (b, 10), (c, 20)):
        store.transition(job.id, JobState.QUEUED, JobState.LOADING)
        store.transition(job.id, JobState.LOADING, JobState.QUEUED, not_before=clock.now + delay)

    assert store.next_not_before() == clock.now + 10
    store.transition(b.id, JobState.QUEUED, JobState.CANCELLED)
    assert store.next_not_before() == clock.now + 20
    clock.advance(25)
    assert store.next_not_before() == clock.now + 5
    clock.advance(5)
    assert store.next_not_before() is None


def test_count_queued_counts_all_or_one_model(store):
    for key in ("a:latest", "a:latest", 'a:latest {"num_ctx":8192}', "b:latest"):
        store.enqueue(new_job(key))
    store.claim("b:latest", 600)

    assert store.count_queued() == 3
    assert store.count_queued("a:latest") == 2
    assert store.count_queued('a:latest {"num_ctx":8192}') == 1
    assert store.count_queued("b:latest") == 0


def test_running_lists_loading_and_working_jobs(store):
    a = store.enqueue(new_job("a:latest"))
    b = store.enqueue(new_job("b:latest"))
    store.enqueue(new_job("c:latest"))
    store.claim("a:latest", 600)
    store.claim(None, 600)
    assert sorted((j.id, j.state) for j in store.running()) == sorted(
        [(a.id, JobState.WORKING), (b.id, JobState.LOADING)]
    )


# -- schema and file --------------------------------------------------------------------------


@sqlite_only
def test_database_is_in_wal_mode(store):
    (mode,) = store.conn.execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"


@sqlite_only
def test_schema_version_counts_the_migrations(store):
    (version,) = store.conn.execute("PRAGMA user_version").fetchone()
    assert version == SCHEMA_VERSION == len(MIGRATIONS)


def test_connect_creates_missing_folders(tmp_path):
    conn = connect(tmp_path / "a" / "b" / "foreman.db")
    conn.close()
    assert (tmp_path / "a" / "b" / "foreman.db").is_file()


def _schema(path: Path) -> list[tuple[str, str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(
            conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        )
    finally:
        conn.close()


@pytest.mark.parametrize("start", range(SCHEMA_VERSION + 1))
def test_a_database_migrated_step_by_step_has_the_schema_of_a_fresh_one(tmp_path, start):
    fresh = tmp_path / "fresh.db"
    connect(fresh).close()

    # a database left by an older foreman: the first `start` migrations, one at a time
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old, isolation_level=None)
    for number in range(start):
        conn.executescript(MIGRATIONS[number])
        conn.execute(f"PRAGMA user_version = {number + 1}")
    assert migrate(conn) == start
    conn.close()

    assert _schema(old) == _schema(fresh)
    conn = sqlite3.connect(old)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()


def test_a_database_from_a_newer_foreman_is_refused_and_left_alone(db_path):
    connect(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()

    with pytest.raises(StoreError, match="newer"):
        connect(db_path)

    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
    conn.close()


async def test_store_open_refuses_a_newer_database_with_store_error(db_path):
    connect(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError):
        await Store.open(db_path)


async def test_store_open_turns_a_file_that_is_not_a_database_into_store_error(db_path):
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open database"):
        await Store.open(db_path)


# -- query plans ------------------------------------------------------------------------------


def _uses_indexes(plan: str) -> bool:
    """Every step touching a table (`jobs`, or it under an alias) goes through an index,
    and nothing is sorted."""
    steps = plan.split(" | ")
    for step in steps:
        if re.search(r"\b(SCAN|SEARCH) (?!CONSTANT\b)\w+", step) and " USING " not in step:
            return False
    return not any("TEMP B-TREE" in step for step in steps)


@sqlite_only
def test_plan_checker_rejects_a_full_scan(store):
    rows = store.conn.execute("EXPLAIN QUERY PLAN SELECT * FROM jobs WHERE error = 'x'").fetchall()
    plan = " | ".join(str(r[-1]) for r in rows)
    assert not _uses_indexes(plan)


def _queue_store(path: Path, jobs: int) -> SyncStore:
    """`jobs` jobs over eight models and five priorities, half of them queued (some in
    backoff) over a history of finished ones, with statistics gathered; the clock at
    40,000, the newest job's time."""
    conn = connect(path)
    rng = random.Random(7)
    rows = []
    for i in range(jobs):
        state = "queued" if i % 2 == 0 else rng.choice(["done", "failed", "cancelled"])
        rows.append(
            (
                f"{i:08d}",
                f"m{rng.randrange(8)}:latest",
                state,
                rng.randrange(-2, 3),
                rng.choice([0.0, 0.0, 0.0, 50_000.0]),
                float(i),
                rng.choice([None, "alice", "bob"]),
                rng.randrange(0, 4 * TURN, TURN // 4),
            )
        )
    with conn:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO jobs (id, endpoint, model, model_key, body, stream, state, priority,"
            " attempts, max_attempts, not_before, enqueued_at, created_at, key_name, turn)"
            " VALUES (?1, '/api/chat', 'm', ?2, x'7b7d', 1, ?3, ?4, 0, 5, ?5, ?6, ?6, ?7, ?8)",
            rows,
        )
    conn.execute("ANALYZE")
    return SyncStore(conn, clock=FakeClock(40_000.0))


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncStore]:
    """20k queued jobs over a history of 20k finished ones."""
    store = _queue_store(tmp_path_factory.mktemp("big") / "foreman.db", 40_000)
    yield store
    store.conn.close()


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncStore]:
    """The big store's first 400 jobs: a hundred times fewer queued."""
    store = _queue_store(tmp_path_factory.mktemp("small") / "foreman.db", 400)
    yield store
    store.conn.close()


def test_every_pick_statement_plan_uses_an_index(big_store):
    plans = big_store.explain_pick()
    assert plans
    for plan in plans:
        assert _uses_indexes(plan), plan


class _RecordingConnection:
    """A connection that notes the text of every statement it is asked to run."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.statements: list[str] = []

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        self.statements.append(sql)
        return self.conn.execute(sql, params)


def test_the_plan_test_reads_exactly_the_statements_pick_runs(big_store, monkeypatch):
    recording = _RecordingConnection(big_store.conn)
    monkeypatch.setattr(big_store, "conn", recording)
    # the four paths through the rule: no swap, a swap, the starvation bound at the top
    # priority, and the bound reached only at lower priorities
    for resident, max_wait in (
        ("m3:latest", 1e9),
        ("zz:latest", 1e9),
        ("m3:latest", 100.0),
        (None, 39_999.5),
    ):
        big_store.pick(resident, 40_000.0, max_wait)
    assert set(recording.statements) == {sql for sql, _ in PICK_STATEMENTS}


def _traced_plans(store: SyncStore, action) -> list[str]:
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    try:
        action()
    finally:
        store.conn.set_trace_callback(None)
    plans = []
    for sql in statements:
        if sql.split()[0].upper() in ("SELECT", "UPDATE", "INSERT"):
            rows = store.conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
            plans.append(sql + " => " + " | ".join(str(r[-1]) for r in rows))
    return plans


@pytest.mark.parametrize(
    ("resident", "max_wait"),
    [
        ("m3:latest", 1e9),  # nothing starved, resident has work
        ("zz:latest", 1e9),  # nothing starved, a swap
        ("m3:latest", 100.0),  # the starvation bound applies
        (None, 39_999.5),  # starved jobs only at some priorities
    ],
)
def test_pick_and_claim_run_only_indexed_statements_on_a_large_queue(big_store, resident, max_wait):
    plans = _traced_plans(big_store, lambda: big_store.pick(resident, 40_000.0, max_wait))
    assert plans
    for plan in plans:
        assert _uses_indexes(plan.split(" => ")[1]), plan

    # claims for real: each case takes one of the 20k queued jobs
    plans = _traced_plans(big_store, lambda: big_store.claim(resident, max_wait))
    assert any(p.startswith("UPDATE") for p in plans)
    for plan in plans:
        assert _uses_indexes(plan.split(" => ")[1]), plan


def _vm_steps(store: SyncStore, action, per: int = 100) -> int:
    """Roughly how many SQLite VM instructions `action` ran, in `per`s.

    Counted in steps (a progress handler called every `per` of them), not in time: a
    statement that walks the queued rows takes steps in proportion to them, one that
    seeks an index takes a handful, whatever the machine's speed."""
    ticks = 0

    def tick() -> int:
        nonlocal ticks
        ticks += 1
        return 0

    store.conn.set_progress_handler(tick, per)
    try:
        action()
    finally:
        store.conn.set_progress_handler(None, 0)
    return ticks


@pytest.mark.parametrize(
    ("resident", "max_wait"),
    [("m3:latest", 1e9), ("zz:latest", 1e9), ("m3:latest", 100.0), (None, 39_999.5)],
)
def test_pick_and_claim_cost_does_not_grow_with_the_queue(
    big_store, small_store, resident, max_wait
):
    """Plan text cannot tell a seek from a walk over a whole partial index; the number
    of VM instructions can. Counting the 20k queued jobs costs hundreds of steps."""
    # regression: min(enqueued_at) and max(priority) were answered from jobs_by_state,
    # walking every queued row on each claim (about 50 ms per claim at 100k queued)
    assert _vm_steps(big_store, big_store.count_queued) > 100
    few = _vm_steps(small_store, lambda: small_store.pick(resident, 40_000.0, max_wait), 1)
    many = _vm_steps(big_store, lambda: big_store.pick(resident, 40_000.0, max_wait), 1)
    assert big_store.pick(resident, 40_000.0, max_wait) is not None
    assert many <= 2 * few + 50, (few, many)
    assert _vm_steps(big_store, lambda: big_store.pick(resident, 40_000.0, max_wait)) <= 5
    assert _vm_steps(big_store, lambda: big_store.claim(resident, max_wait)) <= 10


# -- the fleet's placement on a large queue ---------------------------------------------


def _lanes(case: str) -> tuple[Lane, tuple[Lane, ...], float]:
    """(the lane placing, the others, max_wait) for each path through `place`."""
    here = Lane("here", 2, "m3:latest", 1)
    if case == "own key":
        return here, (), 1e9
    if case == "idle, a swap":
        return Lane("here", 1, "zz:latest"), (Lane("gpu1", 1, "m0:latest", 1),), 1e9
    if case == "starved":
        return Lane("here", 1, "m3:latest"), (), 100.0
    if case == "busy, starved elsewhere":
        return here, (Lane("gpu1", 1, "m0:latest", 1),), 39_999.5
    # every key is loaded elsewhere: a second copy is considered
    others = tuple(Lane(f"gpu{i}", 1, f"m{i}:latest", 1) for i in range(8))
    return Lane("here", 1, None), others, 1e9


PLACE_CASES = ("own key", "idle, a swap", "starved", "busy, starved elsewhere", "second copy")


def _place(store: SyncStore, case: str) -> Candidate | None:
    lane, others, max_wait = _lanes(case)
    return store.place(lane, others, 40_000.0, max_wait, LoadCosts())


def test_the_plan_test_reads_exactly_the_statements_place_runs(big_store, monkeypatch):
    recording = _RecordingConnection(big_store.conn)
    monkeypatch.setattr(big_store, "conn", recording)
    for case in PLACE_CASES:
        _place(big_store, case)
    assert set(recording.statements) == {sql for sql, _ in PLACE_STATEMENTS}


@pytest.mark.parametrize("case", PLACE_CASES)
def test_place_runs_only_indexed_statements_on_a_large_queue(big_store, case):
    plans = _traced_plans(big_store, lambda: _place(big_store, case))
    assert plans
    for plan in plans:
        assert _uses_indexes(plan.split(" => ")[1]), plan


@pytest.mark.parametrize("case", PLACE_CASES)
def test_place_cost_does_not_grow_with_the_queue(big_store, small_store, case):
    """A hundred times more queued jobs cost a placement about the same: it visits the
    keys and their best jobs, never the queue (a backlog count stops at its cap)."""
    few = _vm_steps(small_store, lambda: _place(small_store, case), 1)
    many = _vm_steps(big_store, lambda: _place(big_store, case), 1)
    assert _place(big_store, case) is not None
    if case == "second copy":
        # each of the eight keys' backlogs is counted up to the cap, whatever the queue
        assert many <= 2 * few + 50 + 8 * 20 * BACKLOG_CAP, (few, many)
    else:
        assert many <= 2 * few + 50, (few, many)


def _enqueue_and_requeue(store: SyncStore) -> None:
    """A submission by an owner with jobs queued for m3, then one whose owner has none,
    then a claimed job going back to the queue: each finds its turn by seeks."""
    store.enqueue(new_job("m3:latest", key_name="alice", weight=2))
    store.enqueue(new_job("m3:latest", key_name="carol"))
    job = store.claim("m3:latest", 1e9)
    assert job is not None
    assert store.transition(job.id, job.state, JobState.QUEUED) is not None


def test_turns_are_given_by_indexed_statements_on_a_large_queue(big_store):
    plans = _traced_plans(big_store, lambda: _enqueue_and_requeue(big_store))
    assert any("turn" in p and p.startswith("UPDATE") for p in plans)
    for plan in plans:
        assert _uses_indexes(plan.split(" => ")[1]), plan


def test_the_cost_of_a_turn_does_not_grow_with_the_queue(big_store, small_store):
    few = _vm_steps(small_store, lambda: _enqueue_and_requeue(small_store), 1)
    many = _vm_steps(big_store, lambda: _enqueue_and_requeue(big_store), 1)
    assert many <= 2 * few + 50, (few, many)


# -- the async wrapper ------------------------------------------------------------------------


@pytest.fixture
def changes() -> list[Job]:
    """Every job the async store reports as changed, in order."""
    return []


@pytest.fixture(params=BACKENDS)
def where(request: pytest.FixtureRequest, db_path: Path) -> Path | str:
    """Where the async store lives: SQLite's file, or a PostgreSQL database's URL."""
    return database(request, request.param, db_path)


@pytest.fixture
async def async_store(where, clock, changes):
    store = await open_face(where, clock=clock, on_change=changes.append)
    yield store
    await store.close()


async def test_writes_under_a_cancelled_scope_still_commit(async_store, changes):
    with trio.CancelScope() as scope:
        scope.cancel()
        job = await async_store.enqueue(new_job("m:latest"))
        claimed = await async_store.claim(None, 600)
        moved = await async_store.transition(job.id, JobState.LOADING, JobState.CANCELLED)

    assert claimed is not None
    assert moved is not None
    got = async_store.sync.get(job.id)
    assert got is not None
    assert got.state is JobState.CANCELLED
    assert [j.state for j in changes] == [
        JobState.QUEUED,
        JobState.LOADING,
        JobState.CANCELLED,
    ]


async def test_a_write_cancelled_while_running_finishes_and_returns_its_job(where):
    """The cancel arrives while the write is on its thread: the caller still gets the
    committed job back, so it can tell its listeners."""
    entered = trio.Event()
    release = threading.Event()

    def slow_clock() -> float:
        trio.from_thread.run_sync(entered.set)
        release.wait(10)
        return 1_000.0

    changes: list[Job] = []
    store = await open_face(where, clock=slow_clock, on_change=changes.append)
    results: list[Job] = []

    async def write() -> None:
        results.append(await store.enqueue(new_job()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await entered.wait()
        nursery.cancel_scope.cancel()
        release.set()

    assert len(results) == 1
    assert changes == results
    assert store.sync.get(results[0].id) == results[0]
    await store.close()


async def test_listener_hears_each_changed_job_and_nothing_else(async_store, changes):
    a = await async_store.enqueue(new_job("a:latest"))
    b = await async_store.enqueue(new_job("b:latest"))
    claimed = await async_store.claim("a:latest", 600)
    assert await async_store.transition(b.id, JobState.WORKING, JobState.DONE) is None
    done = await async_store.transition(a.id, JobState.WORKING, JobState.DONE, result={})
    second = await async_store.claim(None, 600)
    assert await async_store.claim(None, 600) is None
    recovered = await async_store.recover_interrupted()
    await async_store.get(a.id)
    await async_store.count_queued()
    await async_store.next_not_before()

    assert [(j.id, j.state) for j in changes] == [
        (a.id, JobState.QUEUED),
        (b.id, JobState.QUEUED),
        (a.id, JobState.WORKING),
        (a.id, JobState.DONE),
        (b.id, JobState.LOADING),
        (b.id, JobState.QUEUED),
    ]
    assert changes[2] == claimed
    assert changes[3] == done
    assert changes[4] == second
    assert changes[5:] == recovered


async def test_now_is_the_clock_the_store_stamps_rows_with(async_store, clock):
    assert async_store.now() == clock.now
    clock.advance(90.5)
    assert async_store.now() == 1_090.5
    job = await async_store.enqueue(new_job())
    assert job.enqueued_at == async_store.now()


async def test_set_listener_replaces_the_listener(async_store, changes):
    later: list[Job] = []
    async_store.set_listener(later.append)
    job = await async_store.enqueue(new_job())
    assert later == [job]
    assert job not in changes


def test_the_jobs_ahead_are_counted_on_the_turn_index_alone(big_store):
    """A position counts index entries, never reads the rows (a count that reads each
    row costs about five times as much at 100,000 queued)."""
    job = big_store.get(big_store.key_heads(40_000.0)[0].id)
    assert job is not None
    plans = _traced_plans(big_store, lambda: big_store.ahead_in_key(job))
    assert plans
    for plan in plans:
        steps = plan.split(" => ")[1]
        assert _uses_indexes(steps), plan
        assert steps.count("COVERING INDEX jobs_queue_turn") == 3, plan


def test_jobs_by_ids_reads_each_named_job_once_in_the_order_first_named(store: SyncStore) -> None:
    jobs = [store.enqueue(new_job()) for _ in range(3)]
    a, b, c = (job.id for job in jobs)
    assert store.jobs_by_ids([]) == []
    assert [j.id for j in store.jobs_by_ids([c, "nope", a, c, b])] == [c, a, b]
    assert store.jobs_by_ids([b]) == [jobs[1]]
    # more than one query's worth: every one, still in order
    many = [store.enqueue(new_job()).id for _ in range(JOBS_BY_IDS_CHUNK + 3)]
    assert [j.id for j in store.jobs_by_ids([*reversed(many), "nope"])] == many[::-1]


def test_only_a_database_server_names_the_stores_session(store: SyncStore) -> None:
    pid = store.backend_pid()
    if isinstance(store, PgSyncStore):
        (own,) = store.pg.raw.execute("SELECT pg_backend_pid()").fetchone() or (None,)
        assert pid == own
    else:
        assert pid is None
