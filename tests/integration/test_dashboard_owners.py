"""The dashboard's per-owner table over real sockets: each key's queued and running jobs
with its weight and cap, all of it for an admin, only its own row for any other key."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from foreman.config import Settings
from foreman.daemon import run
from foreman.stub import StubOllama

from .conftest import KEY_FILE_POLL
from .test_dashboard_api import client_for, overview, sse_events, submit

ADMIN = "admin-key-0123456789"
BULK = "bulk-key-0123456789"
PERSON = "person-key-0123456789"


@pytest.fixture
async def keyed(nursery: trio.Nursery, tmp_path: Path, stub: StubOllama) -> str:
    keys = tmp_path / "keys"
    keys.write_text(
        f"ops {ADMIN} admin\nbulk {BULK} jobs max_queued=50\nperson {PERSON} jobs weight=3\n"
    )
    settings = Settings(ollama_url=stub.url, db=tmp_path / "foreman.db", port=0, api_keys_file=keys)
    url: str = await nursery.start(functools.partial(run, settings, key_file_poll=KEY_FILE_POLL))
    return url


@pytest.fixture
async def clients(keyed: str) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    async with (
        client_for(keyed, ADMIN) as admin,
        client_for(keyed, BULK) as bulk,
        client_for(keyed, PERSON) as person,
    ):
        yield {"admin": admin, "bulk": bulk, "person": person}


def rows(summary: dict[str, Any]) -> dict[str | None, tuple[int, int, int | None, int | None]]:
    return {
        r["owner"]: (r["queued"], r["running"], r["weight"], r["max_queued"])
        for r in summary["owners"]
    }


async def test_an_admin_sees_every_owners_row_and_another_key_only_its_own(
    clients: dict[str, httpx.AsyncClient], stub: StubOllama
) -> None:
    stub.hold()
    await submit(clients["bulk"], "llama3", "runs")
    await stub.wait_until(lambda: stub.inflight_inference == 1)
    for i in range(3):
        await submit(clients["bulk"], "llama3", f"bulk {i}")
    for i in range(2):
        await submit(clients["person"], "llama3", f"person {i}")

    everyone = rows((await overview(clients["admin"]))["summary"])
    assert everyone == {
        "bulk": (3, 1, 1, 50),
        "ops": (0, 0, 1, None),
        "person": (2, 0, 3, None),
    }
    assert rows((await overview(clients["bulk"]))["summary"]) == {"bulk": (3, 1, 1, 50)}
    assert rows((await overview(clients["person"]))["summary"]) == {"person": (2, 0, 3, None)}

    # the stream's snapshot and summaries filter the same way, and follow the jobs
    async with (
        clients["person"].stream("GET", "/queue/events") as response,
        aclosing(sse_events(response)) as events,
    ):
        assert (await events.__anext__())[0] == "hello"
        kind, snapshot = await events.__anext__()
        assert kind == "snapshot"
        assert rows(snapshot["summary"]) == {"person": (2, 0, 3, None)}
        stub.release()
        with trio.fail_after(30):
            async for kind, data in events:
                if kind == "summary":
                    assert set(rows(data)) == {"person"}
                    if rows(data)["person"][:2] == (0, 0):
                        break
    # the admin's table empties too: every job ended
    final = rows((await overview(clients["admin"]))["summary"])
    assert {owner: counts[:2] for owner, counts in final.items()} == {
        "bulk": (0, 0),
        "ops": (0, 0),
        "person": (0, 0),
    }


async def test_the_summary_places_the_newest_queued_jobs_each_key_seeing_its_own(
    clients: dict[str, httpx.AsyncClient], stub: StubOllama
) -> None:
    stub.hold()
    await submit(clients["bulk"], "llama3", "runs")
    await stub.wait_until(lambda: stub.inflight_inference == 1)
    bulk = [await submit(clients["bulk"], "llama3", f"bulk {i}") for i in range(3)]
    person = await submit(clients["person"], "llama3", "person")

    places = (await overview(clients["admin"]))["summary"]["places"]
    # the person's job takes its turn after the bulk key's front job
    assert {job_id: p["position"] for job_id, p in places.items()} == {
        bulk[0]: 0,
        person: 1,
        bulk[1]: 2,
        bulk[2]: 3,
    }
    # nothing measured yet: no estimate
    assert {p["estimated_start"] for p in places.values()} == {None}
    assert set((await overview(clients["person"]))["summary"]["places"]) == {person}
    assert set((await overview(clients["bulk"]))["summary"]["places"]) == set(bulk)
    stub.release()
