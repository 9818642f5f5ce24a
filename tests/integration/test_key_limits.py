"""Acceptance: a key's `max_queued`. Beyond it a submission gets 429 with Retry-After in
its route family's shape, nothing is stored for it, other keys carry on, and room comes
back as the key's jobs finish."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from foreman.config import Settings
from foreman.stub import StubOllama

from .conftest import job_rows, wait_for

CAPPED = "capped-key-0123456789"
FREE = "free-key-0123456789ab"

KEYS = f"""\
capped  {CAPPED}  jobs,inference  max_queued=2
free    {FREE}    jobs,inference
"""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def job(i: int) -> dict[str, Any]:
    return {"endpoint": "/api/generate", "body": {"model": "llama3", "prompt": f"note {i}"}}


CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    keys = tmp_path / "keys"
    keys.write_text(KEYS)
    return attrs.evolve(settings, api_keys_file=keys)


async def test_beyond_its_max_queued_a_key_gets_429_in_each_familys_shape(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    stub.hold()
    answers: list[httpx.Response] = []

    async def submit(i: int) -> None:
        answers.append(await client.post("/jobs", json=job(i), headers=bearer(CAPPED)))

    # concurrent submissions cannot overshoot the limit
    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(submit, i)
    assert Counter(r.status_code for r in answers) == {202: 2, 429: 4}
    refused = next(r for r in answers if r.status_code == 429)
    assert set(refused.json()) == {"error"}
    assert "max_queued=2" in refused.json()["error"]
    assert int(refused.headers["retry-after"]) > 0

    native = await client.post("/api/chat", json=CHAT, headers=bearer(CAPPED))
    assert native.status_code == 429
    assert set(native.json()) == {"error"}
    assert int(native.headers["retry-after"]) > 0
    v1 = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(CAPPED))
    assert v1.status_code == 429
    assert "max_queued=2" in v1.json()["error"]["message"]
    assert int(v1.headers["retry-after"]) > 0
    # nothing was stored for a refused request
    assert len(job_rows(settings.db)) == 2

    # another key is not held back by this one's cap
    assert (await client.post("/jobs", json=job(10), headers=bearer(FREE))).status_code == 202

    stub.release()
    await wait_for(lambda: all(r["state"] == "done" for r in job_rows(settings.db)))
    # the key's jobs finished: it has room again
    assert (await client.post("/jobs", json=job(11), headers=bearer(CAPPED))).status_code == 202
