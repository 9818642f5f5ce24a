"""What durability costs at the store, measured on SyncStore directly (no HTTP).

- The worker's path per job (claim, then the end) three ways: as foreman commits it (the
  claim unsynced, the end synced), every commit synced (synchronous = FULL throughout), and
  no commit synced (synchronous = NORMAL throughout: safe against a crash of foreman, not
  against a power cut).
- Submissions: one transaction (one fsync) per job, against groups of 32 in one
  transaction, as concurrent submissions are committed by `Store.submit`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from foreman.jobs import Endpoint, JobState, NewJob
from foreman.store import SyncStore, connect


class _AlwaysSynced(SyncStore):
    @contextmanager
    def _unsynced(self, unsynced: bool = True) -> Iterator[None]:
        yield


def _new(i: int) -> NewJob:
    body = b'{"model":"llama3","prompt":"job %d","stream":false}' % i
    return NewJob(
        endpoint=Endpoint.GENERATE,
        model="llama3",
        model_key="llama3:latest",
        body=body,
        stream=False,
    )


def _fresh(work: Path, name: str) -> Path:
    db = work / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return db


def worker_path(work: Path, jobs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("foreman", "all_synced", "none_synced"):
        conn = connect(_fresh(work, f"worker-{mode}"))
        if mode == "none_synced":
            conn.execute("PRAGMA synchronous = NORMAL")
        store = (_AlwaysSynced if mode == "all_synced" else SyncStore)(conn)
        try:
            store.submit_many([(_new(i), None) for i in range(jobs)])
            started = time.perf_counter()
            for _ in range(jobs):
                job = store.claim("llama3:latest", 600.0)
                assert job is not None
                store.transition(job.id, job.state, JobState.DONE, result={"response": "ok"})
            out[f"{mode}_us_per_job"] = (time.perf_counter() - started) / jobs * 1e6
        finally:
            conn.close()
    out["jobs"] = jobs
    return out


def submissions(work: Path, jobs: int, group: int = 32) -> dict[str, Any]:
    out: dict[str, Any] = {"jobs": jobs, "group": group}
    conn = connect(_fresh(work, "submit-one"))
    store = SyncStore(conn)
    try:
        started = time.perf_counter()
        for i in range(jobs):
            store.submit(_new(i))
        out["one_per_commit_us_per_job"] = (time.perf_counter() - started) / jobs * 1e6
    finally:
        conn.close()
    conn = connect(_fresh(work, "submit-group"))
    store = SyncStore(conn)
    try:
        started = time.perf_counter()
        for first in range(0, jobs, group):
            store.submit_many([(_new(i), None) for i in range(first, min(jobs, first + group))])
        out["grouped_us_per_job"] = (time.perf_counter() - started) / jobs * 1e6
    finally:
        conn.close()
    return out


def durability(work: Path, quick: bool) -> dict[str, Any]:
    jobs = 500 if quick else 2000
    return {"worker_path": worker_path(work, jobs), "submissions": submissions(work, jobs)}
