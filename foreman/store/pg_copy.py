"""Copying a SQLite database into an empty PostgreSQL one (`foreman migrate-db`).

Every job (each column as stored, the body's bytes untouched, turns and results included)
and the swap history go across in ONE transaction on the target: a copy that fails
half-way leaves the target as it was. Rows travel in batches (`executemany`, which
psycopg pipelines), so a large queue copies in seconds.

The SQLite file is locked as `Store.open` locks it (a running foreman on it is refused:
it would go on changing what is being copied) and migrated to the current schema first,
so a file from an older foreman copies as well. Jobs the file still shows loading or
working are copied as they are: the replica that takes their upstream's lease puts them
back in the queue, as recovery does after a crash.

The columns are read from both schemas, not listed here: a column only PostgreSQL has
keeps its default. PostgreSQL's driver is imported inside `copy_to_postgres`, so that
importing this module (the store's front does) never loads it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from foreman.lockfile import DatabaseLock, LockHeld
from foreman.store.errors import StoreError, first_line
from foreman.store.schema import connect

if TYPE_CHECKING:
    import psycopg

# rows per `executemany`: large enough that the round trips vanish, small enough that a
# batch of large bodies stays a modest amount of memory
BATCH = 2000

# what is copied, in order: the jobs first, then the loads that name them
TABLES = ("jobs", "swaps")


@attrs.frozen
class Copied:
    """What `copy_to_postgres` committed."""

    jobs: int
    swaps: int


def copy_to_postgres(source: Path, url: str, *, batch: int = BATCH) -> Copied:
    """Copy every job and swap of the SQLite database at `source` into the PostgreSQL
    database at `url` (its schema created or brought up to date first).

    Raises StoreError with one line, having written nothing, when `source` is missing, in
    use by a foreman or unreadable, when the server cannot be reached, and when the target
    already holds jobs or swaps. The URL is never quoted (it may hold a password)."""
    if not source.is_file():
        raise StoreError(f"no database at {source}")
    lock = DatabaseLock(source)
    try:
        lock.acquire()
    except LockHeld as exc:
        raise StoreError(str(exc)) from None
    except OSError as exc:
        raise StoreError(f"cannot lock database {source}: {exc.strerror or exc}") from None
    try:
        try:
            sqlite = connect(source)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {source}: {exc}") from None
        try:
            return _copy(sqlite, source, url, batch)
        finally:
            sqlite.close()
    finally:
        lock.release()


def _copy(sqlite: sqlite3.Connection, source: Path, url: str, batch: int) -> Copied:
    import psycopg

    from foreman.store.pg import pg_connect

    pg = pg_connect(url)
    try:
        with pg.raw.transaction():
            # nobody writes either table until the copy commits, so the target found
            # empty stays empty until then
            pg.raw.execute("LOCK TABLE jobs, swaps IN EXCLUSIVE MODE")
            _refuse_a_filled_target(pg.raw)
            counts = [_copy_table(sqlite, pg.raw, table, batch) for table in TABLES]
            # the swaps' ids were copied as they were: later loads number on from them
            pg.raw.execute(
                "SELECT setval(pg_get_serial_sequence('swaps', 'id'), max(id)) FROM swaps"
                " HAVING max(id) IS NOT NULL"
            )
    except psycopg.Error as exc:
        raise StoreError(f"copy failed, nothing was written: {first_line(exc)}") from None
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read database {source}: {exc}") from None
    finally:
        pg.close()
    return Copied(jobs=counts[0], swaps=counts[1])


def _refuse_a_filled_target(pg: psycopg.Connection[Any]) -> None:
    row = pg.execute("SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM swaps)").fetchone()
    assert row is not None
    jobs, swaps = int(row[0]), int(row[1])
    if jobs or swaps:
        raise StoreError(
            f"the target database already holds {jobs} jobs and {swaps} swaps;"
            " migrate-db copies into an empty one only (nothing was written)"
        )


def _copy_table(
    sqlite: sqlite3.Connection, pg: psycopg.Connection[Any], table: str, batch: int
) -> int:
    """Copy every row of `table`; returns how many."""
    from psycopg import sql

    columns = [str(row[1]) for row in sqlite.execute(f"PRAGMA table_info({table})")]
    types = _target_types(pg, table)
    missing = [name for name in columns if name not in types]
    if missing:
        raise StoreError(
            f"the target database's {table} table lacks {', '.join(missing)}"
            " (is it from an older foreman?)"
        )
    convert = [_converter(types[name]) for name in columns]
    insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )
    # the names come from SQLite's own catalogue of the table
    listed = ", ".join(f'"{name}"' for name in columns)
    rows = sqlite.execute(f"SELECT {listed} FROM {table} ORDER BY {columns[0]}")
    copied = 0
    with pg.cursor() as cursor:
        for chunk in _chunks(rows, batch):
            cursor.executemany(insert, [_converted(row, convert) for row in chunk])
            copied += len(chunk)
    return copied


def _target_types(pg: psycopg.Connection[Any], table: str) -> dict[str, str]:
    found = pg.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = %s",
        (table,),
    ).fetchall()
    return {str(name): str(kind) for name, kind in found}


def _chunks(rows: sqlite3.Cursor, size: int) -> Iterator[Sequence[Any]]:
    while chunk := rows.fetchmany(size):
        yield chunk


def _converted(row: Sequence[Any], convert: Sequence[Callable[[Any], Any]]) -> tuple[Any, ...]:
    pairs = zip(row, convert, strict=True)
    return tuple(None if value is None else fn(value) for value, fn in pairs)


def _converter(pg_type: str) -> Callable[[Any], Any]:
    """A SQLite value as the target column's type: SQLite keeps what it was given (a
    whole-number REAL may read back as an int), PostgreSQL wants one type per column."""
    if pg_type in ("double precision", "real", "numeric"):
        return float
    if pg_type in ("smallint", "integer", "bigint"):
        return int
    if pg_type == "bytea":
        return _bytes
    return _text


def _bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _text(value: Any) -> str:
    return bytes(value).decode() if isinstance(value, bytes | memoryview) else str(value)
