"""Acceptance: with two upstreams, each job names the upstream that ran it, and the
dashboard's summary and /metrics show each upstream on its own."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from foreman.cli import main
from foreman.config import Settings
from foreman.daemon import run
from foreman.stub import StubConfig, StubOllama
from foreman.upstream_specs import default_name

from .conftest import KEY_FILE_POLL

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def second_stub(nursery: trio.Nursery) -> StubOllama:
    server = StubOllama(StubConfig())
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def fleet(
    nursery: trio.Nursery, tmp_path: Path, stub: StubOllama, second_stub: StubOllama
) -> str:
    """foreman in front of two stub Ollamas (one slot each)."""
    settings = Settings(
        ollama_url=f"{stub.url},{second_stub.url}",
        db=tmp_path / "fleet.db",
        port=0,
        retry_backoff=0.05,
    )
    url: str = await nursery.start(partial(run, settings, key_file_poll=KEY_FILE_POLL))
    return url


async def scrape(client: httpx.AsyncClient) -> Samples:
    r = await client.get("/metrics")
    assert r.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def until(check: Callable[[], Any]) -> Any:
    """Poll `check` (an async callable) until it returns something true; a generous
    deadline, never a fixed sleep."""
    with trio.fail_after(30):
        while True:
            found = await check()
            if found:
                return found
            await trio.sleep(0.02)


def ran_at(stub: StubOllama, model: str) -> bool:
    return any(
        e.path == "/api/chat" and (e.model or "").partition(":")[0] == model for e in stub.requests
    )


async def test_each_job_names_the_upstream_that_ran_it_and_metrics_show_both(
    fleet: str, stub: StubOllama, second_stub: StubOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [default_name(stub.url), default_name(second_stub.url)]
    stub.hold()
    second_stub.hold()
    async with httpx.AsyncClient(base_url=fleet, timeout=60) as client:
        ids = {}
        for model in ("llama3", "mistral"):
            body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
            r = await client.post("/jobs", json={"endpoint": "/api/chat", "body": body})
            assert r.status_code == 202, r.text
            ids[model] = r.json()["id"]
        # each idle upstream loads a model loaded nowhere: one job runs on each
        with trio.fail_after(30):
            await stub.wait_until(lambda: stub.inflight_inference == 1)
            await second_stub.wait_until(lambda: second_stub.inflight_inference == 1)

        async def both_lanes_busy() -> dict[str, Any] | None:
            summary: dict[str, Any] = (await client.get("/queue")).json()["summary"]
            lanes = summary["upstreams"]
            busy = all(lane["in_use"] == 1 and lane["running"] for lane in lanes)
            return summary if busy else None

        summary = await until(both_lanes_busy)
        lanes = summary["upstreams"]
        assert [lane["name"] for lane in lanes] == names
        assert [(lane["slots"], lane["online"]) for lane in lanes] == [(1, True), (1, True)]
        for lane in lanes:
            (job,) = lane["running"]
            assert job["upstream"] == lane["name"]
            assert lane["chat"]["model"] == job["model"]

        during = await scrape(client)
        for name in names:
            assert value(during, "foreman_ollama_up", upstream=name) == 1
            assert value(during, "foreman_upstream_slots", upstream=name) == 1
            assert value(during, "foreman_upstream_running", upstream=name) == 1
        assert value(during, "foreman_ollama_up") == 1

        stub.release()
        second_stub.release()
        jobs = {}
        for model, job_id in ids.items():
            r = await client.get(f"/jobs/{job_id}", params={"wait": 30})
            jobs[model] = r.json()
            assert jobs[model]["state"] == "done"
        # the upstream a job names is the one whose Ollama answered it
        for model, job in jobs.items():
            (where,) = [
                n for n, s in zip(names, (stub, second_stub), strict=True) if ran_at(s, model)
            ]
            assert job["upstream"] == where

        after = await scrape(client)
        for model, job in jobs.items():
            name = job["upstream"]
            assert value(after, "foreman_jobs_finished_total", outcome="done", upstream=name) == 1
            assert value(after, "foreman_swaps_total", upstream=name) == 1
            assert value(after, "foreman_load_seconds_count", upstream=name) == 1
            resident = value(
                after, "foreman_resident_model", upstream=name, model=f"{model}:latest"
            )
            assert resident == 1
        swaps = (await client.get("/queue")).json()["summary"]["swaps"]
        assert sorted((s["upstream"], s["model"]) for s in swaps) == sorted(
            (job["upstream"], f"{model}:latest") for model, job in jobs.items()
        )

    code = await trio.to_thread.run_sync(main, ["jobs", "--url", fleet, "ls"])
    out = capsys.readouterr().out
    assert code == 0
    header, *rows = out.splitlines()
    at = header.index("UPSTREAM")
    shown = {row.split()[0]: row[at:].split()[0] for row in rows}
    assert shown == {job["id"]: job["upstream"] for job in jobs.values()}
