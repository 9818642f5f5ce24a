"""Acceptance: limits. A full queue answers as a busy Ollama does, a huge body is 413,
and a hung Ollama cannot hold the worker past the job timeout."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs
import httpx
import ollama
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from foreman.config import Settings
from foreman.stub import StubOllama

from .conftest import job_rows, wait_for

BUSY = "server busy, please try again.  maximum pending requests exceeded"


def job(i: int) -> dict[str, Any]:
    return {"endpoint": "/api/generate", "body": {"model": "llama3", "prompt": f"note {i}"}}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return attrs.evolve(settings, max_queue=5, max_body=64 * 1024)


async def test_beyond_max_queue_new_jobs_get_ollamas_busy_503_and_foreman_keeps_serving(
    client: httpx.AsyncClient, stub: StubOllama, foreman: str, settings: Settings
) -> None:
    stub.hold()
    running = await client.post("/jobs", json=job(-1))
    assert running.status_code == 202
    await stub.wait_until(lambda: stub.inflight_inference == 1)

    answers: list[httpx.Response] = []

    async def submit(i: int) -> None:
        answers.append(await client.post("/jobs", json=job(i)))

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(submit, i)
    statuses = Counter(r.status_code for r in answers)
    assert statuses == {202: 5, 503: 15}
    for r in answers:
        if r.status_code == 503:
            assert r.json() == {"error": BUSY}
            assert int(r.headers["retry-after"]) > 0
    # every route family answers a full queue in its own shape
    chat = {"model": "llama3", "messages": [{"role": "user", "content": "x"}]}
    v1 = await client.post("/v1/chat/completions", json=chat)
    assert v1.status_code == 503
    assert v1.json()["error"]["message"] == BUSY
    async with ollama.AsyncClient(host=foreman) as official:
        with pytest.raises(ollama.ResponseError) as busy:
            await official.chat(**chat)
    assert busy.value.status_code == 503
    assert busy.value.error == BUSY
    # the server keeps serving what does not queue
    assert (await client.get("/api/tags")).status_code == 200
    assert (
        await client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"})
    ).is_success

    stub.release()
    await wait_for(lambda: [r["state"] for r in job_rows(settings.db)] == ["done"] * 6)
    # with room again, jobs are taken again
    assert (await client.post("/jobs", json=job(99))).status_code == 202
    scraped = (await client.get("/metrics")).text
    rejected = {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(scraped)
        for s in family.samples
        if s.name == "foreman_rejected_total"
    }
    assert rejected["queue_full"] == 17


async def test_a_body_over_max_body_is_413_in_the_families_shape(client: httpx.AsyncClient) -> None:
    huge = {"model": "llama3", "prompt": "x" * (70 * 1024)}
    r = await client.post("/api/generate", json=huge)
    assert r.status_code == 413
    assert "larger than 65536 bytes" in r.json()["error"]
    v1 = await client.post("/v1/completions", json=huge)
    assert v1.status_code == 413
    assert v1.json()["error"]["type"] == "invalid_request_error"
    assert (await client.get("/health")).status_code == 200


@pytest.fixture
def hung_settings(settings: Settings) -> Settings:
    return attrs.evolve(settings, job_timeout=0.3, max_attempts=2)


async def test_a_hung_ollama_cannot_hold_the_worker_past_the_job_timeout(
    nursery: trio.Nursery, hung_settings: Settings, stub: StubOllama
) -> None:
    from foreman.daemon import run

    url = await nursery.start(run, hung_settings)
    stub.hold()  # Ollama stops generating and never comes back
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        body = {"model": "llama3", "prompt": "stuck", "stream": False}
        r = await client.post("/api/generate", json=body)
        assert r.status_code == 502
        assert "job timeout" in r.json()["error"]
        (row,) = job_rows(hung_settings.db)
        assert (row["state"], row["attempts"]) == ("failed", 2)
        # each attempt's upstream request was closed, and the worker is free again
        await stub.wait_until(lambda: stub.inflight_inference == 0)
        stub.release()
        again = await client.post("/api/generate", json={**body, "prompt": "fine"})
        assert again.status_code == 200
        scraped = (await client.get("/metrics")).text
    timeouts = [
        s.value
        for family in text_string_to_metric_families(scraped)
        for s in family.samples
        if s.name == "foreman_upstream_errors_total" and s.labels["kind"] == "timeout"
    ]
    assert timeouts == [2.0]
