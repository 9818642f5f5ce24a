"""Acceptance: killing one of two upstreams while jobs run loses nothing; every client gets
its answer from the other. And an upstream down at start: the other serves meanwhile.

For the kill, the upstreams are stub Ollama processes, so it is a real SIGKILL: the
connections of the jobs running there break, and the port refuses from then on.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from foreman.config import Settings
from foreman.daemon import Control, run
from foreman.stub import StubOllama, chat_occupancy, expected_text
from foreman.testing import Process, stub_process

from .conftest import KEY_FILE_POLL, fleet_settings_for, fleet_specs, job_rows, wait_for

PACE = ("--load-delay", "0.02", "--token-delay", "0.002")
MODELS = ("llama3", "mistral")


@pytest.fixture
def stub_processes(tmp_path: Path) -> Iterator[tuple[Process, Process]]:
    started: list[Process] = []
    try:
        for name in ("gpu0", "gpu1"):
            process = stub_process(tmp_path / f"{name}.log", *PACE)
            started.append(process)
            process.start()
        yield started[0], started[1]
    finally:
        for process in started:
            process.kill()


def chat(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": False}


async def stub_call(process: Process, method: str, path: str) -> Any:
    async with httpx.AsyncClient(base_url=process.url, timeout=60) as http:
        answer = await http.request(method, path)
        assert answer.status_code == 200, answer.text
        return answer.json()


async def test_killing_one_of_two_upstreams_mid_job_loses_nothing(
    nursery: trio.Nursery, tmp_path: Path, stub_processes: tuple[Process, Process]
) -> None:
    gpu0, gpu1 = stub_processes
    upstreams = fleet_specs([gpu0.url, gpu1.url], [1, 1])
    settings = fleet_settings_for(tmp_path / "foreman.db", upstreams)
    control = Control()
    url = await nursery.start(partial(run, settings, control=control, key_file_poll=KEY_FILE_POLL))
    await wait_for(lambda: all(w.statistics().online for w in control.workers))
    worker0, worker1 = control.workers
    for process in stub_processes:
        await stub_call(process, "POST", "/_stub/hold")

    bodies = [chat(MODELS[i % 2], f"failover {i}") for i in range(12)]
    answers: list[httpx.Response | None] = [None] * len(bodies)

    async def one(client: httpx.AsyncClient, index: int) -> None:
        answers[index] = await client.post("/api/chat", json=bodies[index])

    async with (
        httpx.AsyncClient(base_url=url, timeout=120) as client,
        trio.open_nursery() as clients,
    ):
        for index in range(len(bodies)):
            clients.start_soon(one, client, index)
        await wait_for(lambda: len(job_rows(settings.db)) == len(bodies))
        # a job on each upstream, gpu0's in the middle of its generation
        await wait_for(lambda: bool(worker0.jobs) and bool(worker1.jobs))
        waited = await stub_call(gpu0, "GET", "/_stub/wait?inflight_inference=1&timeout=30")
        assert waited["counters"]["inflight_inference"] == 1
        await trio.to_thread.run_sync(gpu0.kill)
        await wait_for(lambda: not worker0.statistics().online)
        await stub_call(gpu1, "POST", "/_stub/release")

    # every client has its answer, each from gpu1
    for answer, body in zip(answers, bodies, strict=True):
        assert answer is not None
        assert answer.status_code == 200, answer.text
        assert answer.json()["message"]["content"] == expected_text("/api/chat", body)
    rows = job_rows(settings.db)
    assert [row["state"] for row in rows] == ["done"] * len(bodies)
    assert {row["upstream"] for row in rows} == {"gpu1"}
    # the outage was not the jobs' fault: no attempt was spent on it
    assert [row["attempts"] for row in rows] == [1] * len(bodies)
    record = await stub_call(gpu1, "GET", "/_stub/requests")
    chats = [entry for entry in record["requests"] if entry["kind"] == "chat"]
    assert len(chats) == len(bodies)
    assert chat_occupancy(record["requests"]).clashes == ()


async def test_one_upstream_down_at_start_the_other_serves_until_it_comes(
    nursery: trio.Nursery,
    fleet_stubs: tuple[StubOllama, ...],
    fleet_settings: Settings,
    fleet_control: Control,
) -> None:
    gpu0, gpu1 = fleet_stubs
    gpu1.stop_listening()
    url = await nursery.start(
        partial(run, fleet_settings, control=fleet_control, key_file_poll=KEY_FILE_POLL)
    )
    worker0, worker1 = fleet_control.workers
    await wait_for(lambda: worker0.statistics().online and worker1.statistics().failed_probes > 0)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        bodies = [chat(MODELS[i % 2], f"one down {i}") for i in range(4)]
        for body in bodies:
            answer = await client.post("/api/chat", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["message"]["content"] == expected_text("/api/chat", body)
        assert {row["upstream"] for row in job_rows(fleet_settings.db)} == {"gpu0"}
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["upstreams"] == {"gpu0": "up", "gpu1": "down"}

        await gpu1.start_listening()
        await wait_for(lambda: worker1.statistics().online)
        assert (await client.get("/ready")).json()["upstreams"] == {"gpu0": "up", "gpu1": "up"}
        # with gpu0 busy on its model, a job for the other model runs on gpu1, now up
        held = worker0.statistics().resident
        assert held is not None
        mine, other = sorted(MODELS, key=lambda m: not held.startswith(m))
        gpu0.hold()
        async with trio.open_nursery() as busy:
            busy.start_soon(partial(client.post, "/api/chat", json=chat(mine, "busy")))
            await wait_for(lambda: bool(worker0.jobs))
            answer = await client.post("/api/chat", json=chat(other, "after"))
            gpu0.release()
        assert answer.status_code == 200, answer.text
        rows = job_rows(fleet_settings.db)
        assert [row["upstream"] for row in rows[-2:]] == ["gpu0", "gpu1"]
        assert [row["state"] for row in rows] == ["done"] * 6
