"""The throwaway cluster itself, and the three primitives of PostgreSQL that replicas sharing
one queue rest on, proved on the real server: row claims that skip rows another session
holds, session-level advisory locks that end with the session, and LISTEN/NOTIFY.

Every call goes through a trio worker thread, as foreman's stores call their drivers.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import psycopg
import pytest
import trio
from psycopg import errors

from tests.pg.cluster import PostgresCluster, new_cluster, sweep_abandoned

T = TypeVar("T")
# generous: a loaded machine must never fail a test by taking its time
DEADLINE_S = 30
CLAIM = "SELECT id FROM jobs WHERE claimed_by IS NULL ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"


async def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await trio.to_thread.run_sync(partial(function, *args, **kwargs))


@asynccontextmanager
async def connection(url: str, *, autocommit: bool = True) -> AsyncIterator[psycopg.Connection]:
    """A connection whose waits for a lock end in an error, never in a hung worker thread
    (trio cannot cancel a thread)."""
    conn = await in_thread(
        psycopg.connect, url, autocommit=autocommit, options=f"-c lock_timeout={DEADLINE_S}s"
    )
    try:
        yield conn
    finally:
        with trio.CancelScope(shield=True):
            await in_thread(conn.close)


async def one(conn: psycopg.Connection, query: str, *params: Any) -> Any:
    """The first column of the one row `query` returns (None for no row)."""
    row = await in_thread(lambda: conn.execute(query, params).fetchone())
    return None if row is None else row[0]


async def test_a_test_gets_an_empty_database_of_its_own_over_the_socket(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    async with connection(postgres_url) as conn:
        assert (await one(conn, "SELECT current_database()")).startswith("test_")
        assert await one(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        # a Unix socket in the cluster's own directory, and no TCP listener at all
        assert await one(conn, "SELECT inet_server_addr()") is None
        assert await one(conn, "SELECT current_setting('listen_addresses')") == ""
        assert await one(conn, "SELECT current_setting('fsync')") == "off"
        data = await one(conn, "SELECT current_setting('data_directory')")
        assert data == str(postgres_cluster.data)


async def test_a_dropped_database_is_gone_even_with_a_connection_left_open(
    postgres_cluster: PostgresCluster,
) -> None:
    name = await in_thread(postgres_cluster.create_database)
    async with connection(postgres_cluster.url(name)) as left_open:
        await in_thread(postgres_cluster.drop_database, name)
        with pytest.raises(psycopg.OperationalError):
            await one(left_open, "SELECT 1")
    async with connection(postgres_cluster.url()) as admin:
        assert await one(admin, "SELECT count(*) FROM pg_database WHERE datname = %s", name) == 0


def test_a_cluster_left_by_a_killed_run_is_removed_by_the_next(
    postgres_cluster: PostgresCluster,
) -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()
    abandoned = new_cluster(postgres_cluster.bindir, postgres_cluster.user, ended.pid)
    try:
        abandoned.start()
        psycopg.connect(abandoned.url()).close()
        swept = sweep_abandoned(postgres_cluster.bindir)
        assert abandoned.root in swept
        assert not abandoned.root.exists()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(abandoned.url()).close()
        # the clusters of runs still going (this one's) are left alone
        assert postgres_cluster.root not in swept
        psycopg.connect(postgres_cluster.url()).close()
    finally:
        abandoned.stop()


def test_a_cluster_made_with_settings_of_its_own_runs_with_them_over_the_defaults(
    postgres_cluster: PostgresCluster,
) -> None:
    durable = new_cluster(
        postgres_cluster.bindir,
        postgres_cluster.user,
        settings={"fsync": "on", "synchronous_commit": "on"},
    )
    try:
        durable.start()
        with psycopg.connect(durable.url()) as conn:
            shown: dict[str, str] = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                    (["fsync", "synchronous_commit", "full_page_writes", "listen_addresses"],),
                ).fetchall()
            )
        # the ones given, and the defaults for the rest
        assert shown == {
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "off",
            "listen_addresses": "",
        }
    finally:
        durable.stop()


async def test_claims_from_two_sessions_skip_each_others_rows(postgres_url: str) -> None:
    async with connection(postgres_url) as setup:
        await in_thread(setup.execute, "CREATE TABLE jobs (id int PRIMARY KEY, claimed_by text)")
        await in_thread(setup.execute, "INSERT INTO jobs (id) VALUES (1), (2), (3)")
    async with (
        connection(postgres_url, autocommit=False) as a,
        connection(postgres_url, autocommit=False) as b,
    ):
        with trio.fail_after(DEADLINE_S):
            # both transactions stay open: a's row is locked while b claims
            assert await one(a, CLAIM) == 1
            # the lock is real: taking a's row without skipping is refused ...
            with pytest.raises(errors.LockNotAvailable):
                await one(b, "SELECT id FROM jobs WHERE id = 1 FOR UPDATE NOWAIT")
            await in_thread(b.rollback)
            # ... and a claim that skips locked rows takes the next one, without waiting
            assert await one(b, CLAIM) == 2
            await in_thread(b.execute, "UPDATE jobs SET claimed_by = 'b' WHERE id = 2")
            await in_thread(a.execute, "UPDATE jobs SET claimed_by = 'a' WHERE id = 1")
            await in_thread(b.commit)
            await in_thread(a.commit)
            rows = await in_thread(
                lambda: a.execute("SELECT id, claimed_by FROM jobs ORDER BY id").fetchall()
            )
    assert rows == [(1, "a"), (2, "b"), (3, None)]


async def test_an_advisory_lock_is_held_by_one_session_until_its_connection_closes(
    postgres_url: str,
) -> None:
    lease = "SELECT pg_try_advisory_lock(16)"
    async with connection(postgres_url) as b:
        async with connection(postgres_url) as a:
            assert await one(a, lease) is True
            # held past the statement (a session lock, not a transaction's) and refused to b
            assert await one(a, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 1
            assert await one(b, lease) is False
        # a's connection is closed: its backend ends and lets go, a moment later
        with trio.fail_after(DEADLINE_S):
            while not await one(b, lease):  # noqa: ASYNC110 - asks the server, which no trio event here announces
                await trio.sleep(0.01)
        async with connection(postgres_url) as c:
            assert await one(c, lease) is False


async def test_a_notification_reaches_a_listening_session_once_committed(
    postgres_url: str,
) -> None:
    async with (
        connection(postgres_url) as listener,
        connection(postgres_url, autocommit=False) as sender,
    ):
        await in_thread(listener.execute, "LISTEN jobs")
        # a notification from a transaction that rolls back is never delivered ...
        await in_thread(sender.execute, "SELECT pg_notify('jobs', 'rolled back')")
        await in_thread(sender.rollback)
        # ... one from a committed transaction is
        await in_thread(sender.execute, "SELECT pg_notify('jobs', 'job 1 changed')")
        await in_thread(sender.commit)
        received = await in_thread(
            lambda: list(listener.notifies(timeout=DEADLINE_S, stop_after=1))
        )
        sender_pid = sender.info.backend_pid
    assert [(n.channel, n.payload, n.pid) for n in received] == [
        ("jobs", "job 1 changed", sender_pid)
    ]
