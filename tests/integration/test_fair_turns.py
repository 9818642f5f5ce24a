"""Acceptance: fair turns between API keys. Key A queues 200 jobs for one model, then
key B asks one synchronous question of the same model: B's answer comes after at most two
of A's jobs have run since B asked, not after A's whole backlog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.lowlevel

from foreman.config import Settings
from foreman.stub import StubOllama

from .conftest import job_rows, wait_for

BULK = "bulk-key-0123456789abc"
PERSON = "person-key-0123456789a"
HEAVY = "heavy-key-0123456789ab"

KEYS = f"""\
bulk    {BULK}    jobs,inference
person  {PERSON}  jobs,inference
heavy   {HEAVY}   jobs,inference  weight=3
"""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def job(prompt: str) -> dict[str, Any]:
    return {"endpoint": "/api/generate", "body": {"model": "llama3", "prompt": prompt}}


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    keys = tmp_path / "keys"
    keys.write_text(KEYS)
    return attrs.evolve(settings, api_keys_file=keys)


async def submit_all(client: httpx.AsyncClient, key: str, prompts: list[str]) -> None:
    async def one(prompt: str) -> None:
        answer = await client.post("/jobs", json=job(prompt), headers=bearer(key))
        assert answer.status_code == 202

    async with trio.open_nursery() as nursery:
        for chunk in range(0, len(prompts), 8):
            for prompt in prompts[chunk : chunk + 8]:
                nursery.start_soon(one, prompt)
            await trio.lowlevel.checkpoint()


def prompts_seen(stub: StubOllama) -> list[str]:
    return [e.body["prompt"] for e in stub.requests_of("generate")]


async def test_a_lone_question_waits_for_at_most_two_of_a_backlogs_jobs(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    stub.hold()
    await submit_all(client, BULK, [f"bulk {i}" for i in range(200)])
    # the worker holds one of the bulk jobs at the stub; the rest wait in the queue
    await wait_for(lambda: stub.inflight_inference == 1)
    started_before = len(prompts_seen(stub))
    answer: list[httpx.Response] = []

    async def ask() -> None:
        body = {"model": "llama3", "prompt": "person", "stream": False}
        answer.append(await client.post("/api/generate", json=body, headers=bearer(PERSON)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await wait_for(lambda: any(r["key_name"] == "person" for r in job_rows(settings.db)))
        stub.release()
    assert answer[0].status_code == 200
    assert answer[0].json()["response"] == stub.expected_text(
        "/api/generate", {"model": "llama3", "prompt": "person"}
    )
    seen = prompts_seen(stub)
    bulk_since = seen.index("person") - started_before
    # the one held when the person asked, and at most the one at the front of the turn
    assert bulk_since <= 2, seen[: seen.index("person") + 1]
    await wait_for(lambda: len(prompts_seen(stub)) == 201)


async def test_a_key_of_weight_three_gets_three_turns_for_each_of_another(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    stub.hold()
    await submit_all(client, BULK, [f"bulk {i}" for i in range(30)])
    await wait_for(lambda: stub.inflight_inference == 1)
    # the heavy key sends its jobs as one batch: a batch's jobs take turns the same way
    batch = {"jobs": [job(f"heavy {i}") for i in range(30)]}
    answer = await client.post("/jobs/batch", json=batch, headers=bearer(HEAVY))
    assert answer.status_code == 202
    stub.release()
    await wait_for(lambda: len(prompts_seen(stub)) == 60)
    order = [p.split()[0] for p in prompts_seen(stub)]
    # while both have jobs waiting, each window of four starts holds three heavy jobs
    both = order[1:33]
    assert both.count("heavy") == 24, order
    for i in range(0, 32, 4):
        assert both[i : i + 4].count("heavy") == 3, order
