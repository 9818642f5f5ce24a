"""A full disk, a second foreman on one database, a start on an unwritable database.

The full disk is a small tmpfs mounted for the test (it needs root; without it, or when
mounting fails, the test is skipped, except under CI, where it fails).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from foreman.config import Settings
from foreman.daemon import run
from foreman.jobs import Endpoint, JobState, NewJob
from foreman.store import SyncStore, connect
from foreman.stub import StubOllama
from foreman.testing import CannotMount, Process, fill_disk, foreman_process
from foreman.testing import small_disk as mount_small_disk

from .conftest import job_rows, wait_for


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted after the test."""
    try:
        with mount_small_disk(tmp_path / "disk") as where:
            yield where
    except CannotMount as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def chat(text: str) -> dict[str, object]:
    return {"model": "llama3", "messages": [{"role": "user", "content": text}], "stream": False}


async def test_a_full_disk_refuses_new_jobs_keeps_serving_and_loses_nothing(
    small_disk: Path,
    stub: StubOllama,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="foreman")
    db = small_disk / "foreman.db"
    settings = Settings(ollama_url=stub.url, db=db, port=0, retry_backoff=0.05)
    url: str = await nursery.start(run, settings)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        stub.hold()
        # a job running (its answer held at Ollama), a client waiting for it, and two
        # acknowledged jobs queued behind it
        waiting: dict[str, httpx.Response] = {}

        async def wait_for_answer() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=120) as own:
                waiting["answer"] = await own.post("/api/chat", json=chat("in flight"))

        nursery.start_soon(wait_for_answer)
        await stub.wait_until(lambda: stub.inflight_inference == 1)
        queued = []
        for text in ("queued one", "queued two"):
            r = await client.post("/jobs", json={"endpoint": "/api/chat", "body": chat(text)})
            assert r.status_code == 202
            queued.append(r.json()["id"])

        filler = await trio.to_thread.run_sync(fill_disk, small_disk)

        ollama_shape = await client.post("/api/chat", json=chat("refused"))
        assert ollama_shape.status_code == 503
        assert ollama_shape.headers["retry-after"] == "30"
        assert "database cannot be written" in ollama_shape.json()["error"]
        assert "disk is full" in ollama_shape.json()["error"]
        openai_shape = await client.post(
            "/v1/chat/completions",
            json={"model": "llama3", "messages": [{"role": "user", "content": "refused"}]},
        )
        assert openai_shape.status_code == 503
        assert openai_shape.headers["retry-after"] == "30"
        assert "database cannot be written" in openai_shape.json()["error"]["message"]
        job_api = await client.post(
            "/jobs", json={"endpoint": "/api/chat", "body": chat("refused")}
        )
        assert job_api.status_code == 503
        assert "retry-after" in job_api.headers

        assert (await client.get("/health")).status_code == 200
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert "database is not writable: database or disk is full" in ready.json()["reasons"]
        assert (await client.get(f"/jobs/{queued[0]}")).json()["state"] == "queued"
        embed = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"})
        assert embed.status_code == 200

        # Ollama answers the running job; its end cannot be written: the worker waits
        stub.release()
        await wait_for(lambda: "waits until it can be written" in caplog.text)
        assert "answer" not in waiting
        assert "the worker crashed" not in caplog.text

        filler.unlink()  # the operator frees space
        await wait_for(lambda: "answer" in waiting, limit=60)
        assert waiting["answer"].status_code == 200
        await wait_for(lambda: all(r["state"] == "done" for r in job_rows(db)), limit=60)
        rows = await trio.to_thread.run_sync(job_rows, db)
        assert {r["id"] for r in rows} >= set(queued)
        assert len(rows) == 3  # the refused ones were never stored
        assert (await client.get("/ready")).status_code == 200
    # the job that was in flight when the disk filled ran once at Ollama
    served = [e.body["messages"][0]["content"] for e in stub.requests_of("chat")]
    assert served.count("in flight") == 1


async def test_a_deleted_database_file_shows_on_ready_and_refuses_new_jobs(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    assert (await client.get("/ready")).status_code == 200
    settings.db.unlink()
    ready = await client.get("/ready")
    assert ready.status_code == 503
    (reason,) = ready.json()["reasons"]
    assert reason.startswith("database is not writable: the database file was deleted")
    r = await client.post("/jobs", json={"endpoint": "/api/chat", "body": chat("lost?")})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "30"
    assert "deleted" in r.json()["error"]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "foreman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_start_on_a_full_disk_fails_with_one_line(small_disk: Path) -> None:
    db = small_disk / "foreman.db"
    # a job left running by a foreman that was killed; the restart meets a full disk
    conn = connect(db)
    store = SyncStore(conn)
    body = b'{"model":"llama3","prompt":"x","stream":false}'
    job = store.enqueue(NewJob(Endpoint.GENERATE, "llama3", "llama3:latest", body, False))
    store.transition(job.id, JobState.QUEUED, JobState.WORKING, attempts_delta=1)
    fill_disk(small_disk)
    try:
        # (the connection kept open keeps the write-ahead log, as a killed foreman leaves it)
        done = run_cli("serve", "--db", str(db), "--port", "0", "--ollama", "http://127.0.0.1:9")
    finally:
        conn.close()
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == (
        f"foreman: error: database {db} cannot be written: database or disk is full"
    )
    assert not any(line.startswith("foreman: error") for line in lines[:-1])


async def test_a_second_foreman_on_one_database_refuses_to_start(
    stub: StubOllama, tmp_path: Path
) -> None:
    db = tmp_path / "foreman.db"
    first: Process = foreman_process(db, stub.url, tmp_path / "first.log")
    await trio.to_thread.run_sync(first.start)
    try:
        assert first.popen is not None
        done = await trio.to_thread.run_sync(
            lambda: run_cli("serve", "--db", str(db), "--port", "0", "--ollama", stub.url)
        )
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"foreman: error: database {db} is in use by process ")
        assert f"process {first.popen.pid} " in lines[0]
        assert first.alive
    finally:
        await trio.to_thread.run_sync(first.terminate)
    # once the first is gone, a new one starts
    again = foreman_process(db, stub.url, tmp_path / "again.log")
    await trio.to_thread.run_sync(again.start)
    await trio.to_thread.run_sync(again.terminate)
