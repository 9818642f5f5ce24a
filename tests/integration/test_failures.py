"""Acceptance: transient failures are retried, permanent ones are not, outages cost nothing."""

from __future__ import annotations

import json

import httpx

from foreman.config import Settings
from foreman.stub import BUSY_MESSAGE, StubOllama

from .conftest import job_rows, wait_for


def chat(model: str, text: str, stream: bool = False) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


async def test_flapping_ollama_is_retried_until_success(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    stub.add_fault("reset", count=2, request_kind="chat")
    stub.add_fault("status", status=503, count=1, request_kind="chat")
    body = chat("llama3", "flaky")
    r = await client.post("/api/chat", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["message"]["content"] == stub.expected_text("/api/chat", body)
    chats = stub.requests_of("chat")
    assert [e.fault for e in chats][:3] == ["reset", "reset", "status"]
    assert len(chats) == 4
    (row,) = job_rows(settings.db)
    assert row["state"] == "done"
    assert row["attempts"] == 4


async def test_unknown_model_fails_at_once_with_ollamas_404(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    r = await client.post("/api/chat", json=chat("no-such-model", "hi"))
    assert r.status_code == 404
    assert r.json() == {"error": "model 'no-such-model' not found"}
    assert r.headers["x-foreman-job-id"]
    tried = [e for e in stub.requests if e.model == "no-such-model:latest"]
    assert len(tried) == 1
    (row,) = job_rows(settings.db)
    assert (row["state"], row["attempts"]) == ("failed", 1)
    assert "not found" in row["error"]


async def test_persistent_5xx_fails_after_max_attempts_with_last_answer(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    stub.add_fault("status", status=503, count=None, request_kind="chat")
    r = await client.post("/api/chat", json=chat("llama3", "never"))
    assert r.status_code == 503
    assert r.json() == {"error": BUSY_MESSAGE}
    assert len(stub.requests_of("chat")) == settings.max_attempts
    (row,) = job_rows(settings.db)
    assert (row["state"], row["attempts"]) == ("failed", settings.max_attempts)


async def test_stream_cut_before_any_byte_is_retried_transparently(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    stub.add_fault("cut", after=0, count=1, request_kind="chat")
    body = chat("llama3", "cut early", stream=True)
    async with client.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200
        lines = [json.loads(line) async for line in r.aiter_lines() if line]
    assert "".join(x["message"]["content"] for x in lines) == stub.expected_text("/api/chat", body)
    assert lines[-1]["done"] is True
    assert job_rows(settings.db)[0]["attempts"] == 2


async def test_stream_failure_after_bytes_ends_with_inband_error_and_no_retry(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    stub.add_fault("cut", after=3, count=1, request_kind="chat")
    async with client.stream("POST", "/api/chat", json=chat("llama3", "cut", True)) as r:
        assert r.status_code == 200
        lines = [json.loads(line) async for line in r.aiter_lines() if line]
    assert len(lines) == 4
    assert all("error" not in x for x in lines[:3])
    assert set(lines[3]) == {"error"}
    assert len(stub.requests_of("chat")) == 1
    (row,) = job_rows(settings.db)
    assert (row["state"], row["attempts"]) == ("failed", 1)


async def test_ollamas_own_midstream_error_is_relayed_and_fails_the_job(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    stub.add_fault("mid_error", after=2, count=1, request_kind="chat", message="runner died")
    async with client.stream("POST", "/api/chat", json=chat("llama3", "x", True)) as r:
        lines = [json.loads(line) async for line in r.aiter_lines() if line]
    assert lines[-1] == {"error": "runner died"}
    assert len(lines) == 3
    await wait_for(lambda: job_rows(settings.db)[0]["state"] == "failed")
    assert len(stub.requests_of("chat")) == 1
