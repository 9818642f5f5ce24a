"""One foreman per database: an exclusive lock on a file beside it, holding the pid.

A second foreman on the same database would treat the first one's running job as
interrupted and run it again at once, so the store takes this lock before it recovers
anything. `flock` belongs to the open file, so the kernel drops it when the process dies
however it dies: a lock file left behind by a killed foreman never blocks a restart.
The file itself is never deleted (deleting it would let two processes lock two files).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class LockHeld(Exception):
    """Another process holds the database's lock."""


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


class DatabaseLock:
    """The lock on `<db>.lock`, held from `acquire` to `release`."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.path = lock_path(db)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise LockHeld naming the holder's pid (OSError if the file
        cannot be made)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise LockHeld(
                f"database {self.db} is in use by {who} (another foreman?); lock file {self.path}"
            ) from None
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        try:
            # for the message a second foreman prints; the lock itself is what counts, so a
            # full disk that refuses these few bytes does not stop foreman here
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the lock
            self._fd = None


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
