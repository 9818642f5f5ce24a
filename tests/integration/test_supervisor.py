"""The worker crashing on a bug: logged, its job put back, the worker restarted."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from foreman.config import Settings
from foreman.stub import StubOllama
from foreman.worker import Worker

from .conftest import job_rows, wait_for


async def test_worker_crash_requeues_its_job_and_the_worker_restarts(
    client: httpx.AsyncClient,
    stub: StubOllama,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="foreman")
    real_call = Worker._call
    crashes: list[str] = []

    async def crash_once(self: Worker, job: Any, running: Any) -> None:
        if not crashes:
            crashes.append(job.id)
            raise RuntimeError("a bug in the worker")
        await real_call(self, job, running)

    monkeypatch.setattr(Worker, "_call", crash_once)
    body = {"model": "llama3", "messages": [{"role": "user", "content": "x"}], "stream": False}
    r = await client.post("/api/chat", json=body)
    assert r.status_code == 200
    assert r.json()["message"]["content"] == stub.expected_text("/api/chat", body)
    assert crashes == [r.headers["x-foreman-job-id"]]
    assert "the worker crashed" in caplog.text
    assert "put back in the queue after the worker crashed" in caplog.text
    (row,) = job_rows(settings.db)
    assert (row["state"], row["attempts"]) == ("done", 2)
    # the server kept serving throughout: a relayed route answers
    assert (await client.get("/api/version")).status_code == 200


async def test_a_crash_mid_stream_tells_the_client_and_the_job_runs_again(
    client: httpx.AsyncClient,
    stub: StubOllama,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client already reading a stream cannot be given a second copy of its answer:
    it gets an in-band error naming the job, and the job runs again for collection."""
    real_forward = Worker._forward_stream
    crashes: list[str] = []

    async def crash_after_two_parts(
        self: Worker, parts: Any, answer: Any, head: Any, running: Any
    ) -> Any:
        async def cut() -> Any:
            n = 0
            async for part in parts:
                yield part
                n += 1
                if n == 2 and not crashes:
                    crashes.append(running.job_id)
                    raise RuntimeError("a bug in the worker")

        return await real_forward(self, cut(), answer, head, running)

    monkeypatch.setattr(Worker, "_forward_stream", crash_after_two_parts)
    body = {"model": "llama3", "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with client.stream("POST", "/api/chat", json=body) as response:
        assert response.status_code == 200
        job_id = response.headers["x-foreman-job-id"]
        lines = [json.loads(line) async for line in response.aiter_lines() if line]
    assert crashes == [job_id]
    # the parts the client had, then the error, and nothing of the second run
    *parts, last = lines
    assert len(parts) == 2
    assert all("message" in part for part in parts)
    assert job_id in last["error"]
    assert "runs again" in last["error"]
    # the job ran again, whole, and its answer can be collected
    await wait_for(lambda: job_rows(settings.db)[0]["state"] == "done")
    collected = (await client.get(f"/jobs/{job_id}")).json()
    assert collected["result"]["message"]["content"] == stub.expected_text("/api/chat", body)
