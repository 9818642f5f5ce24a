"""Acceptance: a job for a model Ollama does not have fails with Ollama's own 404 and the
loaded model stays loaded, so the next real request runs with no reload."""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from foreman.config import Settings
from foreman.stub import StubOllama

from .conftest import job_rows

MISSING = "no-such-model"
MESSAGES = [{"role": "user", "content": "hi"}]

ROUTES: dict[str, dict[str, Any]] = {
    "/api/chat": {"messages": MESSAGES, "stream": False},
    "/api/generate": {"prompt": "hi", "stream": False},
    "/v1/chat/completions": {"messages": MESSAGES},
}


async def resident_gauge(client: httpx.AsyncClient) -> dict[str, float]:
    """foreman's idea of the resident chat model, as /metrics shows it."""
    r = await client.get("/metrics")
    assert r.status_code == 200
    return {
        s.labels["model"]: s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
        if s.name == "foreman_resident_model"
    }


async def loaded_at_ollama(stub: StubOllama) -> list[str]:
    async with httpx.AsyncClient(base_url=stub.url) as ollama:
        r = await ollama.get("/api/ps")
    return [m["name"] for m in r.json()["models"]]


async def ollamas_own_answer(stub: StubOllama, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stub.url) as ollama:
        return await ollama.post(path, json=body)


@pytest.mark.parametrize("path", list(ROUTES))
async def test_unknown_model_fails_with_ollamas_404_and_keeps_the_loaded_model(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings, path: str
) -> None:
    post = partial(client.post, path)
    first = await post(json={"model": "llama3", **ROUTES[path]})
    assert first.status_code == 200, first.text
    assert await loaded_at_ollama(stub) == ["llama3:latest"]
    loads = len(stub.requests_of("load"))

    missing = await post(json={"model": MISSING, **ROUTES[path]})

    # Ollama's own answer on that route: its status, its text, its route's shape
    own = await ollamas_own_answer(stub, path, {"model": MISSING, **ROUTES[path]})
    assert own.status_code == 404
    assert (missing.status_code, missing.json()) == (404, own.json())
    assert missing.headers["content-type"].startswith("application/json")
    assert missing.headers["x-foreman-job-id"]
    # nothing was unloaded or loaded: the model stays at Ollama and in foreman's mind
    assert stub.requests_of("unload") == []
    assert len(stub.requests_of("load")) == loads
    assert await loaded_at_ollama(stub) == ["llama3:latest"]
    assert await resident_gauge(client) == {"llama3:latest": 1.0}
    failed = [row for row in job_rows(settings.db) if row["model"] == MISSING]
    assert [(row["state"], row["attempts"]) for row in failed] == [("failed", 1)]
    assert "not found" in failed[0]["error"]

    # the next job for the loaded model runs at once, with no load
    again = await post(json={"model": "llama3", **ROUTES[path]})
    assert again.status_code == 200, again.text
    assert len(stub.requests_of("load")) == loads
    assert stub.requests_of("unload") == []


async def test_a_failed_check_falls_back_to_the_swap(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    """Only Ollama's 404 stops a swap: if asking about the model fails otherwise, the
    swap goes on as it would have without the check."""
    first = await client.post("/api/chat", json={"model": "llama3", "messages": MESSAGES})
    assert first.status_code == 200, first.text
    stub.add_fault("status", status=500, count=1, request_kind="show")
    body = {"model": "mistral", "messages": MESSAGES, "stream": False}
    r = await client.post("/api/chat", json=body)
    assert r.status_code == 200, r.text
    assert [e.fault for e in stub.requests_of("show")][-1:] == ["status"]
    assert [e.model for e in stub.requests_of("unload")] == ["llama3:latest"]
    assert await loaded_at_ollama(stub) == ["mistral:latest"]
    assert await resident_gauge(client) == {"mistral:latest": 1.0}
