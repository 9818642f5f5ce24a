"""Acceptance: graceful shutdown. The running job may finish within the grace, new jobs
are refused meanwhile, waiting clients are let go with a clear answer, and nothing queued
is lost: it runs after the restart."""

from __future__ import annotations

import json
import signal
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from foreman.config import Settings
from foreman.daemon import Control, run
from foreman.stub import StubOllama
from foreman.testing import Process, foreman_process

from .conftest import job_rows, wait_for

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "busy"}], "stream": False}


def queued_job(i: int) -> dict[str, Any]:
    return {"endpoint": "/api/generate", "body": {"model": "mistral", "prompt": f"later {i}"}}


async def start_in_process(
    nursery: trio.Nursery, settings: Settings, control: Control, stopped: trio.Event
) -> str:
    async def serve(task_status: trio.TaskStatus[str]) -> None:
        await run(settings, control=control, task_status=task_status)
        stopped.set()

    url: str = await nursery.start(serve)
    return url


async def test_the_running_job_finishes_within_the_grace_and_new_jobs_are_refused(
    nursery: trio.Nursery, settings: Settings, stub: StubOllama
) -> None:
    control, stopped = Control(), trio.Event()
    url = await start_in_process(nursery, settings, control, stopped)
    answers: dict[str, httpx.Response] = {}
    stub.hold()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def ask(name: str, path: str, body: dict[str, Any]) -> None:
            answers[name] = await client.post(path, json=body)

        async with trio.open_nursery() as inner:
            inner.start_soon(ask, "running", "/api/chat", CHAT)
            await stub.wait_until(lambda: stub.inflight_inference == 1)
            inner.start_soon(ask, "waiting", "/api/generate", queued_job(0)["body"])
            await wait_for(lambda: len(job_rows(settings.db)) == 2)
            queued = await client.post("/jobs", json=queued_job(1))
            assert queued.status_code == 202

            control.request_stop()
            refused = await client.post("/jobs", json=queued_job(2))
            assert refused.status_code == 503
            assert "shutting down" in refused.json()["error"]
            assert refused.headers["retry-after"]
            assert (await client.get("/ready")).status_code == 503
            assert (await client.get("/health")).status_code == 200
            stub.release()
    with trio.fail_after(30):
        await stopped.wait()
    assert answers["running"].status_code == 200
    waiting = answers["waiting"]
    assert waiting.status_code == 503
    assert "stays queued" in waiting.json()["error"]
    rows = {r["id"]: r for r in job_rows(settings.db)}
    assert rows[answers["running"].headers["x-foreman-job-id"]]["state"] == "done"
    assert rows[waiting.headers["x-foreman-job-id"]]["state"] == "queued"
    assert [r["state"] for r in rows.values()].count("queued") == 2


async def test_when_the_grace_runs_out_the_running_job_goes_back_to_the_queue(
    nursery: trio.Nursery, settings: Settings, stub: StubOllama
) -> None:
    settings = attrs.evolve(settings, shutdown_grace=0.2)
    control, stopped = Control(), trio.Event()
    url = await start_in_process(nursery, settings, control, stopped)
    stub.hold()  # the job never finishes by itself
    answers: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def ask() -> None:
            answers.append(await client.post("/api/chat", json=CHAT))

        async with trio.open_nursery() as inner:
            inner.start_soon(ask)
            await stub.wait_until(lambda: stub.inflight_inference == 1)
            control.request_stop()
    # (the client's connection is closed first: the server waits a little for open ones)
    with trio.fail_after(30):
        await stopped.wait()
    (answer,) = answers
    assert answer.status_code == 503
    assert "back in the queue" in answer.json()["error"]
    (row,) = job_rows(settings.db)
    assert (row["state"], row["attempts"]) == ("queued", 0)
    # its upstream request was closed
    await stub.wait_until(lambda: stub.inflight_inference == 0)
    stub.release()


async def test_sigterm_lets_the_running_job_finish_exits_0_and_the_rest_run_after_restart(
    stub: StubOllama, tmp_path: Path
) -> None:
    db = tmp_path / "foreman.db"
    env_extra = ["--shutdown-grace", "60", "--log-format", "json"]
    first = foreman_process(db, stub.url, tmp_path / "first.log", *env_extra)
    url = await trio.to_thread.run_sync(first.start)
    stub.hold()
    answers: list[httpx.Response] = []
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def running() -> None:
                answers.append(await client.post("/api/chat", json=CHAT))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(running)
                await stub.wait_until(lambda: stub.inflight_inference == 1)
                for i in range(3):
                    r = await client.post("/jobs", json=queued_job(i))
                    assert r.status_code == 202
                started = trio.current_time()
                first.signal(signal.SIGTERM)
                await trio.to_thread.run_sync(partial(first.wait_for_output, "shutting down"))
                stub.release()
        code = await trio.to_thread.run_sync(first.wait)
        assert code == 0
        assert trio.current_time() - started < 60
        assert [a.status_code for a in answers] == [200]
        assert sorted(r["state"] for r in job_rows(db)) == ["done", "queued", "queued", "queued"]
        check_json_logs(first)

        second = foreman_process(db, stub.url, tmp_path / "second.log")
        await trio.to_thread.run_sync(second.start)
        try:
            await wait_for(lambda: all(r["state"] == "done" for r in job_rows(db)), limit=60)
        finally:
            assert await trio.to_thread.run_sync(second.terminate) == 0
    finally:
        stub.release()
        if first.alive:
            await trio.to_thread.run_sync(first.kill)
    done = [e.body["prompt"] for e in stub.requests_of("generate") if e.finished and e.body]
    assert sorted(p for p in done if p.startswith("later")) == ["later 0", "later 1", "later 2"]


def check_json_logs(proc: Process) -> None:
    """--log-format json: every line is a JSON object; lines about a job carry its id;
    the access log has a line per request with its status and duration."""
    records = [json.loads(line) for line in proc.output().decode().splitlines() if line]
    assert records
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    about_jobs = [r for r in records if r["message"].startswith("job ")]
    assert about_jobs
    assert all("job_id" in r for r in about_jobs)
    access = [r for r in records if r["logger"] == "foreman.access"]
    posts = [r for r in access if r["message"].startswith("POST /jobs HTTP/1.1 202")]
    assert len(posts) == 3
    assert all("ms client=" in r["message"] for r in posts)
