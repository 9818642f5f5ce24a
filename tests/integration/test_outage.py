"""Acceptance: jobs queued while Ollama is down wait for it; the outage spends no attempts."""

from __future__ import annotations

from functools import partial

import attrs
import httpx
import pytest
import trio

from foreman.config import Settings
from foreman.daemon import Control, run
from foreman.stub import StubOllama

from .conftest import job_rows, wait_for
from .test_failures import chat

# the probes are 0.25 s apart at first: a job that spent attempts on the outage (0.01 s
# backoff, 3 attempts) would have failed many times over by the second failed probe
FAILED_PROBES = 2
ENDED = ("done", "failed", "cancelled")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return attrs.evolve(settings, retry_backoff=0.01, max_attempts=3)


@pytest.fixture
def control() -> Control:
    return Control()


@pytest.fixture
async def foreman(nursery: trio.Nursery, settings: Settings, control: Control) -> str:
    url: str = await nursery.start(partial(run, settings, control=control))
    return url


async def test_jobs_wait_out_an_outage_longer_than_the_backoffs(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings, control: Control
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
        worker = control.worker
        assert worker is not None

        def outage_seen() -> bool:
            # a claim that meets the outage moves a job to loading for a moment and
            # back; a job that ended is what the test must not see
            ended = any(row["state"] in ENDED for row in job_rows(settings.db))
            return ended or worker.statistics().failed_probes >= FAILED_PROBES

        await wait_for(outage_seen)
        assert all(row["state"] == "queued" for row in job_rows(settings.db))
        await stub.start_listening()
    assert results == [200] * 4
    assert all(row["attempts"] == 1 for row in job_rows(settings.db))
