"""Acceptance: where a queued job stands. Its `position` counts down to 0 as the jobs
ahead of it finish, its `estimated_start` lands within a quarter of the wait on a stub
with steady job times, and its event stream sends `position` events as it moves."""

from __future__ import annotations

import time
from contextlib import aclosing
from datetime import datetime
from typing import Any

import httpx
import pytest
import trio

from foreman.stub import StubConfig, StubOllama

from .conftest import wait_for
from .test_dashboard_api import sse_events

# 8 tokens 50 ms apart: every job takes about 0.4 s at the stub
TOKEN_DELAY = 0.05


@pytest.fixture
def stub_config() -> StubConfig:
    return StubConfig(token_delay=TOKEN_DELAY)


def job(prompt: str, model: str = "llama3") -> dict[str, Any]:
    return {"endpoint": "/api/generate", "body": {"model": model, "prompt": prompt}}


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def submit(client: httpx.AsyncClient, prompt: str, model: str = "llama3") -> str:
    answer = await client.post("/jobs", json=job(prompt, model))
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


async def warm_up(client: httpx.AsyncClient, model: str = "llama3") -> None:
    """Run a few jobs of the model, so foreman has measured how long one takes."""
    for i in range(3):
        body = {"model": model, "prompt": f"warm {i}", "stream": False}
        assert (await client.post("/api/generate", json=body)).status_code == 200


async def test_the_position_counts_down_and_the_estimate_holds(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    await warm_up(client)
    ids = [await submit(client, f"queued {i}") for i in range(6)]
    last = ids[-1]
    asked_at = time.time()
    first = (await client.get(f"/jobs/{last}")).json()
    assert first["state"] == "queued"
    # the five ahead of it, less any that started meanwhile
    assert 3 <= first["position"] <= 5
    assert first["estimated_start"] is not None
    estimate = seconds(first["estimated_start"])

    positions = [first["position"]]
    with trio.fail_after(60):
        while True:
            view = (await client.get(f"/jobs/{last}")).json()
            if view["state"] != "queued":
                break
            positions.append(view["position"])
            await trio.sleep(0.02)
    assert view["position"] is None
    assert view["estimated_start"] is None
    assert positions == sorted(positions, reverse=True)
    assert positions[-1] == 0

    done = (await client.get(f"/jobs/{last}", params={"wait": 30})).json()
    started = seconds(done["started_at"])
    assert abs(estimate - started) <= 0.25 * (started - asked_at), (estimate, started, asked_at)


async def test_without_measurements_there_is_a_position_and_no_estimate(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    stub.hold()
    ids = [await submit(client, f"cold {i}", "mistral") for i in range(3)]
    await wait_for(lambda: stub.inflight_inference == 1)
    view = (await client.get(f"/jobs/{ids[-1]}")).json()
    assert view["position"] == 1
    assert view["estimated_start"] is None
    stub.release()


async def test_the_jobs_stream_sends_its_position_as_it_moves(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    await warm_up(client)
    stub.hold()
    ids = [await submit(client, f"queued {i}") for i in range(5)]
    await wait_for(lambda: stub.inflight_inference == 1)
    last = ids[-1]
    seen: list[tuple[str, Any]] = []
    async with (
        client.stream("GET", f"/jobs/{last}/events") as events,
        aclosing(sse_events(events)) as stream,
    ):
        async for kind, data in stream:
            seen.append((kind, data))
            if kind == "position" and len([k for k, _ in seen if k == "position"]) == 1:
                assert data["id"] == last
                assert data["position"] == 3
                assert data["estimated_start"] is not None
                stub.release()
            if kind == "job" and data["state"] == "done":
                break
    kinds = [k for k, _ in seen]
    assert kinds[0] == "job"
    positions = [d["position"] for k, d in seen if k == "position"]
    assert positions == sorted(positions, reverse=True)
    assert len(positions) == len(set(positions))
    # no position event once the job has left the queue
    first_start = next(i for i, (k, d) in enumerate(seen) if k == "job" and d["state"] != "queued")
    assert "position" not in kinds[first_start:]
