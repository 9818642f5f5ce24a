"""What only the PostgreSQL store has: its schema version, its plans on a filled table,
the unique index behind idempotency keys, and claims that skip rows another transaction
locked (two processes on one database never start the same job)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from foreman.jobs import Job, JobState
from foreman.policy import TURN, Lane, LoadCosts
from foreman.store import StoreError
from foreman.store.pg import PG_SCHEMA_VERSION, PgSyncStore, pg_connect
from tests.pg.cluster import PostgresCluster
from tests.unit._helpers import FakeClock, new_job


def _version(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version FROM foreman_schema").fetchone()
    assert row is not None
    return int(row[0])


def test_connect_creates_the_schema_at_its_version_once(postgres_url: str) -> None:
    pg_connect(postgres_url).close()
    assert _version(postgres_url) == PG_SCHEMA_VERSION
    again = pg_connect(postgres_url)
    try:
        assert PgSyncStore(again).count_queued() == 0
    finally:
        again.close()
    assert _version(postgres_url) == PG_SCHEMA_VERSION


def test_a_database_from_a_newer_foreman_is_refused_and_left_alone(postgres_url: str) -> None:
    pg_connect(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("UPDATE foreman_schema SET version = %s", (PG_SCHEMA_VERSION + 1,))

    with pytest.raises(StoreError, match="newer"):
        pg_connect(postgres_url)

    assert _version(postgres_url) == PG_SCHEMA_VERSION + 1


def test_a_server_that_cannot_be_reached_is_one_line(tmp_path) -> None:
    with pytest.raises(StoreError, match="cannot connect") as caught:
        pg_connect(f"postgresql://nobody@/none?host={tmp_path}&port=9&connect_timeout=2")
    assert "\n" not in str(caught.value)


@pytest.fixture
def store(postgres_url: str) -> Iterator[PgSyncStore]:
    conn = pg_connect(postgres_url)
    yield PgSyncStore(conn, clock=FakeClock())
    conn.close()


def test_the_database_refuses_a_second_job_with_one_idempotency_key(store: PgSyncStore) -> None:
    first, _ = store.submit(new_job(idempotency_key="k", request_hash="h"))
    with pytest.raises(psycopg.errors.UniqueViolation):
        store.conn.execute(
            "INSERT INTO jobs (id, endpoint, model, model_key, body, stream, state,"
            " max_attempts, enqueued_at, created_at, idempotency_key)"
            " VALUES ('x', '/api/chat', 'm', 'm:latest', ?, 0, 'queued', 5, 1, 1, 'k')",
            (b"{}",),
        )
    assert not store.conn.in_transaction
    assert store.list_jobs() == [first]


def test_a_claim_skips_a_job_another_transaction_holds(
    store: PgSyncStore, postgres_url: str
) -> None:
    older = store.enqueue(new_job("a:latest"))
    store.clock.advance(1)  # type: ignore[attr-defined]
    newer = store.enqueue(new_job("a:latest"))
    lane = Lane("gpu", 1, None, 0)
    with psycopg.connect(postgres_url) as other:
        other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (older.id,))
        claimed, _ = store.claim_on(lane, (), 1e9, LoadCosts({}, {}))
        assert claimed is not None
        assert claimed.id == newer.id
    # the other transaction ended: the job it held is free again
    claimed, _ = store.claim_on(lane, (), 1e9, LoadCosts({}, {}))
    assert claimed is not None
    assert claimed.id == older.id


@pytest.fixture(scope="module")
def big_store(postgres_cluster: PostgresCluster) -> Iterator[PgSyncStore]:
    """20k queued jobs over a history of 20k finished ones, with statistics gathered."""
    name = postgres_cluster.create_database()
    conn = pg_connect(postgres_cluster.url(name))
    rng = random.Random(7)
    rows = []
    for i in range(40_000):
        state = "queued" if i % 2 == 0 else rng.choice(["done", "failed", "cancelled"])
        rows.append(
            (
                f"{i:08d}",
                f"m{rng.randrange(8)}:latest",
                b"{}",
                state,
                rng.randrange(-2, 3),
                rng.choice([0.0, 0.0, 0.0, 50_000.0]),
                float(i),
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
            " VALUES (?, '/api/chat', 'm', ?, ?, 1, ?, ?, 0, 5, ?, ?, ?, ?, ?)",
            rows,
        )
    conn.execute("ANALYZE")
    yield PgSyncStore(conn, clock=FakeClock(40_000.0))
    conn.close()
    postgres_cluster.drop_database(name)


def test_every_pick_and_place_statement_reads_an_index_on_a_filled_table(
    big_store: PgSyncStore,
) -> None:
    plans = big_store.explain_pick("m3:latest")
    assert plans
    for plan in plans:
        assert "Seq Scan" not in plan, plan
        assert "Index" in plan, plan
        assert "Sort" not in plan, plan


def test_prepared_statements_are_planned_for_their_parameters(store: PgSyncStore) -> None:
    """The store's statements are prepared on the server once they have run a few times;
    left to itself PostgreSQL may then plan one for any parameters, and that plan of the
    starvation lookup walks the queue by age. The session keeps to the plans the test
    above reads."""
    for _ in range(8):
        store.claim_on(Lane("gpu", 1, None, 0), (), 1e9, LoadCosts({}, {}))
    row = store.pg.raw.execute("SHOW plan_cache_mode").fetchone()
    assert row == ("force_custom_plan",)
    prepared = store.pg.raw.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert prepared is not None
    assert prepared[0] > 0


def test_the_statements_that_pick_a_job_to_start_lock_it_skipping_locked_rows(
    big_store: PgSyncStore,
) -> None:
    locking = [p for p in big_store.explain_pick() if "LockRows" in p]
    # the starved, top, per-model and per-key lookups each return a row to start
    assert len(locking) == 6, locking


def test_one_key_submitted_on_two_connections_at_once_makes_one_job(
    store: PgSyncStore, postgres_url: str
) -> None:
    """The second submission waits on the unique index for the first one's commit, then
    answers with the job it made, as if it had come second (replicas share one database)."""
    other = PgSyncStore(pg_connect(postgres_url), clock=FakeClock())
    new = new_job(idempotency_key="k", request_hash="h")
    answers: list[tuple[Job, bool] | BaseException] = []

    def second() -> None:
        try:
            answers.append(other.submit(new))
        except BaseException as exc:  # the test reads it
            answers.append(exc)

    try:
        with store.conn:
            store.conn.execute("BEGIN")
            first, created = store._insert(new, None)
            thread = threading.Thread(target=second)
            thread.start()
            _wait_until_blocked(postgres_url, other)
        thread.join(timeout=60)
        assert not thread.is_alive()
    finally:
        other.conn.close()
    assert created
    assert answers == [(first, False)]
    assert store.list_jobs() == [first]


def _wait_until_blocked(url: str, store: PgSyncStore) -> None:
    """Until `store`'s connection waits for a lock (a generous deadline)."""
    pid = store.pg.raw.info.backend_pid
    deadline = time.monotonic() + 30
    with psycopg.connect(url, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            row = watcher.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
            if row is not None and row[0] == "Lock":
                return
            time.sleep(0.01)
    raise AssertionError("the second submission never waited for the first")


class _Recording:
    """A psycopg connection that records each statement it is given."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw
        self.statements: list[str] = []

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        self.statements.append(str(query))
        return self.raw.execute(query, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def test_the_workers_own_moves_commit_unsynced_and_what_someone_is_told_synced(
    store: PgSyncStore,
) -> None:
    # as on a server that syncs (the test cluster does not)
    store.pg.raw.execute("SET synchronous_commit TO on")
    job = store.enqueue(new_job("a:latest"))
    recording = _Recording(store.pg.raw)
    store.pg.raw = recording  # type: ignore[assignment]
    unsynced = "SET LOCAL synchronous_commit TO off"
    try:
        claimed = store.claim(None, 1e9)
        assert claimed is not None
        assert recording.statements[:2] == ["BEGIN", unsynced]
        recording.statements.clear()
        store.transition(job.id, JobState.LOADING, JobState.WORKING, loaded=True)
        assert unsynced in recording.statements
        recording.statements.clear()
        store.transition(job.id, JobState.WORKING, JobState.DONE, result={"r": 1})
        assert unsynced not in recording.statements
        store.enqueue(new_job("a:latest"))
        assert unsynced not in recording.statements
    finally:
        store.pg.raw = recording.raw
    # the setting was the transaction's alone
    row = store.pg.raw.execute("SHOW synchronous_commit").fetchone()
    assert row == ("on",)


@pytest.fixture
def dictionary_ordered_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A database whose text sorts as a dictionary does (ICU's en-US: 'a' before 'B'), as
    a server set up for people's languages would; the test cluster's own sorts bytes."""
    name = "dictionary_order"
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
        admin.execute(
            "CREATE DATABASE dictionary_order TEMPLATE template0"
            " LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'"
        )
    try:
        yield postgres_cluster.url(name)
    finally:
        postgres_cluster.drop_database(name)


def test_ids_and_keys_sort_by_their_bytes_whatever_the_database_sorts_by(
    dictionary_ordered_url: str,
) -> None:
    conn = pg_connect(dictionary_ordered_url)
    try:
        store = PgSyncStore(conn, clock=FakeClock())
        for job_id in ("B", "a"):
            store.enqueue(new_job(), job_id=job_id)
        # as SQLite orders them (and as ULIDs, all capitals and digits, order anyway)
        assert [j.id for j in store.list_jobs()] == ["a", "B"]
        assert [j.id for j in store.list_jobs(before="a")] == ["B"]
    finally:
        conn.close()
