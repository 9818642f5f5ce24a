"""The database's shape: the forward migrations, opening a connection, and backups.

A database at a newer schema version than this foreman knows is refused with one line,
never touched.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from foreman.store.errors import StoreError

# Forward migrations; PRAGMA user_version is the number of scripts applied.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id           TEXT PRIMARY KEY,
        endpoint     TEXT NOT NULL,
        model        TEXT NOT NULL,
        model_key    TEXT NOT NULL,
        body         BLOB NOT NULL,
        stream       INTEGER NOT NULL,
        state        TEXT NOT NULL,
        priority     INTEGER NOT NULL DEFAULT 0,
        attempts     INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        not_before   REAL NOT NULL DEFAULT 0,
        enqueued_at  REAL NOT NULL,
        created_at   REAL NOT NULL,
        started_at   REAL,
        finished_at  REAL,
        error        TEXT,
        result       TEXT,
        queue_ms     INTEGER,
        ref          TEXT
    ) WITHOUT ROWID;
    -- the claim query walks these; partial, so they hold only what is queued
    CREATE INDEX jobs_queue ON jobs (priority DESC, enqueued_at, id) WHERE state = 'queued';
    CREATE INDEX jobs_queue_model ON jobs (model_key, priority DESC, enqueued_at, id)
        WHERE state = 'queued';
    CREATE INDEX jobs_queue_age ON jobs (enqueued_at) WHERE state = 'queued';
    CREATE INDEX jobs_queue_backoff ON jobs (not_before) WHERE state = 'queued';
    CREATE INDEX jobs_running ON jobs (state) WHERE state IN ('loading', 'working');
    """,
    # 2: the job API (idempotency keys, deadlines, listing, purging)
    """
    ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
    ALTER TABLE jobs ADD COLUMN request_hash TEXT;
    ALTER TABLE jobs ADD COLUMN deadline REAL;
    ALTER TABLE jobs ADD COLUMN model_name TEXT;
    UPDATE jobs SET model_name = substr(model_key, 1, instr(model_key || ' ', ' ') - 1);
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_deadline ON jobs (deadline)
        WHERE state = 'queued' AND deadline IS NOT NULL;
    CREATE INDEX jobs_finished ON jobs (finished_at)
        WHERE state IN ('done', 'failed', 'cancelled');
    CREATE INDEX jobs_by_state ON jobs (state, id);
    CREATE INDEX jobs_by_model ON jobs (model_name, id);
    CREATE INDEX jobs_by_ref ON jobs (ref, id) WHERE ref IS NOT NULL;
    """,
    # 3: API keys (a jobs-scoped key sees only the jobs it made)
    """
    ALTER TABLE jobs ADD COLUMN key_name TEXT;
    CREATE INDEX jobs_by_key ON jobs (key_name, id) WHERE key_name IS NOT NULL;
    """,
    # 4: the swap history the dashboard draws: one row per model load the worker made,
    # written in the same commit as the move that ends the load
    """
    CREATE TABLE swaps (
        id         INTEGER PRIMARY KEY,
        model_key  TEXT NOT NULL,
        job_id     TEXT NOT NULL,
        started_at REAL NOT NULL,
        loaded_at  REAL NOT NULL,
        jobs       INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX swaps_started ON swaps (started_at);
    """,
    # 5: idempotency keys belong to the API key that used them: the same key from two API
    # keys names two jobs (jobs made without keys, key_name NULL, share one owner)
    """
    DROP INDEX jobs_idempotency;
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (ifnull(key_name, ''), idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    """,
    # 6: the fleet: which upstream ran a job's latest attempt, and which upstream each
    # load was made on; the placement rule walks the queued keys one seek each
    """
    ALTER TABLE jobs ADD COLUMN upstream TEXT;
    ALTER TABLE swaps ADD COLUMN upstream TEXT;
    CREATE INDEX jobs_running_upstream ON jobs (upstream, state)
        WHERE state IN ('loading', 'working');
    CREATE INDEX swaps_upstream ON swaps (upstream, id);
    """,
    # 7: fair turns: a queued job's turn among the queued jobs of its key and priority
    # (`policy.turn_for`); a key's jobs are taken in turn order, and a new job finds the
    # front of its group and its owner's last turn there in one seek each. Jobs queued
    # before this have turn 0: among themselves they keep their order by age. `state`
    # closes the turn index so that counting the jobs ahead of one (its position) reads
    # the index alone, never the rows.
    """
    ALTER TABLE jobs ADD COLUMN turn INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_queue_turn
        ON jobs (model_key, priority DESC, turn, enqueued_at, id, state)
        WHERE state = 'queued';
    CREATE INDEX jobs_queue_owner ON jobs (model_key, priority, key_name, turn)
        WHERE state = 'queued';
    """,
    # 8: replicas: the token of the replica whose client waits for the job's answer
    # (NULL without replicas, or when no client waits)
    """
    ALTER TABLE jobs ADD COLUMN waiter TEXT;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations this database lacks; returns the version it started at."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {version} is newer than this foreman ({SCHEMA_VERSION})"
        )
    for number in range(version, SCHEMA_VERSION):
        with conn:
            conn.executescript(
                "BEGIN;" + MIGRATIONS[number] + f";PRAGMA user_version = {number + 1};"
            )
    return int(version)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating folders and schema) the database file, in WAL mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)
    except Exception:
        conn.close()
        raise
    return conn


def backup(source: Path, destination: Path) -> None:
    """Copy a live database with SQLite's online backup API: consistent even while
    foreman writes, and safe to run from another process."""
    if destination.exists():
        raise StoreError(f"{destination} exists; refusing to overwrite it")
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {source}: {exc}") from None
    try:
        dst = sqlite3.connect(destination)
        try:
            src.backup(dst, pages=1024)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        destination.unlink(missing_ok=True)
        raise StoreError(f"backup of {source} failed: {exc}") from None
    finally:
        src.close()
