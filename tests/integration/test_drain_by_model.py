"""Acceptance: one job at a time at Ollama, drained by model, in arrival order within it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import trio

from foreman.config import Settings
from foreman.stub import StubOllama

from .conftest import job_rows, wait_for


def chat(model: str, text: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": False}


async def test_concurrent_chats_over_several_models_never_overlap_at_ollama(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    statuses: list[int] = []

    async def one(i: int) -> None:
        r = await client.post("/api/chat", json=chat(["llama3", "mistral", "phi3"][i % 3], str(i)))
        statuses.append(r.status_code)

    async with trio.open_nursery() as nursery:
        for i in range(12):
            nursery.start_soon(one, i)
    assert statuses == [200] * 12
    assert len(stub.requests_of("chat")) == 12
    assert stub.max_inflight_inference == 1


async def test_queue_drains_resident_model_first_then_by_age(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    """Model A loaded; B A B A C B A arrive: A A A run, then B B B, then C: two swaps."""

    async def post(body: dict[str, object]) -> None:
        r = await client.post("/api/chat", json=body)
        assert r.status_code == 200, r.text

    stub.hold()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(post, chat("llama3", "first"))
        await stub.wait_until(lambda: stub.inflight_inference == 1)
        arrivals = ["mistral", "llama3", "mistral", "llama3", "phi3", "mistral", "llama3"]
        for i, model in enumerate(arrivals):
            nursery.start_soon(post, chat(model, f"job {i}"))
            await wait_for(_queued_count_is(settings.db, i + 1))
        stub.release()
    ran = [e.model for e in stub.requests_of("chat")]
    assert ran == ["llama3:latest"] * 4 + ["mistral:latest"] * 3 + ["phi3:latest"]
    assert [e.model for e in stub.requests_of("load")] == [
        "llama3:latest",
        "mistral:latest",
        "phi3:latest",
    ]
    # within a model, arrival order
    prompts = [e.body["messages"][0]["content"] for e in stub.requests_of("chat")]
    assert prompts == ["first", "job 1", "job 3", "job 6", "job 0", "job 2", "job 5", "job 4"]
    # every swap unloaded the previous chat model before loading the next
    kinds = [e.kind for e in stub.requests if e.kind in ("load", "unload")]
    assert kinds == ["load", "unload", "load", "unload", "load"]


def _queued(db: Path) -> int:
    return sum(1 for row in job_rows(db) if row["state"] == "queued")


def _queued_count_is(db: Path, count: int) -> Callable[[], bool]:
    return lambda: _queued(db) == count
