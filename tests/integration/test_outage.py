"""Acceptance: jobs queued while Ollama is down wait for it; the outage spends no attempts."""

from __future__ import annotations

import attrs
import httpx
import pytest
import trio

from foreman.config import Settings
from foreman.stub import StubOllama

from .conftest import job_rows, wait_for
from .test_failures import chat


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return attrs.evolve(settings, retry_backoff=0.01, max_attempts=3)


async def test_jobs_wait_out_an_outage_longer_than_the_backoffs(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    stub.stop_listening()
    results: list[int] = []

    async def one(i: int) -> None:
        r = await client.post("/api/chat", json=chat(["llama3", "mistral"][i % 2], f"{i}"))
        results.append(r.status_code)

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(one, i)
        await wait_for(lambda: len(job_rows(settings.db)) == 4)
        # The length of the simulated outage: with backoff 0.01 s and 3 attempts, a job
        # that spent attempts on the outage would fail within a fraction of this.
        await trio.sleep(1.5)
        assert all(row["state"] == "queued" for row in job_rows(settings.db))
        await stub.start_listening()
    assert results == [200] * 4
    assert all(row["attempts"] == 1 for row in job_rows(settings.db))
