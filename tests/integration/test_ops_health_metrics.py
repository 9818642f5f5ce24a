"""Acceptance: /health, /ready and /metrics."""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from foreman.stub import StubOllama


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus-client's own parser."""
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sum over every series of `name` that has `labels` (as PromQL's sum would):
    the families counted per upstream, taken over the whole fleet."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= set(have))


async def test_health_is_always_200_and_ready_follows_ollama(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    stub.stop_listening()
    down = await client.get("/ready")
    assert down.status_code == 503
    assert down.json()["reasons"] == ["ollama is unreachable"]
    assert (await client.get("/health")).status_code == 200
    await stub.start_listening()
    assert (await client.get("/ready")).status_code == 200


async def test_metrics_parse_and_move_as_jobs_run(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    before = await scrape(client)
    assert total(before, "foreman_jobs_finished_total", outcome="done") == 0
    assert value(before, "foreman_sync_waiters") == 0

    stub.hold()
    chat = {"model": "llama3", "messages": [{"role": "user", "content": "x"}], "stream": False}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(client.post, "/api/chat", json=chat))
        await stub.wait_until(lambda: stub.inflight_inference == 1)
        for prompt in ("a", "b"):
            body = {"model": "mistral", "prompt": prompt}
            r = await client.post("/jobs", json={"endpoint": "/api/generate", "body": body})
            assert r.status_code == 202
        during = await scrape(client)
        assert value(during, "foreman_sync_waiters") == 1
        assert value(during, "foreman_jobs", state="queued", model="mistral:latest") == 2
        working = value(during, "foreman_jobs", state="working", model="llama3:latest")
        loading = value(during, "foreman_jobs", state="loading", model="llama3:latest")
        assert working + loading == 1
        assert value(during, "foreman_ollama_up") == 1
        stub.release()
    await client.get(f"/jobs/{r.json()['id']}?wait=30")
    embed = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": ["a"]})
    assert embed.status_code == 200

    after = await scrape(client)
    assert total(after, "foreman_jobs_finished_total", outcome="done") == 3
    assert value(after, "foreman_queue_wait_seconds_count") == 3
    assert value(after, "foreman_run_seconds_count") == 3
    assert total(after, "foreman_swaps_total") == 2  # llama3, then mistral
    assert total(after, "foreman_load_seconds_count") == 2
    assert value(after, "foreman_jobs", state="queued", model="mistral:latest") == 0
    assert total(after, "foreman_resident_model", model="mistral:latest") == 1
    assert value(after, "foreman_embeddings_total", route="/api/embed", status="2xx") == 1
    assert value(after, "foreman_embedding_seconds_count", route="/api/embed") == 1
    assert value(after, "foreman_sync_waiters") == 0
    assert value(after, "foreman_accepting_jobs") == 1
