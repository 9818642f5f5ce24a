"""The process-level figures of replicas on PostgreSQL: whole `foreman serve` processes
with `--db postgresql://...`, on stub upstreams.

- added latency: serial non-streamed requests through foreman on SQLite and through
  foreman on PostgreSQL, in front of one instant stub, in alternating blocks with requests
  straight to the stub;
- two replicas' throughput: jobs queued on two stub upstreams, half through each replica,
  drained by one replica alone and then by two (each driving the upstream whose lease it
  holds);
- failover: two replicas, two stub upstreams and a steady stream of jobs; the replica
  holding an upstream's lease (its /ready lists them under "leases") is killed with
  SIGKILL, and the time runs until a job completes on that upstream again. Every job a
  replica accepted must end done: nothing lost.

A build whose `--db` takes only a SQLite path (a postgresql:// URL would be read as a file
name) cannot run them: `refusal` says so, and the section reports that line instead.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import trio

from foreman.testing import Process, stub_process

from .common import Stack, ms, stub_control
from .fleet import wait_ready
from .loadgen import Connection, HttpError
from .overhead import _latency, check

INSTANT = ("--tokens", "8")
# about 50 ms per job: both upstreams stay busy under the failover's stream of jobs
PACED = ("--tokens", "5", "--token-delay", "0.01")
MODELS = ("llama3", "mistral")
# a job every 40 ms: about half of what the two upstreams can run
ARRIVAL_S = 0.04
# the goal for an upstream's lease to move after a replica dies
FAILOVER_GOAL_S = 5.0


def refusal(url: str) -> str | None:
    """Why `foreman serve --db URL` would not run on PostgreSQL with this build, or None."""
    from foreman.config import ConfigError, resolve

    try:
        settings = resolve({"db": url}, {})
    except ConfigError as exc:
        return f"`foreman serve --db postgresql://...` is refused: {exc}"
    if settings.database_url is None:
        return "`foreman serve --db` read the postgresql:// URL as a SQLite file name"
    return None


def replica(folder: Path, name: str, url: str, stubs: Sequence[str]) -> Process:
    """`foreman serve` on the PostgreSQL database at `url`, one `--ollama` per stub."""
    argv = [sys.executable, "-m", "foreman", "serve", "--port", "0", "--db", url]
    argv += [flag for stub in stubs for flag in ("--ollama", stub)]
    env = {key: value for key, value in os.environ.items() if not key.startswith("FOREMAN_")}
    return Process(argv, folder / f"{name}.log", env)


@contextmanager
def running(procs: Sequence[Process]) -> Iterator[list[str]]:
    """Start each process (in order); stop those still alive when the block ends."""
    try:
        urls = [proc.start() for proc in procs]
        yield urls
    finally:
        for proc in procs:
            if proc.alive:
                proc.terminate(timeout=15)


def stubs(folder: Path, count: int, flags: Sequence[str]) -> tuple[list[Process], list[str]]:
    procs = [
        stub_process(folder / f"stub{i}.log", "--log-level", "warning", *flags)
        for i in range(count)
    ]
    return procs, [proc.start() for proc in procs]


async def leases(url: str) -> list[str]:
    """The upstreams whose leases the replica at `url` holds, as its /ready lists them."""
    conn = Connection(url)
    try:
        answer = await conn.send("GET", "/ready")
        return list(answer.json().get("leases", []))
    finally:
        await conn.aclose()


async def all_leased(urls: Sequence[str], upstreams: int, limit: float = 30.0) -> dict[str, str]:
    """Until the replicas together hold every upstream's lease; upstream -> replica URL."""
    with trio.fail_after(limit):
        while True:
            held = {name: url for url in urls for name in await leases(url)}
            if len(held) >= upstreams:
                return held
            await trio.sleep(0.05)


def job_states(db_url: str, ids: Sequence[str]) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT state, count(*) FROM jobs WHERE id = ANY(%s) GROUP BY state", (list(ids),)
        ).fetchall()
    return {state: int(count) for state, count in rows}


async def wait_all_done(db_url: str, ids: Sequence[str], limit: float = 120.0) -> float:
    """Until every job of `ids` has ended; the seconds it took (polled: the database
    offers no event a benchmark can wait on without a listener of its own)."""
    started = time.perf_counter()
    with trio.fail_after(limit):
        while True:
            states = await trio.to_thread.run_sync(job_states, db_url, ids)
            ended = sum(states.get(state, 0) for state in ("done", "failed", "cancelled"))
            if ended >= len(ids):
                return time.perf_counter() - started
            await trio.sleep(0.05)


async def submit(conn: Connection, i: int) -> str:
    envelope = {
        "endpoint": "/api/generate",
        "body": {"model": MODELS[i % len(MODELS)], "prompt": f"replica job {i}"},
    }
    answer = check(await conn.send("POST", "/jobs", json.dumps(envelope).encode()), "POST /jobs")
    return str(answer.json()["id"])


# -- added latency ----------------------------------------------------------------------------


def added_latency(work: Path, db_url: str, quick: bool) -> dict[str, Any]:
    """Serial requests through foreman on SQLite and on PostgreSQL, beside direct ones."""
    requests = 200 if quick else 600
    with ExitStack() as stack:
        s = Stack(work, "replicas-latency")
        stack.callback(s.stop)
        s.start_stub(*INSTANT)
        s.start_foreman()
        (pg,) = stack.enter_context(running([replica(s.work, "postgres", db_url, [s.stub_url])]))
        trio.run(wait_ready, pg)
        out: dict[str, Any] = trio.run(
            _latency, s.stub_url, {"sqlite": s.url, "postgres": pg}, requests, False
        )
    out["postgres_over_sqlite_p50_ms"] = out["postgres_added_p50_ms"] - out["sqlite_added_p50_ms"]
    return out


