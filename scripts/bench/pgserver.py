"""A throwaway PostgreSQL cluster for the benchmarks, durable like foreman's SQLite.

The tests' cluster (tests/pg/cluster.py) runs with fsync and synchronous_commit off, since
its data are thrown away; a benchmark that set it beside SQLite's synced commits would
compare a disk with none. This one turns them back on: a commit returns once its WAL is
flushed to the disk, as a synced SQLite commit returns once the file is. It listens on a
Unix socket in its own temporary directory, like the tests' cluster, and is removed when
the block ends.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager

from tests.pg.cluster import (
    UNPRIVILEGED_USER,
    PostgresCluster,
    new_cluster,
    server_bindir,
    sweep_abandoned,
)

# what the tests' cluster turns off, on again
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def missing() -> str | None:
    """Why no cluster can be started here (one line), or None."""
    if server_bindir() is None:
        return (
            "no PostgreSQL server programs on this machine (initdb, pg_ctl, postgres;"
            " `make postgres` installs Debian's, FOREMAN_POSTGRES_BINDIR names others)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError:
            return f"running as root with no user {UNPRIVILEGED_USER!r} to run PostgreSQL as"
    return None


@contextmanager
def durable_cluster() -> Iterator[PostgresCluster]:
    """A started cluster with fsync and synchronous_commit on (call `missing` first)."""
    bindir = server_bindir()
    assert bindir is not None, "no PostgreSQL server programs"
    user = pwd.getpwnam(UNPRIVILEGED_USER) if os.geteuid() == 0 else None
    sweep_abandoned(bindir)
    cluster = new_cluster(bindir, user, settings=DURABLE)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@contextmanager
def database(cluster: PostgresCluster) -> Iterator[str]:
    """A fresh database on `cluster`, dropped when the block ends; yields its URL."""
    name = cluster.create_database()
    try:
        yield cluster.url(name)
    finally:
        cluster.drop_database(name)
