"""`foreman migrate-db`: a SQLite queue copied into PostgreSQL reads back the same, job for
job and load for load, and the placement rule picks the same next jobs on both; a target
that already holds jobs, a SQLite file in use, and a copy that fails half-way all leave
the target as it was."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from foreman.jobs import Endpoint, Job, JobState
from foreman.lockfile import DatabaseLock
from foreman.policy import Lane, LoadCosts
from foreman.store import MIGRATIONS, StoreError, SyncStore, connect, copy_to_postgres
from foreman.store.pg import PgSyncStore, pg_connect
from tests.integration.test_processes import run_cli
from tests.unit._helpers import FakeClock, new_job

COSTS = LoadCosts({}, {})
# every byte value, so that a body that is not text must cross unchanged
ODD_BODY = bytes(range(256)) + b'{"model":"m"}'
OLD_BODY = '{"p":"\\101 ✓"}'.encode()


def _lane(name: str, resident: str | None = None, running: int = 0) -> Lane:
    return Lane(name, 1, resident, running)


def fill(store: SyncStore, clock: FakeClock) -> None:
    """Jobs in every state, with every optional column used, and loads on two upstreams."""
    for index in range(12):
        clock.advance(0.125 if index % 2 else 1.0)  # whole and fractional times alike
        store.submit(
            new_job(
                ("llama3:latest", "qwen:7b", "phi3:mini")[index % 3],
                priority=5 if index % 4 == 0 else 0,
                key_name=("alice", "bob", None)[index % 3],
                weight=2 if index % 3 == 1 else 1,
                idempotency_key=f"idem-{index}" if index % 2 else None,
                request_hash=f"hash-{index}" if index % 2 else None,
                ref=f"ref-{index}" if index % 5 == 0 else None,
                deadline=clock.now + 3600 if index == 7 else None,
                max_attempts=3 if index == 3 else 5,
                stream=index % 2 == 0,
                endpoint=Endpoint.GENERATE if index % 3 == 2 else Endpoint.CHAT,
                body=ODD_BODY if index == 4 else b'{"n":%d}' % index,
            )
        )
    # one idempotency key reused by another API key: two jobs
    store.submit(new_job(key_name="carol", idempotency_key="idem-1", request_hash="x"))

    # a load on gpu-a and a job done there with a result, a second load and a job failed
    clock.advance(2.5)
    first, _ = store.claim_on(_lane("gpu-a"), (), 1e9, COSTS)
    assert first is not None
    assert first.state is JobState.LOADING
    clock.advance(3.25)
    store.transition(first.id, JobState.LOADING, JobState.WORKING, loaded=True)
    clock.advance(1.5)
    result = {"message": {"role": "assistant", "content": "é ✓"}, "eval_count": 7}
    store.transition(first.id, JobState.WORKING, JobState.DONE, result=result)
    second, _ = store.claim_on(_lane("gpu-a", first.model_key), (), 1e9, COSTS)
    assert second is not None
    assert second.state is JobState.LOADING
    clock.advance(0.75)
    store.transition(second.id, JobState.LOADING, JobState.WORKING, loaded=True)
    store.transition(second.id, JobState.WORKING, JobState.FAILED, error="upstream said no")
    # the failed job retried: queued again with a turn of its own
    assert store.retry(second.id) is not None

    # a load on gpu-b that is still going, and a job left working on gpu-a: as a crash
    # would leave them
    loading, _ = store.claim_on(_lane("gpu-b"), (_lane("gpu-a", first.model_key),), 1e9, COSTS)
    assert loading is not None
    assert loading.state is JobState.LOADING
    working, _ = store.claim_on(_lane("gpu-a", second.model_key), (), 1e9, COSTS)
    assert working is not None
    assert working.state is JobState.WORKING

    # a cancelled job, and one failed while queued (its deadline passed)
    queued = [job for job in store.list_jobs(limit=100) if job.state is JobState.QUEUED]
    store.transition(queued[-1].id, JobState.QUEUED, JobState.CANCELLED, error="cancelled")
    store.transition(queued[-2].id, JobState.QUEUED, JobState.FAILED, error="deadline passed")
    states = {job.state for job in store.list_jobs(limit=100)}
    assert states == set(JobState)


def all_jobs(store: SyncStore) -> list[Job]:
    ids = [row[0] for row in store.conn.execute("SELECT id FROM jobs ORDER BY id").fetchall()]
    jobs = [store.get(job_id) for job_id in ids]
    assert None not in jobs
    return jobs  # type: ignore[return-value]


def raw_rows(store: SyncStore, table: str, columns: str) -> list[tuple[Any, ...]]:
    rows = store.conn.execute(f"SELECT {columns} FROM {table} ORDER BY id").fetchall()
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows]


JOB_COLUMNS = (
    "id, endpoint, model, model_key, body, stream, state, priority, attempts, max_attempts,"
    " not_before, enqueued_at, created_at, started_at, finished_at, error, result, queue_ms,"
    " ref, idempotency_key, request_hash, deadline, model_name, key_name, upstream, turn"
)
SWAP_COLUMNS = "id, model_key, job_id, started_at, loaded_at, jobs, upstream"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "foreman.db"


@pytest.fixture
def source(sqlite_path: Path, clock: FakeClock) -> Iterator[SyncStore]:
    conn = connect(sqlite_path)
    store = SyncStore(conn, clock)
    fill(store, clock)
    yield store
    conn.close()


@pytest.fixture
def target(postgres_url: str) -> Iterator[PgSyncStore]:
    """A PostgreSQL store on the test's database, its schema made before any copy."""
    conn = pg_connect(postgres_url)
    yield PgSyncStore(conn, FakeClock())
    conn.close()