# -- two replicas' throughput -------------------------------------------------------------------


async def _drain(db_url: str, urls: Sequence[str], stubs: Sequence[str], jobs: int) -> float:
    """Queue `jobs` with the stubs held, half through each of `urls`, then time the drain."""
    for stub in stubs:
        await stub_control(stub, "POST", "/_stub/hold")
    conns = [Connection(url) for url in urls]
    try:
        ids = [await submit(conns[i % len(conns)], i) for i in range(jobs)]
    finally:
        for conn in conns:
            await conn.aclose()
    for stub in stubs:
        await stub_control(stub, "POST", "/_stub/release")
    return jobs / await wait_all_done(db_url, ids)


def throughput(work: Path, make_db: Any, quick: bool) -> dict[str, Any]:
    """Jobs/s drained from two instant upstreams by one replica, then by two."""
    jobs = 400 if quick else 2000
    out: dict[str, Any] = {"jobs": jobs}
    for count in (1, 2):
        folder = Path(tempfile.mkdtemp(prefix=f"replicas-{count}-", dir=work))
        stub_procs, stub_urls = stubs(folder, 2, INSTANT)
        try:
            with make_db() as db_url:
                procs = [replica(folder, f"r{i}", db_url, stub_urls) for i in range(count)]
                with running(procs) as urls:
                    for url in urls:
                        trio.run(wait_ready, url)
                    held = trio.run(all_leased, urls, 2)
                    out[f"replicas_{count}"] = {
                        "jobs_per_s": trio.run(_drain, db_url, urls, stub_urls, jobs),
                        # how the upstreams' leases fell: upstreams driven by each replica
                        "leases": " + ".join(str(list(held.values()).count(url)) for url in urls),
                    }
        finally:
            for proc in stub_procs:
                proc.terminate(timeout=15)
    out["ratio"] = out["replicas_2"]["jobs_per_s"] / out["replicas_1"]["jobs_per_s"]
    return out


# -- failover -------------------------------------------------------------------------------


def first_end_after(db_url: str, upstream: str, moment: float) -> float | None:
    """When the first job started on `upstream` after `moment` (wall clock) ended done."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT min(finished_at) FROM jobs"
            " WHERE upstream = %s AND state = 'done' AND started_at > %s",
            (upstream, moment),
        ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


async def _first_end(db_url: str, upstream: str, killed: float, limit: float = 60.0) -> float:
    """Polled until a job started on `upstream` after `killed` has ended done; its end."""
    with trio.fail_after(limit):
        while True:
            ended = await trio.to_thread.run_sync(first_end_after, db_url, upstream, killed)
            if ended is not None:
                return ended
            await trio.sleep(0.02)


async def _lease_moved(survivor: str, upstream: str, limit: float = 60.0) -> float:
    """Polled until the survivor's /ready lists `upstream`'s lease; the wall clock then."""
    with trio.fail_after(limit):
        while True:
            if upstream in await leases(survivor):
                return time.time()
            await trio.sleep(0.05)


async def _failover(
    db_url: str, procs: Sequence[Process], urls: Sequence[str], seconds: float
) -> dict[str, Any]:
    held = await all_leased(urls, 2)
    upstream, victim_url = sorted(held.items())[0]
    victim = procs[list(urls).index(victim_url)]
    survivor = next(url for url in urls if url != victim_url)
    accepted: list[str] = []
    refused = 0
    out: dict[str, Any] = {"upstream": upstream}

    async def stream(stop: trio.Event) -> None:
        nonlocal refused
        conns = {url: Connection(url) for url in urls}
        i = 0
        try:
            while not stop.is_set():
                target = urls[i % len(urls)] if victim.alive else survivor
                try:
                    accepted.append(await submit(conns[target], i))
                except (OSError, HttpError, RuntimeError):
                    refused += 1  # the victim, dead: its clients go to the other
                i += 1
                await trio.sleep(ARRIVAL_S)
        finally:
            for conn in conns.values():
                await conn.aclose()

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream, stop)
        await trio.sleep(seconds / 2)  # steady: both upstreams working
        killed = time.time()
        await trio.to_thread.run_sync(victim.kill)
        out["failover_s"] = await _first_end(db_url, upstream, killed) - killed
        out["lease_seen_s"] = await _lease_moved(survivor, upstream) - killed
        await trio.sleep(seconds / 2)
        stop.set()
    await wait_all_done(db_url, accepted)
    states = await trio.to_thread.run_sync(job_states, db_url, accepted)
    out["accepted"] = len(accepted)
    out["refused_while_down"] = refused
    out["done"] = states.get("done", 0)
    out["lost"] = len(accepted) - out["done"]
    return out


def failover(work: Path, make_db: Any, quick: bool) -> dict[str, Any]:
    """kill -9 of the replica holding an upstream's lease under a steady stream of jobs."""
    folder = Path(tempfile.mkdtemp(prefix="replicas-failover-", dir=work))
    stub_procs, stub_urls = stubs(folder, 2, PACED)
    try:
        with make_db() as db_url:
            procs = [replica(folder, f"r{i}", db_url, stub_urls) for i in range(2)]
            with running(procs) as urls:
                for url in urls:
                    trio.run(wait_ready, url)
                out = trio.run(_failover, db_url, procs, urls, 4.0 if quick else 10.0)
    finally:
        for proc in stub_procs:
            proc.terminate(timeout=15)
    out["failover_ms"] = ms(out["failover_s"])
    return out
