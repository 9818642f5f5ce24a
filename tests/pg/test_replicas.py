"""Replicas: several foremen, in this process, sharing one PostgreSQL queue.

Each replica is a whole `run` (its own store session, workers, HTTP server) over the same
stub upstreams; what they share is the database alone, as replicas on two machines would.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import psycopg
import trio

from foreman.config import Settings
from foreman.daemon import Control, run
from foreman.store import Store
from foreman.stub import StubConfig, StubOllama
from tests.integration.conftest import fleet_specs, wait_for
from tests.pg.cluster import PostgresCluster
from tests.pg.test_pg_face import administer

LEASE_POLL = 0.05


def replica_settings(url: str, stubs: tuple[StubOllama, ...]) -> Settings:
    upstreams = fleet_specs([s.url for s in stubs], [1] * len(stubs))
    return Settings(
        ollama_url=",".join(u.url for u in upstreams),
        port=0,
        retry_backoff=0.05,
        upstreams=upstreams,
        database_url=url,
    )


@attrs.define
class Replica:
    url: str
    control: Control
    scope: trio.CancelScope

    @property
    def leases(self) -> tuple[str, ...]:
        assert self.control.leases is not None
        return self.control.leases.upstreams


async def start_replica(
    nursery: trio.Nursery, settings: Settings, *, poll: float = LEASE_POLL
) -> Replica:
    control = Control()
    control.lease_poll = poll
    scope = trio.CancelScope()

    async def serve(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await run(settings, control=control, task_status=task_status)

    url: str = await nursery.start(serve)
    return Replica(url, control, scope)


async def stubs_for(nursery: trio.Nursery, n: int, **config: Any) -> tuple[StubOllama, ...]:
    config.setdefault("chat_models", ("m0", "m1", "m2"))
    stubs = tuple(StubOllama(StubConfig(**config)) for _ in range(n))
    for stub in stubs:
        await nursery.start(stub.serve)
    return stubs


async def serve_fails(db: str) -> str:
    """`foreman serve --db db` run to its failure: its one line on stderr."""
    done = await trio.run_process(
        [sys.executable, "-m", "foreman", "serve", "--port", "0", "--db", db],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode != 0
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


async def until_done(client: httpx.AsyncClient, job_id: str, limit: float = 60) -> None:
    with trio.fail_after(limit):
        while (await client.get(f"/jobs/{job_id}")).json()["state"] != "done":  # noqa: ASYNC110
            await trio.sleep(0.05)


def every_upstream_driven_once(replicas: list[Replica], names: list[str]) -> Callable[[], bool]:
    def check() -> bool:
        held = [name for r in replicas for name in r.leases]
        return sorted(held) == sorted(names)

    return check


async def test_each_upstream_is_driven_by_one_replica_and_a_survivor_takes_them_all(
    nursery: trio.Nursery, postgres_url: str
) -> None:
    stubs = await stubs_for(nursery, 3)
    settings = replica_settings(postgres_url, stubs)
    first = await start_replica(nursery, settings)
    second = await start_replica(nursery, settings)
    names = ["gpu0", "gpu1", "gpu2"]
    await wait_for(every_upstream_driven_once([first, second], names))
    # exactly one janitor
    janitors = [r for r in (first, second) if r.control.leases and r.control.leases.janitor]
    assert len(janitors) == 1

    first.scope.cancel()
    await wait_for(lambda: sorted(second.leases) == names)
    assert second.control.leases is not None
    await wait_for(lambda: second.control.leases is not None and second.control.leases.janitor)


async def test_jobs_sent_to_either_replica_all_complete(
    nursery: trio.Nursery, postgres_url: str
) -> None:
    stubs = await stubs_for(nursery, 2)
    settings = replica_settings(postgres_url, stubs)
    replicas = [await start_replica(nursery, settings) for _ in range(2)]
    await wait_for(every_upstream_driven_once(replicas, ["gpu0", "gpu1"]))
    async with (
        httpx.AsyncClient(base_url=replicas[0].url, timeout=60) as a,
        httpx.AsyncClient(base_url=replicas[1].url, timeout=60) as b,
    ):
        ids = []
        for i in range(20):
            client = a if i % 2 else b
            model = f"m{i % 3}"
            body = {"model": model, "messages": [{"role": "user", "content": str(i)}]}
            r = await client.post("/jobs", json={"endpoint": "/api/chat", "body": body})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])

        async def states() -> list[str]:
            return [(await a.get(f"/jobs/{job_id}")).json()["state"] for job_id in ids]

        with trio.fail_after(60):
            while set(await states()) != {"done"}:  # noqa: ASYNC110 - another process's writes
                await trio.sleep(0.05)


async def test_ready_and_metrics_name_the_leases(nursery: trio.Nursery, postgres_url: str) -> None:
    stubs = await stubs_for(nursery, 2)
    replica = await start_replica(nursery, replica_settings(postgres_url, stubs))
    await wait_for(lambda: sorted(replica.leases) == ["gpu0", "gpu1"])
    async with httpx.AsyncClient(base_url=replica.url, timeout=60) as client:
        ready = (await client.get("/ready")).json()
        assert ready["database"] == "postgresql"
        assert ready["leases"] == ["gpu0", "gpu1"]
        assert ready["janitor"] is True
        metrics = (await client.get("/metrics")).text
        assert 'foreman_leases{lease="upstream:gpu0"} 1.0' in metrics
        assert 'foreman_leases{lease="janitor"} 1.0' in metrics


async def test_a_replica_whose_session_ends_stops_its_workers_and_takes_its_leases_again(
    nursery: trio.Nursery, postgres_url: str, postgres_cluster: PostgresCluster
) -> None:
    stubs = await stubs_for(nursery, 1, token_delay=0.05)
    replica = await start_replica(nursery, replica_settings(postgres_url, stubs))
    await wait_for(lambda: replica.leases == ("gpu0",))
    keeper = replica.control.leases
    assert keeper is not None
    async with httpx.AsyncClient(base_url=replica.url, timeout=60) as client:
        body = {"model": "m0", "messages": [{"role": "user", "content": "hi"}]}
        r = await client.post("/jobs", json={"endpoint": "/api/chat", "body": body})
        job_id = r.json()["id"]
        await wait_for(lambda: stubs[0].inflight_inference == 1)
        pid = keeper.store.sync.conn.raw.info.backend_pid  # type: ignore[attr-defined]
        administer(postgres_cluster, f"SELECT pg_terminate_backend({pid})")
        # the leases went with the session: the worker stops, a new session takes them
        await wait_for(lambda: keeper.store.sync.conn.raw.info.backend_pid != pid)  # type: ignore[attr-defined]
        await wait_for(lambda: replica.leases == ("gpu0",))
        # the job the lost session was running is put back and runs to its end
        await until_done(client, job_id)


async def test_serve_on_an_unreachable_database_fails_with_one_line(tmp_path: Path) -> None:
    url = f"postgresql://nobody@/nothing?host={tmp_path}&port=1"
    assert "cannot connect to the database" in await serve_fails(url)


async def test_one_idempotency_key_sent_to_both_replicas_at_once_makes_one_job(
    nursery: trio.Nursery, postgres_url: str
) -> None:
    stubs = await stubs_for(nursery, 1)
    settings = replica_settings(postgres_url, stubs)
    replicas = [await start_replica(nursery, settings) for _ in range(2)]
    body = {"model": "m0", "messages": [{"role": "user", "content": "once"}]}
    job = {"endpoint": "/api/chat", "body": body}
    for attempt in range(10):
        key = {"Idempotency-Key": f"both-{attempt}"}
        answers: list[httpx.Response] = []

        async def submit(
            base: str, key: dict[str, str] = key, answers: list[httpx.Response] = answers
        ) -> None:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                answers.append(await client.post("/jobs", json=job, headers=key))

        async with trio.open_nursery() as both:
            for r in replicas:
                both.start_soon(submit, r.url)
        assert sorted(a.status_code for a in answers) in ([200, 202], [202, 202]), answers
        assert len({a.json()["id"] for a in answers}) == 1
    with psycopg.connect(postgres_url) as conn:
        (count,) = conn.execute("SELECT count(*) FROM jobs").fetchone() or (0,)
    assert count == 10


async def test_the_queue_limit_counts_every_replicas_jobs(
    nursery: trio.Nursery, postgres_url: str
) -> None:
    stubs = await stubs_for(nursery, 1)
    for stub in stubs:
        stub.hold()
    settings = attrs.evolve(replica_settings(postgres_url, stubs), max_queue=5)
    first, second = [await start_replica(nursery, settings) for _ in range(2)]
    body = {"model": "m0", "messages": [{"role": "user", "content": "fill"}]}
    job = {"endpoint": "/api/chat", "body": body}
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=60) as a,
        httpx.AsyncClient(base_url=second.url, timeout=60) as b,
    ):
        for _ in range(6):
            assert (await a.post("/jobs", json=job)).status_code == 202
        # the second replica hears of the first one's jobs (one runs, held on the stub;
        # five wait) and counts them: its first submission is refused, the queue is full
        full = 'foreman_jobs{model="m0:latest",state="queued"} 5.0'
        with trio.fail_after(30):
            while full not in (await b.get("/metrics")).text:  # noqa: ASYNC110
                await trio.sleep(0.05)
        refused = await b.post("/jobs", json=job)
        assert refused.status_code == 503, refused.text
        assert "Retry-After" in refused.headers
    for stub in stubs:
        stub.release()


async def test_serve_on_a_database_of_a_newer_foreman_fails_with_one_line(
    postgres_url: str, postgres_cluster: PostgresCluster
) -> None:
    store = await Store.open_url(postgres_url)
    await store.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE foreman_schema SET version = 999")
    assert "newer than this foreman" in await serve_fails(postgres_url)


async def test_a_stream_reaches_its_client_token_by_token_through_the_replica_not_driving(
    nursery: trio.Nursery, postgres_url: str
) -> None:
    # a long answer (50 tokens, 2.5 s): its first lines reach the client while the stub is
    # still generating the rest
    stubs = await stubs_for(nursery, 1, token_delay=0.05, tokens=50)
    settings = replica_settings(postgres_url, stubs)
    driver = await start_replica(nursery, settings)
    await wait_for(lambda: driver.leases == ("gpu0",))
    other = await start_replica(nursery, settings)
    assert other.leases == ()
    body = {"model": "m1", "messages": [{"role": "user", "content": "far away"}], "stream": True}
    lines: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=other.url, timeout=60) as client,
        client.stream("POST", "/api/chat", json=body) as answer,
    ):
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/x-ndjson")
        generating_at_first_line = None
        async for line in answer.aiter_lines():
            if generating_at_first_line is None:
                generating_at_first_line = stubs[0].inflight_inference == 1
            if line:
                lines.append(json.loads(line))
    assert generating_at_first_line
    # the answer came as Ollama streams it: one line a token, then the last with done
    assert len(lines) > 2
    assert all(not line["done"] for line in lines[:-1])
    assert lines[-1]["done"] is True
    text = "".join(line["message"]["content"] for line in lines)
    assert text == stubs[0].expected_text("/api/chat", body)
    # the job ran on the driver's upstream, answered through the other replica
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT upstream, waiter, state FROM jobs").fetchone()
    assert row is not None
    assert row[0] == "gpu0"
    assert row[1] is not None
    assert row[2] == "done"
    assert other.leases == ()


async def test_a_graceful_stop_hands_the_upstreams_over_and_the_queue_runs_on(
    nursery: trio.Nursery, postgres_url: str
) -> None:
    stubs = await stubs_for(nursery, 2)
    for stub in stubs:
        stub.hold()
    settings = attrs.evolve(replica_settings(postgres_url, stubs), shutdown_grace=0.1)
    first = await start_replica(nursery, settings)
    await wait_for(lambda: sorted(first.leases) == ["gpu0", "gpu1"])
    second = await start_replica(nursery, settings)
    body = {"model": "m0", "messages": [{"role": "user", "content": "later"}]}
    job = {"endpoint": "/api/chat", "body": body}
    async with httpx.AsyncClient(base_url=second.url, timeout=60) as client:
        ids = [(await client.post("/jobs", json=job)).json()["id"] for _ in range(4)]
        await wait_for(lambda: sum(s.inflight_inference for s in stubs) >= 1)
        # the running jobs go back to the queue (the grace is short), the leases move
        first.control.request_stop()
        await wait_for(lambda: sorted(second.leases) == ["gpu0", "gpu1"])
        for stub in stubs:
            stub.release()
        for job_id in ids:
            await until_done(client, job_id)
