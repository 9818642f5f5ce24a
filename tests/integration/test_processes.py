"""Acceptance over real processes: kill -9 and restart, the command line, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio

from foreman.stub import StubOllama
from foreman.testing import Process, foreman_process

from .conftest import job_rows, wait_for

pytestmark = pytest.mark.slow


async def start(proc: Process) -> str:
    return await trio.to_thread.run_sync(proc.start)


async def test_kill_9_mid_queue_then_restart_completes_every_job(
    stub: StubOllama, tmp_path: Path
) -> None:
    db = tmp_path / "foreman.db"
    first = foreman_process(db, stub.url, tmp_path / "first.log")
    url = await start(first)
    stub.hold()
    prompts = [f"memo {i}" for i in range(6)]
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def send(i: int) -> None:
                body = {
                    "model": ["llama3", "mistral"][i % 2],
                    "messages": [{"role": "user", "content": prompts[i]}],
                }
                try:
                    async with client.stream("POST", "/api/chat", json=body) as r:
                        async for _ in r.aiter_bytes():
                            pass
                except httpx.HTTPError:
                    pass  # foreman is killed under us: expected

            async with trio.open_nursery() as nursery:
                for i in range(len(prompts)):
                    nursery.start_soon(send, i)
                await stub.wait_until(lambda: stub.inflight_inference == 1)
                await wait_for(lambda: len(job_rows(db)) == len(prompts))
                await trio.to_thread.run_sync(first.kill)
        assert first.popen is not None
        assert first.popen.returncode == -signal.SIGKILL
        states = Counter(row["state"] for row in job_rows(db))
        assert states["queued"] == len(prompts) - 1
        assert states["loading"] + states["working"] == 1
        (in_flight,) = stub.requests_of("chat")
        await stub.wait_until(lambda: in_flight.finished)
        stub.release()

        second = foreman_process(db, stub.url, tmp_path / "second.log")
        await start(second)
        try:
            await wait_for(lambda: all(r["state"] == "done" for r in job_rows(db)), limit=60)
        finally:
            await trio.to_thread.run_sync(second.terminate)
        assert b"interrupted by a restart" in second.output()
    finally:
        stub.release()
        if first.alive:
            await trio.to_thread.run_sync(first.kill)

    served = Counter(e.body["messages"][0]["content"] for e in stub.requests_of("chat"))
    completed = Counter(
        e.body["messages"][0]["content"]
        for e in stub.requests_of("chat")
        if e.finished and not e.cancelled
    )
    assert set(completed) == set(prompts)
    assert all(n == 1 for n in completed.values())
    twice = [p for p, n in served.items() if n > 1]
    assert twice == [in_flight.body["messages"][0]["content"]] or twice == []
    for row in job_rows(db):
        body = json.loads(row["body"])
        result = json.loads(row["result"])
        assert result["message"]["content"] == stub.expected_text("/api/chat", body)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "foreman", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_bad_configuration_fails_at_start_with_one_clear_line(tmp_path: Path) -> None:
    cases = [
        (["serve", "--port", "99999"], {}, "--port='99999': must be between 0 and 65535"),
        (["serve", "--ollama", "localhost:11434"], {}, "--ollama='localhost:11434': must be"),
        (["serve"], {"FOREMAN_MAX_WAIT": "soon"}, "FOREMAN_MAX_WAIT='soon': must be a number"),
        (["serve"], {"FOREMAN_KEEP_ALIVE": "300"}, None),
        (["serve"], {"FOREMAN_KEEP_ALIVE": "5 minutes"}, "FOREMAN_KEEP_ALIVE='5 minutes'"),
        (["serve", "--max-attempts", "0"], {}, "--max-attempts='0': must be a positive"),
    ]
    for args, env, expected in cases:
        if expected is None:
            continue
        done = run_cli(*args, "--db", str(tmp_path / "x.db"), env=env)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("foreman: error: ")
        assert expected in lines[0]


def test_flag_wins_over_environment(tmp_path: Path) -> None:
    done = run_cli(
        "serve", "--port", "70000", "--db", str(tmp_path / "x.db"), env={"FOREMAN_PORT": "1"}
    )
    assert "--port='70000'" in done.stderr


def test_unusable_database_fails_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = run_cli("serve", "--db", str(blocker / "foreman.db"), "--port", "0")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("foreman: error: cannot open database")
    assert "Traceback" not in done.stderr


async def test_sigterm_stops_foreman_cleanly_and_keeps_its_jobs(
    stub: StubOllama, tmp_path: Path
) -> None:
    db = tmp_path / "foreman.db"
    proc = foreman_process(db, stub.url, tmp_path / "foreman.log")
    url = await start(proc)
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.post(
            "/api/generate", json={"model": "llama3", "prompt": "hi", "stream": False}
        )
        assert r.status_code == 200
    code = await trio.to_thread.run_sync(proc.terminate)
    assert code == 0
    assert b"Traceback" not in proc.output()
    assert [row["state"] for row in job_rows(db)] == ["done"]


def test_python_dash_m_and_stub_subcommand_answer_help() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    assert "serve" in top.stdout
    assert "stub" in top.stdout
    stub_help = run_cli("stub", "--help")
    assert stub_help.returncode == 0
    assert "--load-delay" in stub_help.stdout


async def test_jobs_submitted_to_the_job_api_survive_kill_9(
    stub: StubOllama, tmp_path: Path
) -> None:
    db = tmp_path / "foreman.db"
    first = foreman_process(db, stub.url, tmp_path / "first.log")
    url = await start(first)
    stub.hold()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            ids = []
            for i in range(20):
                body = {"model": ["llama3", "mistral"][i % 2], "prompt": f"note {i}"}
                r = await client.post("/jobs", json={"endpoint": "/api/generate", "body": body})
                assert r.status_code == 202
                ids.append(r.json()["id"])
        await stub.wait_until(lambda: stub.inflight_inference == 1)
        await trio.to_thread.run_sync(first.kill)
        stub.release()
        second = foreman_process(db, stub.url, tmp_path / "second.log")
        url = await start(second)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                for job_id in ids:
                    job = (await client.get(f"/jobs/{job_id}", params={"wait": 60})).json()
                    assert job["state"] == "done"
                    assert job["result"]["response"] == stub.expected_text(
                        "/api/generate", {"model": job["model"], "prompt": _prompt(job, db)}
                    )
        finally:
            await trio.to_thread.run_sync(second.terminate)
    finally:
        stub.release()
        if first.alive:
            await trio.to_thread.run_sync(first.kill)
    completed = Counter(
        e.body["prompt"] for e in stub.requests_of("generate") if e.finished and not e.cancelled
    )
    assert sorted(completed.values()) == [1] * 20


def _prompt(job: dict[str, object], db: Path) -> str:
    (row,) = [r for r in job_rows(db) if r["id"] == job["id"]]
    return str(json.loads(row["body"])["prompt"])
