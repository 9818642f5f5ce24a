"""Leases on PostgreSQL: which replica drives an upstream, which one runs the janitor.

A lease is a session-level advisory lock held by a replica's store connection. The server
frees it when that session ends, however it ends (a clean exit, kill -9, a lost network once
the server's keepalives give up), so a lease cannot outlive its holder, and no table of
holders needs cleaning. Holding it on the store's own connection fences the holder as well:
once its session is gone, no write of the old holder can land, since every write goes
through that session.

Advisory locks are per database: two foreman deployments on one server do not share leases.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:  # imported by a foreman on SQLite too, which never loads psycopg
    from foreman.store.pg import PgSyncStore

JANITOR = "janitor"


def lease_key(kind: str, name: str = "") -> int:
    """The advisory lock's 64-bit key for a lease: an upstream's by its name, or the
    janitor's. A hash, so any name fits; a collision with another program's advisory lock
    on the same database is as unlikely as a 64-bit hash collision."""
    digest = hashlib.blake2b(f"foreman:{kind}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def upstream_key(name: str) -> int:
    return lease_key("upstream", name)


def janitor_key() -> int:
    return lease_key(JANITOR)


@attrs.frozen
class UpstreamView:
    """An upstream as the database shows it to a replica that does not drive it."""

    name: str
    # some replica holds its lease (drives it)
    held: bool
    # the residency key of its latest load, and the key it is loading now, if any
    resident: str | None
    loading_key: str | None
    # jobs loading or working on it
    running: int


def try_leases(store: PgSyncStore, keys: Sequence[int]) -> list[int]:
    """Take whichever of the leases `keys` no other session holds; returns those taken.
    Also the replica's heartbeat on its session: a lost connection raises here.

    Only for keys this session does not hold: an advisory lock taken twice must be
    released twice."""
    rows = store.pg.raw.execute(
        "SELECT k FROM unnest(%s::bigint[]) AS k WHERE pg_try_advisory_lock(k)",
        (list(keys),),
    ).fetchall()
    return [int(r[0]) for r in rows]


def release_lease(store: PgSyncStore, key: int) -> bool:
    row = store.pg.raw.execute("SELECT pg_advisory_unlock(%s)", (key,)).fetchone()
    return bool(row and row[0])


# an advisory lock on a bigint key shows in pg_locks as its high and low 32 bits
_HELD = """
    EXISTS (SELECT 1 FROM pg_locks AS l
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.database = (SELECT oid FROM pg_database
                                  WHERE datname = current_database())
               AND l.classid::bigint = (u.key >> 32) & 4294967295
               AND l.objid::bigint = u.key & 4294967295)
"""


def upstream_views(store: PgSyncStore, names: Sequence[str]) -> list[UpstreamView]:
    """What the database says of each upstream: held or not, its latest load, the key it
    is loading, its running jobs. A few index seeks per upstream (swaps by upstream, the
    running jobs by upstream): no scan of the queue."""
    keys = [upstream_key(n) for n in names]
    rows = store.pg.raw.execute(
        "SELECT u.name,"
        f" {_HELD} AS held,"
        " (SELECT s.model_key FROM swaps AS s WHERE s.upstream = u.name"
        "   ORDER BY s.id DESC LIMIT 1) AS resident,"
        " (SELECT max(j.model_key) FROM jobs AS j WHERE j.upstream = u.name"
        "   AND j.state = 'loading') AS loading_key,"
        " (SELECT count(*) FROM jobs AS j WHERE j.upstream = u.name"
        "   AND j.state IN ('loading', 'working')) AS running"
        " FROM unnest(%s::text[], %s::bigint[]) AS u(name, key)",
        (list(names), keys),
    ).fetchall()
    return [
        UpstreamView(str(name), bool(held), resident, loading_key, int(running))
        for name, held, resident, loading_key, running in rows
    ]


def running_upstreams(store: PgSyncStore) -> list[str]:
    """The upstreams that jobs are loading or working on (from the running jobs' index)."""
    rows = store.pg.raw.execute(
        "SELECT DISTINCT upstream FROM jobs"
        " WHERE state IN ('loading', 'working') AND upstream IS NOT NULL"
    ).fetchall()
    return [str(r[0]) for r in rows]
