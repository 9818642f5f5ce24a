"""The worker's jobs over the lean client, end to end: each upstream's worker has its own
lean pool, sized by its slots, and its jobs (streamed or not) go through it with the
request httpx would have sent."""

from __future__ import annotations

import json

import httpx
import pytest

from foreman.daemon import Control
from foreman.stub import StubConfig, StubOllama
from foreman.upstream import worker_connections


@pytest.mark.parametrize("fleet_configs", [(StubConfig(), StubConfig(parallel=2))])
async def test_each_workers_jobs_go_through_its_own_lean_pool(
    fleet_client: httpx.AsyncClient,
    fleet_control: Control,
    fleet_stubs: tuple[StubOllama, ...],
) -> None:
    for stream in (False, True, False, True):
        r = await fleet_client.post(
            "/api/chat",
            json={
                "model": "llama3",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": stream,
            },
        )
        assert r.status_code == 200
        last = json.loads(r.content.splitlines()[-1])
        assert last["done"] is True
    pools = {w.member.name: w.upstream.lean for w in fleet_control.workers}
    assert pools["gpu0"] is not pools["gpu1"]
    for worker in fleet_control.workers:
        lean = worker.upstream.lean
        assert lean is not None
        assert lean._slots.value == worker_connections(worker.member.spec.slots)
    # the jobs left their kept connections in their worker's lean pool
    assert sum(len(w.upstream.lean._idle) for w in fleet_control.workers if w.upstream.lean) >= 1
    jobs = [
        entry
        for stub in fleet_stubs
        for entry in stub.requests_of("chat")
        if entry.body.get("messages")  # a job, not a load
    ]
    assert len(jobs) == 4
    for entry in jobs:
        headers = dict(entry.headers)
        assert headers["user-agent"].startswith("python-httpx/")
        assert headers["content-type"] == "application/json"
        assert headers["accept-encoding"]
