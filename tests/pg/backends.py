"""The store's two backends for tests that run on both (`SQLite` and `PostgreSQL`).

`BACKENDS` is the parameter list of a `store` fixture; `open_store` opens a `SyncStore`
of either kind; `clear` empties one between examples of a property test. For the Trio
face (`Store`), `database` names where a test's store lives (a SQLite path or a
PostgreSQL URL) and `open_face` opens it there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from foreman.store import Store, SyncStore, connect
from foreman.store.pg import PgSyncStore, pg_connect
from tests.pg.cluster import PostgresCluster

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

# a test of what only SQLite has (its file, plans, pragmas), in a module whose `store`
# fixture runs on both backends
sqlite_only = pytest.mark.parametrize("store", ["sqlite"], indirect=True)


def open_store(
    request: pytest.FixtureRequest,
    backend: str,
    folder: Path,
    clock: Callable[[], float] | None = None,
    *,
    fast: bool = False,
) -> SyncStore:
    """A store of `backend`: SQLite in `folder`, or a new database on the test cluster.

    `fast` drops fsync (SQLite's; the cluster never syncs): for property tests, which are
    not about durability. The store is closed (and its database dropped) at the end of
    the fixture's scope."""
    extra = {} if clock is None else {"clock": clock}
    if backend == "sqlite":
        conn = connect(folder / "foreman.db")
        if fast:
            conn.execute("PRAGMA synchronous = OFF")
        request.addfinalizer(conn.close)
        return SyncStore(conn, **extra)
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    name = cluster.create_database()
    pg = pg_connect(cluster.url(name))

    def close() -> None:
        pg.close()
        cluster.drop_database(name)

    request.addfinalizer(close)
    return PgSyncStore(pg, **extra)


def database(request: pytest.FixtureRequest, backend: str, path: Path) -> Path | str:
    """Where a test's `Store` lives: SQLite's file at `path`, or (PostgreSQL) the URL of a
    new database on the test cluster, dropped at the end of the test."""
    if backend == "sqlite":
        return path
    url: str = request.getfixturevalue("postgres_url")
    return url


async def open_face(where: Path | str, **options: Any) -> Store:
    """`Store.open` for a SQLite path, `Store.open_url` for a PostgreSQL URL."""
    if isinstance(where, Path):
        return await Store.open(where, **options)
    return await Store.open_url(where, **options)


def clear(store: SyncStore) -> None:
    """Delete every job and load, on either backend."""
    with store.conn:
        store.conn.execute("BEGIN")
        store.conn.execute("DELETE FROM jobs")
        store.conn.execute("DELETE FROM swaps")
