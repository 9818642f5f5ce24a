"""What can go wrong in the store, in one place.

`StoreError`: the database cannot be opened, or is from a newer foreman.
`StoreUnwritable` (a `StoreError`): it cannot take writes now (a full disk, a read-only
or vanished file); not a bug, and the write may succeed later, so callers wait it out.
`IdempotencyConflict` and `NotTerminal`: a request the store refuses for the job's sake.
"""

from __future__ import annotations

import sqlite3
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


# SQLite's primary result codes that say "the database cannot take writes now"
# (SQLITE_BUSY, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN), as opposed
# to a bug in a statement or a constraint a row broke
_UNWRITABLE_CODES = frozenset({5, 8, 10, 13, 14})


def unwritable_reason(exc: BaseException) -> str | None:
    """SQLite's reason when `exc` means the database cannot be written, else None."""
    if isinstance(exc, StoreUnwritable):
        return exc.reason
    if isinstance(exc, sqlite3.Error) and (exc.sqlite_errorcode or 0) & 0xFF in _UNWRITABLE_CODES:
        return str(exc)
    return None


class IdempotencyConflict(Exception):
    """An idempotency key already names a job made from a different request."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"idempotency key already used for job {job.id} with another request")
        self.job = job
        # which submission of a batch (`SyncStore.submit_all`) it refused
        self.index: int | None = None


class NotTerminal(Exception):
    """Only a finished job can be deleted."""
