"""`foreman migrate-db SQLITE_PATH postgresql://...`: move a SQLite queue to PostgreSQL.

Also what the command line needs to know of database URLs: which `--db` is one, and how
to show one without its password (an operator's terminal, a CI log or a support ticket is
no place for it).
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import TextIO
from urllib.parse import unquote, urlsplit

from foreman.config import MASK, is_database_url, mask_password
from foreman.store import StoreError, copy_to_postgres


def backup_source(db: str | Path) -> Path:
    """The SQLite file `foreman backup` copies; a PostgreSQL `--db` is refused with one
    line: its server has backups of its own, which foreman must not pretend to be."""
    if is_database_url(db):
        raise StoreError(
            "foreman backup copies a SQLite file; back up a PostgreSQL database with"
            " pg_dump (or the server's continuous archiving)"
        )
    return Path(db)


def redact(text: str, url: str) -> str:
    """`text` (a message that may quote `url` or parts of it) without `url`'s password."""
    for secret in _passwords(url):
        text = text.replace(secret, MASK)
    return text


def _passwords(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [parts.password or ""]
    found += re.findall(r"(?i)(?:^|&)password=([^&]*)", parts.query)
    secrets = {form for raw in found if raw for form in (raw, unquote(raw))}
    # the longest first, so that a password holding another is replaced whole
    return sorted(secrets, key=len, reverse=True)


def run(source: Path, url: str, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """The command: 0 when copied, 2 when the target is not a PostgreSQL URL, 1 when the
    copy was refused or failed (nothing written); each failure is one line."""
    if not is_database_url(url):
        print(
            f"foreman: error: {mask_password(url)!r} is not a PostgreSQL URL"
            " (postgresql://user@host/database)",
            file=err,
        )
        return 2
    _quiet_driver()
    try:
        copied = copy_to_postgres(source, url)
    except StoreError as exc:
        print(f"foreman: error: {redact(str(exc), url)}", file=err)
        return 1
    print(
        f"foreman: copied {copied.jobs} jobs and {copied.swaps} swaps from {source}"
        f" to the database {mask_password(url)}",
        file=out,
    )
    return 0


def _quiet_driver() -> None:
    """Keep the command's failure to its one line: psycopg warns, through Python's
    last-resort handler (stderr, when nothing configured logging), about the batch it
    abandons after the server refused a row. A handler that drops them ends that, and
    leaves alone any logging a caller did configure."""
    driver = logging.getLogger("psycopg")
    if not any(isinstance(handler, logging.NullHandler) for handler in driver.handlers):
        driver.addHandler(logging.NullHandler())
