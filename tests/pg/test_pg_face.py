"""The Trio face (`Store`) on PostgreSQL: opening a database by URL, a server that refuses
writes, and a lost connection.

What the face does on both backends (group commit, shielded writes, listeners) is tested in
tests/unit on each; here is what only a database server brings.
"""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from foreman.jobs import JobState
from foreman.store import DatabaseLost, Store, StoreError, StoreUnwritable, unwritable_reason
from foreman.store.errors import database_lost
from tests.pg.cluster import PostgresCluster
from tests.unit._helpers import new_job

READ_ONLY = "cannot execute UPDATE in a read-only transaction"


def administer(cluster: PostgresCluster, statement: str) -> None:
    with psycopg.connect(cluster.url(), autocommit=True) as admin:
        admin.execute(statement.encode())


# -- what counts as "cannot be written now" ----------------------------------------------------


def test_the_servers_refusals_count_as_unwritable_and_statement_errors_do_not() -> None:
    full = psycopg.errors.DiskFull(
        'could not extend file "base/1/2": No space left on device\nHINT: Check free space.'
    )
    assert unwritable_reason(full) == 'could not extend file "base/1/2": No space left on device'
    assert unwritable_reason(psycopg.errors.OutOfMemory("out of memory")) == "out of memory"
    assert unwritable_reason(psycopg.errors.ReadOnlySqlTransaction(READ_ONLY)) == READ_ONLY
    assert unwritable_reason(psycopg.errors.DeadlockDetected("deadlock detected")) is not None
    assert unwritable_reason(psycopg.errors.UniqueViolation("duplicate key")) is None
    assert unwritable_reason(psycopg.errors.UndefinedTable('relation "x" does not exist')) is None
    assert unwritable_reason(psycopg.errors.DivisionByZero("division by zero")) is None


def test_an_ended_session_is_a_lost_connection_and_nothing_else_is() -> None:
    for gone in (
        psycopg.OperationalError("server closed the connection unexpectedly"),
        psycopg.OperationalError("the connection is closed"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.errors.ConnectionFailure("connection failure"),
    ):
        lost = database_lost(gone)
        assert isinstance(lost, DatabaseLost), gone
        assert isinstance(lost, StoreUnwritable)
        assert str(lost) == f"the connection to the database is lost: {gone}"
        assert unwritable_reason(gone) == lost.reason
    for other in (
        psycopg.errors.DiskFull("no space"),
        psycopg.errors.UniqueViolation("duplicate key"),
        sqlite3.OperationalError("database is locked"),
        RuntimeError("server closed the connection unexpectedly"),
    ):
        assert database_lost(other) is None, other


# -- opening ------------------------------------------------------------------------------------


async def test_a_store_opened_by_url_keeps_its_jobs_across_connections(postgres_url: str) -> None:
    store = await Store.open_url(postgres_url)
    job = await store.enqueue(new_job())
    assert store.file_problem() is None
    assert await store.write_problem() is None
    await store.close()

    again = await Store.open_url(postgres_url)
    assert await again.get(job.id) == job
    await again.close()


async def test_an_unreachable_database_is_refused_in_one_line_without_the_url(
    postgres_cluster: PostgresCluster,
) -> None:
    url = postgres_cluster.url("absent").replace("postgres@", "postgres:s3cret@")
    with pytest.raises(StoreError) as refused:
        await Store.open_url(url)
    message = str(refused.value)
    assert message.startswith("cannot connect to the database: ")
    assert '"absent" does not exist' in message
    assert "\n" not in message
    assert "s3cret" not in message
    assert not isinstance(refused.value, StoreUnwritable)


@pytest.mark.parametrize("migrated", [False, True], ids=["new", "migrated"])
async def test_a_read_only_database_is_refused_at_open_as_unwritable(
    postgres_cluster: PostgresCluster, migrated: bool
) -> None:
    name = postgres_cluster.create_database()
    url = postgres_cluster.url(name)
    try:
        if migrated:
            await (await Store.open_url(url)).close()
        administer(
            postgres_cluster, f"ALTER DATABASE {name} SET default_transaction_read_only = on"
        )
        with pytest.raises(StoreUnwritable) as refused:
            await Store.open_url(url)
        assert "read-only transaction" in refused.value.reason
        assert "\n" not in str(refused.value)
    finally:
        postgres_cluster.drop_database(name)


# -- a server that refuses writes, a connection that is lost -----------------------------------


async def test_writes_a_read_only_server_refuses_wait_as_unwritable_and_then_pass(
    postgres_url: str,
) -> None:
    store = await Store.open_url(postgres_url)
    job = await store.enqueue(new_job())
    session = store.sync.conn
    session.execute("SET default_transaction_read_only = on")

    assert await store.write_problem() == READ_ONLY
    with pytest.raises(StoreUnwritable, match="the database cannot be written: cannot execute"):
        await store.transition(job.id, JobState.QUEUED, JobState.CANCELLED)
    with pytest.raises(psycopg.Error) as submitted:
        await store.submit(new_job())
    down = store.unwritable(submitted.value)
    assert down is not None
    assert "read-only transaction" in down.reason
    assert await store.get(job.id) == job  # reads still work
    assert await store.count_queued() == 1

    session.execute("SET default_transaction_read_only = off")
    assert await store.write_problem() is None
    moved = await store.transition(job.id, JobState.QUEUED, JobState.CANCELLED)
    assert moved is not None
    assert moved.state is JobState.CANCELLED
    await store.close()


async def test_a_lost_connection_is_said_in_one_line_on_every_later_call(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    store = await Store.open_url(postgres_url)
    job = await store.enqueue(new_job())
    pid = store.sync.conn.raw.info.backend_pid  # type: ignore[attr-defined]
    administer(postgres_cluster, f"SELECT pg_terminate_backend({pid})")

    with pytest.raises(DatabaseLost) as read:
        await store.get(job.id)
    assert str(read.value).startswith("the connection to the database is lost: ")
    assert "\n" not in str(read.value)
    with pytest.raises(DatabaseLost):
        await store.transition(job.id, JobState.QUEUED, JobState.CANCELLED)
    with pytest.raises(psycopg.Error) as submitted:
        await store.submit(new_job())
    assert isinstance(store.unwritable(submitted.value), DatabaseLost)
    problem = await store.write_problem()
    assert problem is not None
    assert problem.startswith("the connection to the database is lost: ")
    await store.close()
