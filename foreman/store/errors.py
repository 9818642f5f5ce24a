"""What can go wrong in the store, in one place.

`StoreError`: the database cannot be opened, or is from a newer foreman.
`StoreUnwritable` (a `StoreError`): it cannot take writes now (a full disk, a read-only
or vanished file; on PostgreSQL, a server that refuses writes); not a bug, and the write
may succeed later, so callers wait it out. `DatabaseLost` (a `StoreUnwritable`): the
connection to a PostgreSQL server is gone.
`IdempotencyConflict` and `NotTerminal`: a request the store refuses for the job's sake.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from foreman.jobs import Job


class StoreError(Exception):
    """The database cannot be opened or is from a newer foreman."""


class StoreUnwritable(StoreError):
    """A write failed because the database cannot take writes now: the disk is full,
    the file is read-only or gone, an I/O error. Not a bug and not the job's fault:
    the write may succeed once the operator frees space. `reason` is SQLite's words."""

    def __init__(self, path: Path | None, reason: str) -> None:
        where = f"database {path}" if path is not None else "the database"
        super().__init__(f"{where} cannot be written: {reason}")
        self.reason = reason


class DatabaseLost(StoreUnwritable):
    """The connection to the PostgreSQL server is gone (the server stopped or restarted,
    the network dropped, an administrator ended the session). Every later call on the
    connection fails the same way: it is not reopened behind the caller's back, since a
    new session would not hold what the old one held (its advisory locks)."""

    def __init__(self, reason: str) -> None:
        self.reason = f"the connection to the database is lost: {reason}"
        StoreError.__init__(self, self.reason)


# SQLite's primary result codes that say "the database cannot take writes now"
# (SQLITE_BUSY, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN), as opposed
# to a bug in a statement or a constraint a row broke
_UNWRITABLE_CODES = frozenset({5, 8, 10, 13, 14})


# PostgreSQL's SQLSTATEs (and classes) that say "the server cannot take writes now": out of
# disk, memory or connections (class 53), an I/O error (class 58), a read-only transaction
# (a standby, `default_transaction_read_only`), a server starting or stopping, a lock or a
# deadlock whose transaction is undone whole and may simply be tried again
_PG_UNWRITABLE_CLASSES = frozenset({"53", "58"})
_PG_UNWRITABLE_STATES = frozenset({"25006", "57P03", "55P03", "40P01", "40001"})
# ... and those that end the session: a connection failure (class 08), the server shutting
# down or crashing, an administrator's `pg_terminate_backend`
_PG_LOST_CLASSES = frozenset({"08"})
_PG_LOST_STATES = frozenset({"57P01", "57P02"})


def unwritable_reason(exc: BaseException) -> str | None:
    """The database's reason when `exc` means it cannot be written, else None."""
    if isinstance(exc, StoreUnwritable):
        return exc.reason
    if isinstance(exc, sqlite3.Error) and (exc.sqlite_errorcode or 0) & 0xFF in _UNWRITABLE_CODES:
        return str(exc)
    lost = database_lost(exc)
    if lost is not None:
        return lost.reason
    state = _pg_state(exc)
    if state is not None and (
        state in _PG_UNWRITABLE_STATES or state[:2] in _PG_UNWRITABLE_CLASSES
    ):
        return first_line(exc)
    return None


def database_lost(exc: BaseException) -> DatabaseLost | None:
    """`exc` as DatabaseLost when it says the connection to PostgreSQL is gone, else None.

    psycopg is looked up, not imported: a foreman on SQLite never loads it, and then no
    error can be one of its."""
    if isinstance(exc, DatabaseLost):
        return exc
    psycopg = sys.modules.get("psycopg")
    if psycopg is None or not isinstance(exc, psycopg.OperationalError):
        return None
    state = exc.sqlstate
    # no SQLSTATE: the client side saw the socket close, or the connection is closed
    if state is None or state in _PG_LOST_STATES or state[:2] in _PG_LOST_CLASSES:
        return DatabaseLost(first_line(exc))
    return None


def _pg_state(exc: BaseException) -> str | None:
    psycopg = sys.modules.get("psycopg")
    if psycopg is None or not isinstance(exc, psycopg.Error):
        return None
    state: str | None = exc.sqlstate
    return state


def first_line(exc: BaseException) -> str:
    """A driver's message in one line (psycopg's run to several: a hint, a context)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class IdempotencyConflict(Exception):
    """An idempotency key already names a job made from a different request."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"idempotency key already used for job {job.id} with another request")
        self.job = job
        # which submission of a batch (`SyncStore.submit_all`) it refused
        self.index: int | None = None


class NotTerminal(Exception):
    """Only a finished job can be deleted."""
