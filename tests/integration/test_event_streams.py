"""The job event streams over real sockets: the caps on open streams, and every change
reaching every stream that may see it, once and in order."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from foreman.config import Settings
from foreman.daemon import run
from foreman.stub import StubOllama

ADMIN = "admin-key-0123456789"
SVC = "service-key-0123456789"
BATCH = "batch-key-0123456789"


@pytest.fixture
def keyed_settings(tmp_path: Path, stub: StubOllama) -> Settings:
    keys = tmp_path / "keys"
    keys.write_text(f"ops {ADMIN} admin\nsvc {SVC} jobs\nbatch {BATCH} jobs\n")
    return Settings(
        ollama_url=stub.url,
        db=tmp_path / "foreman.db",
        port=0,
        api_keys_file=keys,
        max_streams=4,
        max_streams_per_key=2,
    )


@pytest.fixture
async def keyed(nursery: trio.Nursery, keyed_settings: Settings) -> str:
    url: str = await nursery.start(run, keyed_settings)
    return url


def client_for(url: str, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=60)


@asynccontextmanager
async def stream(client: httpx.AsyncClient, path: str) -> AsyncIterator[httpx.Response]:
    """An event stream held open until the block ends (its answer may be a refusal)."""
    async with client.stream("GET", path) as response:
        yield response


async def refusal(client: httpx.AsyncClient, path: str) -> httpx.Response:
    """The answer to opening a stream: a refusal read whole, or a stream closed at once."""
    async with stream(client, path) as response:
        if response.status_code != 200:
            await response.aread()
        return response


async def submit(client: httpx.AsyncClient, text: str) -> str:
    body = {"model": "llama3", "messages": [{"role": "user", "content": text}]}
    r = await client.post("/jobs", json={"endpoint": "/api/chat", "body": body})
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    return job_id


async def test_a_key_over_its_share_gets_429_and_foreman_over_its_total_503(keyed: str) -> None:
    async with (
        client_for(keyed, SVC) as svc,
        client_for(keyed, ADMIN) as admin,
        AsyncExitStack() as held,
    ):
        job = await submit(svc, "watched")
        # the dashboard's stream counts against the same caps as the job API's
        for client, path in ((svc, "/jobs/events"), (svc, "/queue/events")):
            opened = await held.enter_async_context(stream(client, path))
            assert opened.status_code == 200
        over_share = await refusal(svc, f"/jobs/{job}/events")
        assert over_share.status_code == 429
        assert "event streams" in over_share.json()["error"]
        assert int(over_share.headers["Retry-After"]) > 0
        for _ in range(2):
            opened = await held.enter_async_context(stream(admin, "/jobs/events"))
            assert opened.status_code == 200
        async with client_for(keyed, BATCH) as batch:
            full = await refusal(batch, "/jobs/events")
        assert full.status_code == 503
        assert "event streams" in full.json()["error"]
        assert int(full.headers["Retry-After"]) > 0
        # a refusal is counted
        metrics = (await admin.get("/metrics")).text
        assert 'foreman_rejected_total{reason="too_many_streams"} 2.0' in metrics


async def test_a_closed_stream_frees_its_place(keyed: str) -> None:
    async with client_for(keyed, SVC) as svc, client_for(keyed, BATCH) as batch:
        async with stream(svc, "/jobs/events") as first, stream(svc, "/jobs/events") as second:
            assert (first.status_code, second.status_code) == (200, 200)
            assert (await refusal(svc, "/jobs/events")).status_code == 429
        # the server hears the client leave a moment later
        with trio.fail_after(30):
            while (await refusal(svc, "/jobs/events")).status_code == 429:  # noqa: ASYNC110 - asks the server, which no trio event here announces
                await trio.sleep(0.02)
        # and a freed place is taken again: svc holds its share once more
        async with stream(svc, "/jobs/events") as first, stream(svc, "/jobs/events") as second:
            assert (first.status_code, second.status_code) == (200, 200)
            assert (await refusal(svc, "/jobs/events")).status_code == 429
            async with stream(batch, "/jobs/events") as other:
                assert other.status_code == 200


async def test_without_keys_only_the_total_caps_the_streams(
    nursery: trio.Nursery, settings: Settings
) -> None:
    url = await nursery.start(run, attrs.evolve(settings, max_streams=2))
    async with client_for(url, None) as client:
        async with stream(client, "/jobs/events") as a, stream(client, "/queue/events") as b:
            assert (a.status_code, b.status_code) == (200, 200)
            full = await refusal(client, "/jobs/events")
            assert full.status_code == 503
            assert "Retry-After" in full.headers
        with trio.fail_after(30):
            while (await refusal(client, "/jobs/events")).status_code == 503:  # noqa: ASYNC110 - asks the server, which no trio event here announces
                await trio.sleep(0.02)


async def test_every_stream_gets_each_change_it_may_see_once_and_in_order(keyed: str) -> None:
    heard: dict[str, list[tuple[str, str]]] = {"ops": [], "svc": [], "batch": []}
    keys = {"ops": ADMIN, "svc": SVC, "batch": BATCH}
    per_key = 6
    # how many jobs each stream sees end, and when it has seen them all
    ends = {"ops": 2 * per_key, "svc": per_key, "batch": per_key}
    heard_all = {name: trio.Event() for name in heard}

    async def listen(name: str, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with client_for(keyed, keys[name]) as client, stream(client, "/jobs/events") as r:
            assert r.status_code == 200
            lines = r.aiter_lines()
            # the first comment: every change from here on reaches this stream
            assert await anext(lines) == ": listening"
            task_status.started()
            async for line in lines:
                if line.startswith("data: "):
                    job = json.loads(line[6:])
                    heard[name].append((job["id"], job["state"]))
                    if sum(state == "done" for _, state in heard[name]) == ends[name]:
                        heard_all[name].set()

    async with (
        client_for(keyed, SVC) as svc,
        client_for(keyed, BATCH) as batch,
        trio.open_nursery() as nursery,
    ):
        for name in heard:
            await nursery.start(listen, name)
        owners: dict[str, str] = {}
        for i in range(per_key):
            owners[await submit(svc, f"s{i}")] = "svc"
            owners[await submit(batch, f"b{i}")] = "batch"
        for job_id, owner in owners.items():
            client = svc if owner == "svc" else batch
            r = await client.get(f"/jobs/{job_id}", params={"wait": 30})
            assert r.json()["state"] == "done"
        with trio.fail_after(30):
            for event in heard_all.values():
                await event.wait()
        nursery.cancel_scope.cancel()
    everything = heard["ops"]
    assert {job_id for job_id, _ in everything} == set(owners)
    for job_id in owners:
        states = [state for seen, state in everything if seen == job_id]
        # each change once: a job passes each state once, queued first and done last
        assert states[0] == "queued"
        assert states[-1] == "done"
        assert len(states) == len(set(states)), states
    for name in ("svc", "batch"):
        # a key sees only its own jobs: the same changes, in the same order, as the
        # admin's stream shows for them
        assert heard[name] == [(j, s) for j, s in everything if owners[j] == name]
