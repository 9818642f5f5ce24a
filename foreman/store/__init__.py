"""The job store: SQLite schema, migrations and every query foreman runs.

The only package with SQL. One connection, used from Trio worker threads one call at a
time (a CapacityLimiter of 1), in WAL mode. Its bands, each importing only those above it:

- `errors`: what can go wrong (`StoreError`, `StoreUnwritable`, ...);
- `schema`: the forward migrations, `connect` and `backup`;
- `sql`: `SyncStore`, every query as a blocking call, and the records it reads;
- `face`: `Store`, the Trio face that runs them on a worker thread, shielded, with
  group commit (`Store.open` for a SQLite file, `Store.open_url` for PostgreSQL);
- `pg_copy`: `copy_to_postgres`, a SQLite database's jobs and swaps into PostgreSQL
  (`foreman migrate-db`);
- `pg`: `PgSyncStore`, `SyncStore` on PostgreSQL (not exported here, so that a foreman
  on SQLite never loads PostgreSQL's driver), selected by a postgresql:// `--db`;
- `pg_leases`: the advisory locks that say which replica drives which upstream.

Import from here (`from foreman.store import Store`); the bands are its inside.
"""

from typing import TYPE_CHECKING, Any

from foreman.store.errors import (
    DatabaseLost,
    IdempotencyConflict,
    NotTerminal,
    StoreError,
    StoreUnwritable,
    unwritable_reason,
)
from foreman.store.face import Store
from foreman.store.pg_copy import Copied, copy_to_postgres
from foreman.store.pg_leases import JANITOR, UpstreamView, janitor_key, upstream_key
from foreman.store.schema import MIGRATIONS, SCHEMA_VERSION, backup, connect, migrate
from foreman.store.sql import (
    PICK_STATEMENTS,
    PLACE_STATEMENTS,
    Activity,
    Ended,
    Overview,
    Swap,
    SyncStore,
    Waiting,
    wall_clock,
)

__all__ = [
    "JANITOR",
    "MIGRATIONS",
    "PICK_STATEMENTS",
    "PLACE_STATEMENTS",
    "SCHEMA_VERSION",
    "Activity",
    "Copied",
    "DatabaseLost",
    "Ended",
    "IdempotencyConflict",
    "NotTerminal",
    "Overview",
    "Store",
    "StoreError",
    "StoreUnwritable",
    "Swap",
    "SyncStore",
    "UpstreamView",
    "Waiting",
    "backup",
    "connect",
    "copy_to_postgres",
    "janitor_key",
    "migrate",
    "unwritable_reason",
    "upstream_key",
    "wall_clock",
]

if TYPE_CHECKING:
    from foreman.store.pg_listen import PgListener as PgListener


def __getattr__(name: str) -> Any:
    """`PgListener` is imported when first asked for: it loads PostgreSQL's driver, which a
    foreman on SQLite never does."""
    if name == "PgListener":
        from foreman.store.pg_listen import PgListener

        return PgListener
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
