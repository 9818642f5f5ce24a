"""Two foreman replicas as real processes on one PostgreSQL, three stub Ollamas: the issue's
acceptance. A burst sent half to each replica drains by model on every upstream with no
upstream ever running two models at once, and a kill -9 of one replica mid-burst loses no
job while the other takes its upstreams and answers every client connected to it.

The stubs run in this process (what ran where is read from their own records); the
replicas are processes, so that one can be killed as a crash kills it.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from foreman.stub import StubConfig, StubOllama, chat_occupancy, expected_text, normalise_name
from foreman.testing import Process
from foreman.upstream_specs import default_name
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.slow

MODELS = ("llama3", "mistral", "phi3", "qwen2.5:7b")
PACED = StubConfig(load_delay=0.02, token_delay=0.002)


def chat(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": False}


def replica(url: str, stubs: Sequence[StubOllama], log: Path) -> Process:
    argv = [sys.executable, "-m", "foreman", "serve", "--port", "0", "--db", url]
    for stub in stubs:
        argv += ["--ollama", stub.url]
    return Process(argv, log)


def job_states(url: str) -> Counter[str]:
    with psycopg.connect(url) as conn:
        return Counter(r[0] for r in conn.execute("SELECT state FROM jobs").fetchall())


def jobs(url: str) -> list[tuple[str, str, int, str | None]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, state, attempts, upstream FROM jobs").fetchall()
    return [(str(a), str(b), int(c), d) for a, b, c, d in rows]


async def leases_of(base: str) -> list[str]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        ready = (await client.get("/ready")).json()
    return list(ready.get("leases", []))


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()


async def start_two(
    url: str, stubs: Sequence[StubOllama], tmp_path: Path, started: list[Process]
) -> list[Process]:
    for i in range(2):
        process = replica(url, stubs, tmp_path / f"replica{i}.log")
        started.append(process)
        await trio.to_thread.run_sync(process.start)

    async def all_held() -> bool:
        held = [n for p in started for n in await leases_of(p.url)]
        return len(held) == len(stubs) and len(set(held)) == len(stubs)

    with trio.fail_after(60):
        while not await all_held():  # noqa: ASYNC110 - other processes' state
            await trio.sleep(0.05)
    return started


def per_upstream_checks(stubs: Sequence[StubOllama]) -> None:
    for stub in stubs:
        occupancy = chat_occupancy(stub.requests)
        # never two models at once on one upstream, one generation at a time (one slot)
        assert occupancy.clashes == ()
        assert stub.max_inflight_inference <= 1
        # drain by model: with the whole burst queued, each model loads at most once here
        loads = Counter(normalise_name(str(e.model)) for e in stub.requests_of("load"))
        assert all(n == 1 for n in loads.values()), loads


async def test_a_burst_sent_half_to_each_replica_drains_by_model_on_every_upstream(
    nursery: trio.Nursery, postgres_url: str, tmp_path: Path, replicas: list[Process]
) -> None:
    stubs = [StubOllama(PACED) for _ in range(3)]
    for stub in stubs:
        await nursery.start(stub.serve)
    two = await start_two(postgres_url, stubs, tmp_path, replicas)
    bodies = [chat(MODELS[i % len(MODELS)], f"burst {i}") for i in range(200)]
    answers: list[httpx.Response | None] = [None] * len(bodies)
    async with (
        httpx.AsyncClient(base_url=two[0].url, timeout=300) as a,
        httpx.AsyncClient(base_url=two[1].url, timeout=300) as b,
    ):

        async def one(index: int) -> None:
            client = a if index % 2 == 0 else b
            answers[index] = await client.post("/api/chat", json=bodies[index])

        for stub in stubs:
            stub.hold()
        async with trio.open_nursery() as burst:
            for index in range(len(bodies)):
                burst.start_soon(one, index)
            await wait_for(lambda: sum(job_states(postgres_url).values()) == len(bodies), limit=120)
            for stub in stubs:
                stub.release()
    for answer, body in zip(answers, bodies, strict=True):
        assert answer is not None
        assert answer.status_code == 200, answer.text
        assert answer.json()["message"]["content"] == expected_text("/api/chat", body)
    rows = jobs(postgres_url)
    assert Counter(state for _, state, _, _ in rows) == {"done": 200}
    # every upstream worked
    assert {upstream for *_, upstream in rows} == {default_name(stub.url) for stub in stubs}
    assert sum(len(stub.requests_of("chat")) for stub in stubs) == 200
    per_upstream_checks(stubs)


async def test_kill_9_of_a_replica_mid_burst_loses_nothing_and_the_other_answers_its_clients(
    nursery: trio.Nursery, postgres_url: str, tmp_path: Path, replicas: list[Process]
) -> None:
    stubs = [StubOllama(StubConfig(load_delay=0.02, token_delay=0.01)) for _ in range(3)]
    for stub in stubs:
        await nursery.start(stub.serve)
    two = await start_two(postgres_url, stubs, tmp_path, replicas)
    leases = [await leases_of(p.url) for p in two]
    # the victim drives at least one upstream, so its death moves a lease
    victim_index = 0 if leases[0] else 1
    victim, survivor = two[victim_index], two[1 - victim_index]
    bodies = [chat(MODELS[i % len(MODELS)], f"kill {i}") for i in range(120)]
    survivor_answers: dict[int, httpx.Response] = {}

    async with (
        httpx.AsyncClient(base_url=survivor.url, timeout=300) as to_survivor,
        httpx.AsyncClient(base_url=victim.url, timeout=300) as to_victim,
    ):

        async def one(index: int) -> None:
            if index % 2 == 0:
                survivor_answers[index] = await to_survivor.post("/api/chat", json=bodies[index])
            else:
                # the victim's clients lose their connection; their jobs are kept
                job = {"endpoint": "/api/chat", "body": bodies[index]}
                with contextlib.suppress(httpx.TransportError):
                    await to_victim.post("/jobs", json=job)

        async with trio.open_nursery() as burst:
            for index in range(len(bodies)):
                burst.start_soon(one, index)
            await wait_for(lambda: job_states(postgres_url)["done"] >= 20, limit=120)
            await trio.to_thread.run_sync(victim.kill)
            every = sorted(n for lease in leases for n in lease)
            with trio.fail_after(60):
                while sorted(await leases_of(survivor.url)) != every:  # noqa: ASYNC110
                    await trio.sleep(0.05)
    # every client of the survivor has its answer
    for index, answer in survivor_answers.items():
        assert answer.status_code == 200, answer.text
        assert answer.json()["message"]["content"] == expected_text("/api/chat", bodies[index])
    assert len(survivor_answers) == len(bodies) // 2
    # nothing lost: every job that was stored ends done
    await wait_for(lambda: set(job_states(postgres_url)) == {"done"}, limit=120)
    per_upstream_occupancy_only(stubs)


def per_upstream_occupancy_only(stubs: Sequence[StubOllama]) -> None:
    for stub in stubs:
        assert chat_occupancy(stub.requests).clashes == ()


async def test_a_stream_cut_by_the_death_of_the_replica_running_it_says_so_and_the_job_ends(
    nursery: trio.Nursery, postgres_url: str, tmp_path: Path, replicas: list[Process]
) -> None:
    stub = StubOllama(StubConfig(token_delay=0.05, tokens=60))
    await nursery.start(stub.serve)
    victim = replica(postgres_url, [stub], tmp_path / "victim.log")
    replicas.append(victim)
    await trio.to_thread.run_sync(victim.start)
    with trio.fail_after(60):
        while not await leases_of(victim.url):  # noqa: ASYNC110 - another process's state
            await trio.sleep(0.05)
    survivor = replica(postgres_url, [stub], tmp_path / "survivor.log")
    replicas.append(survivor)
    await trio.to_thread.run_sync(survivor.start)
    body = {**chat("llama3", "cut"), "stream": True}
    lines: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=survivor.url, timeout=120) as client,
        client.stream("POST", "/api/chat", json=body) as answer,
    ):
        assert answer.status_code == 200
        async for line in answer.aiter_lines():
            if not line:
                continue
            lines.append(json.loads(line))
            if len(lines) == 3:
                await trio.to_thread.run_sync(victim.kill)
    # the client saw the start of the first run, then a last line saying it was cut off:
    # never a second run's answer after part of the first
    assert "error" in lines[-1]
    assert "cut off" in lines[-1]["error"]
    assert all("message" in line for line in lines[:-1])
    # the job runs again on the survivor, which took the upstream, and ends done
    (job_id,) = [row[0] for row in jobs(postgres_url)]
    async with httpx.AsyncClient(base_url=survivor.url, timeout=60) as client:
        with trio.fail_after(120):
            while (await client.get(f"/jobs/{job_id}")).json()["state"] != "done":  # noqa: ASYNC110
                await trio.sleep(0.05)
