"""The worker crashing on a bug: logged, its job put back, the worker restarted."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from foreman.config import Settings
from foreman.stub import StubOllama
from foreman.worker import Worker

from .conftest import job_rows


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