def test_every_job_and_swap_reads_back_from_postgresql_as_from_sqlite(
    source: SyncStore, sqlite_path: Path, postgres_url: str
) -> None:
    copied = copy_to_postgres(sqlite_path, postgres_url, batch=4)

    conn = pg_connect(postgres_url)
    try:
        target = PgSyncStore(conn)
        assert all_jobs(target) == all_jobs(source)
        assert copied.jobs == len(all_jobs(source)) == 13
        # the columns a Job does not carry (the request's hash, the model's name) too
        assert raw_rows(target, "jobs", JOB_COLUMNS) == raw_rows(source, "jobs", JOB_COLUMNS)
        assert raw_rows(target, "swaps", SWAP_COLUMNS) == raw_rows(source, "swaps", SWAP_COLUMNS)
        assert copied.swaps == 2
        assert [s.jobs for s in target.overview(swaps=10).swaps] == [1, 2]
        assert target.overview(swaps=10).swaps == source.overview(swaps=10).swaps
        odd = [job for job in all_jobs(target) if job.body == ODD_BODY]
        assert len(odd) == 1
        # the idempotency keys still name their jobs, per API key
        again, created = target.submit(
            new_job(key_name="bob", idempotency_key="idem-1", request_hash="hash-1")
        )
        assert not created
        assert again.idempotency_key == "idem-1"
        assert again.key_name == "bob"
    finally:
        conn.close()


def test_a_load_recorded_after_the_copy_numbers_on_from_the_copied_swaps(
    source: SyncStore, sqlite_path: Path, postgres_url: str
) -> None:
    copy_to_postgres(sqlite_path, postgres_url)
    conn = pg_connect(postgres_url)
    try:
        target = PgSyncStore(conn, FakeClock(5000.0))
        target.submit(new_job("mistral:latest", priority=99))
        job, _ = target.claim_on(_lane("gpu-c"), (), 1e9, COSTS)
        assert job is not None
        assert job.model_key == "mistral:latest"
        target.transition(job.id, JobState.LOADING, JobState.WORKING, loaded=True)
        ids = [row[0] for row in raw_rows(target, "swaps", "id")]
        assert ids == [1, 2, 3]
    finally:
        conn.close()


def test_after_the_copy_postgresql_places_the_same_jobs_sqlite_would(
    source: SyncStore, sqlite_path: Path, postgres_url: str, clock: FakeClock
) -> None:
    copy_to_postgres(sqlite_path, postgres_url)
    conn = pg_connect(postgres_url)
    try:
        target = PgSyncStore(conn, clock)
        # free both upstreams: the jobs left running go back as recovery puts them
        assert {j.id for j in source.recover_interrupted()} == {
            j.id for j in target.recover_interrupted()
        }
        clock.advance(10)
        resident = {"gpu-a": "llama3:latest", "gpu-b": None}
        picks: dict[str, list[str]] = {"sqlite": [], "postgres": []}
        for name, store in (("sqlite", source), ("postgres", target)):
            lanes = [_lane("gpu-a", resident["gpu-a"]), _lane("gpu-b")]
            for turn in range(20):
                lane, other = lanes[turn % 2], lanes[(turn + 1) % 2]
                job, _ = store.claim_on(lane, (other,), 600, COSTS)
                if job is None:
                    continue
                picks[name].append(job.id)
                ended = JobState.DONE if job.state is JobState.WORKING else JobState.FAILED
                store.transition(job.id, job.state, ended)
                lanes[turn % 2] = _lane(lane.name, job.model_key)
        assert len(picks["sqlite"]) >= 8
        assert picks["postgres"] == picks["sqlite"]
    finally:
        conn.close()


def test_a_target_that_holds_jobs_is_refused_and_left_untouched(
    source: SyncStore, sqlite_path: Path, target: PgSyncStore
) -> None:
    mine = target.enqueue(new_job("other:latest"))

    with pytest.raises(StoreError, match="already holds 1 jobs and 0 swaps") as refused:
        copy_to_postgres(sqlite_path, _url_of(target))

    assert "\n" not in str(refused.value)
    assert all_jobs(target) == [mine]
    assert raw_rows(target, "swaps", "id") == []


def test_a_sqlite_file_a_foreman_holds_is_refused_before_the_target_is_touched(
    source: SyncStore, sqlite_path: Path, postgres_url: str
) -> None:
    lock = DatabaseLock(sqlite_path)
    lock.acquire()
    try:
        with pytest.raises(StoreError, match="is in use by process"):
            copy_to_postgres(sqlite_path, postgres_url)
    finally:
        lock.release()
    with psycopg.connect(postgres_url) as conn:
        found = conn.execute("SELECT to_regclass('jobs')").fetchone()
    assert found == (None,)


