"""Deadlines and the janitor: jobs that could not start in time, finished jobs aging out."""

from __future__ import annotations

import attrs
import httpx
import pytest

from foreman.config import Settings
from foreman.stub import StubOllama

from .conftest import job_rows, wait_for
from .test_jobs_api import chat_job, submit


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return attrs.evolve(settings, retention=1.0)


async def test_deadline_expires_a_job_that_could_not_start_and_janitor_purges(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    stub.hold()
    running = await submit(client, chat_job("llama3", "busy"))
    await stub.wait_until(lambda: stub.inflight_inference == 1)
    late = await submit(client, chat_job("llama3", "late", deadline=0.2))
    expired = (await client.get(f"/jobs/{late['id']}", params={"wait": 30})).json()
    assert expired["state"] == "failed"
    assert "expired" in expired["error"]
    stub.release()
    await client.get(f"/jobs/{running['id']}", params={"wait": 30})
    assert [e.body["messages"][0]["content"] for e in stub.requests_of("chat")] == ["busy"]
    # retention is 1 s here: the janitor removes both finished jobs on its own
    await wait_for(lambda: job_rows(settings.db) == [], limit=30)