def test_a_copy_that_fails_half_way_writes_nothing(
    source: SyncStore, sqlite_path: Path, target: PgSyncStore
) -> None:
    # PostgreSQL's text cannot hold a NUL: the last job (by id) is refused, after the
    # batches before it were sent
    last = max(job.id for job in all_jobs(source))
    with source.conn:
        source.conn.execute("UPDATE jobs SET error = ? WHERE id = ?", ("a\x00b", last))

    with pytest.raises(StoreError, match=r"copy failed, nothing was written: .*NUL"):
        copy_to_postgres(sqlite_path, _url_of(target), batch=2)

    assert all_jobs(target) == []
    assert raw_rows(target, "swaps", "id") == []


def test_a_file_of_an_older_schema_is_migrated_then_copied(
    tmp_path: Path, postgres_url: str
) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:6]:  # before fair turns
        old.executescript(script)
    old.execute(f"PRAGMA user_version = {6}")
    old.execute(
        "INSERT INTO jobs (id, endpoint, model, model_key, model_name, body, stream, state,"
        " max_attempts, enqueued_at, created_at) VALUES"
        " ('01OLD', '/api/chat', 'm', 'm:latest', 'm', ?, 1, 'queued', 5, 7, 7)",
        # a body written as text, as a hand-made row could have it: its bytes are its
        # UTF-8, backslashes included
        (OLD_BODY.decode(),),
    )
    old.close()

    assert copy_to_postgres(path, postgres_url).jobs == 1

    conn = pg_connect(postgres_url)
    try:
        job = PgSyncStore(conn).get("01OLD")
    finally:
        conn.close()
    assert job is not None
    assert (job.turn, job.enqueued_at, job.body, job.state) == (0, 7.0, OLD_BODY, JobState.QUEUED)


def test_a_missing_sqlite_file_is_refused_and_not_created(
    tmp_path: Path, postgres_url: str
) -> None:
    with pytest.raises(StoreError, match="no database at"):
        copy_to_postgres(tmp_path / "none.db", postgres_url)
    assert list(tmp_path.iterdir()) == []


def _url_of(store: PgSyncStore) -> str:
    """A URL naming the database `store` is connected to (the fixture's own)."""
    info = store.pg.raw.info
    return f"postgresql://{info.user}@/{info.dbname}?host={info.host}&port={info.port}"


# -- the command, as an operator runs it -----------------------------------------------------


def test_migrate_db_copies_and_says_so_without_the_password(
    source: SyncStore, sqlite_path: Path, postgres_url: str
) -> None:
    # the test cluster trusts its socket: the password is there only to be hidden
    url = postgres_url.replace("postgres@", "postgres:s3cr%40t-pw@", 1)
    assert "s3cr%40t-pw" in url

    done = run_cli("migrate-db", str(sqlite_path), url)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"foreman: copied 13 jobs and 2 swaps from {sqlite_path}")
    assert "postgres:***@" in done.stdout
    again = run_cli("migrate-db", str(sqlite_path), url)
    assert again.returncode == 1
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1, again.stderr
    assert "already holds 13 jobs and 2 swaps" in lines[0]
    for output in (done.stdout, done.stderr, again.stdout, again.stderr):
        assert "s3cr" not in output


def test_migrate_db_refuses_while_foreman_holds_the_file_and_a_target_that_is_no_url(
    source: SyncStore, sqlite_path: Path, postgres_url: str
) -> None:
    lock = DatabaseLock(sqlite_path)
    lock.acquire()
    try:
        held = run_cli("migrate-db", str(sqlite_path), postgres_url)
    finally:
        lock.release()
    assert held.returncode == 1
    assert held.stderr.count("\n") == 1
    assert "is in use by process" in held.stderr

    wrong = run_cli("migrate-db", str(sqlite_path), "mysql://root:hunter2@db/foreman")
    assert wrong.returncode == 2
    assert wrong.stderr.count("\n") == 1
    assert "is not a PostgreSQL URL" in wrong.stderr
    assert "hunter2" not in wrong.stderr


def test_a_copy_the_server_refuses_half_way_is_one_line_and_writes_nothing(
    source: SyncStore, sqlite_path: Path, target: PgSyncStore
) -> None:
    # the first row is refused: the rows after it are already on their way (pipelined)
    first = min(job.id for job in all_jobs(source))
    target.pg.raw.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RAISE EXCEPTION 'refused by the server'; END $$"
    )
    target.pg.raw.execute(
        f"CREATE TRIGGER refuse BEFORE INSERT ON jobs FOR EACH ROW"
        f" WHEN (NEW.id = '{first}') EXECUTE FUNCTION refuse()"
    )

    done = run_cli("migrate-db", str(sqlite_path), _url_of(target))

    assert done.returncode == 1
    assert (
        done.stderr == "foreman: error: copy failed, nothing was written: refused by the server\n"
    )
    assert all_jobs(target) == []
