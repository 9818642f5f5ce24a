"""The fleet: foreman over several upstreams against the routers other proxies use, and
foreman's slots on one upstream that runs several generations at once.

Makespan: one seeded workload of jobs over six models is played against three stub
processes (one slot each, `load` seconds per swap) four ways:

- foreman, in front of the three (`--ollama` once per upstream): every job a synchronous
  /api/generate request to foreman at its arrival time; foreman decides where and when.
- round-robin: job i straight to stub i mod 3, at its arrival time.
- loaded-first: each job straight to a stub that has its model loaded, else to the least
  busy one (see fleet_plan for how the router reads "loaded" and "busy").
- the lower bound (fleet_plan.lower_bound).

Loads and jobs per upstream come from the stubs' own counters and records.

Slots: one stub with `--parallel N` and a same-model burst, through foreman configured with
`slots = N` and with `slots = 1` (an `[[upstream]]` table in a foreman.toml).
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from foreman.stub.config import DEFAULT_BATCH_SLOWDOWN
from foreman.testing import Process, foreman_process, stub_process

from . import fleet_plan
from .common import percentile, sleep_until, stub_counters, stub_record
from .loadgen import Connection
from .swap import Job, body, summarise

MODELS = ("llama3", "qwen2.5:7b", "mistral", "phi3", "gemma2:2b", "llama3.2:3b")
INFERENCE = frozenset({"chat", "generate", "v1-chat", "v1-completions"})


@attrs.frozen
class Params:
    jobs: int
    upstreams: int
    load: float  # seconds per swap
    tokens: int
    token_delay: float
    span: float  # the arriving workload's jobs arrive over about this many seconds

    @property
    def generation(self) -> float:
        return self.tokens * self.token_delay

    def stub_flags(self) -> list[str]:
        return [
            "--load-delay",
            str(self.load),
            "--tokens",
            str(self.tokens),
            "--token-delay",
            str(self.token_delay),
            "--models",
            ",".join(MODELS),
        ]


@attrs.frozen
class SlotParams:
    jobs: int
    slots: int
    tokens: int
    token_delay: float
    # with R generations running, each token takes token_delay * (1 + slowdown * (R - 1))
    batch_slowdown: float = DEFAULT_BATCH_SLOWDOWN

    @property
    def ceiling(self) -> float:
        """The throughput of `slots` at once over one at a time, as the stub models it."""
        return self.slots / (1 + self.batch_slowdown * (self.slots - 1))

    def stub_flags(self) -> list[str]:
        return [
            "--parallel",
            str(self.slots),
            "--batch-slowdown",
            str(self.batch_slowdown),
            "--tokens",
            str(self.tokens),
            "--token-delay",
            str(self.token_delay),
        ]


# -- workloads ------------------------------------------------------------------------------


def burst(count: int, seed: int) -> list[Job]:
    """Every job at once, the six models in a seeded random interleaving."""
    rng = random.Random(seed)
    return [Job(0.0, rng.choice(MODELS), f"fleet job {i}") for i in range(count)]


def spread(jobs: Sequence[Job], span: float, seed: int) -> list[Job]:
    """The same jobs (same models, same order) arriving as a seeded Poisson process that
    runs for about `span` seconds."""
    rng = random.Random(seed)
    at = 0.0
    out = []
    for job in jobs:
        out.append(attrs.evolve(job, at=at))
        at += rng.expovariate(len(jobs) / span)
    return out


def bound(jobs: Sequence[Job], params: Params, generation: float) -> dict[str, Any]:
    arrivals, models = [job.at for job in jobs], [job.model for job in jobs]
    b = fleet_plan.lower_bound(arrivals, models, generation, params.load, params.upstreams)
    return {
        "loads": b.loads,
        "makespan_s": b.makespan_s,
        "work_split_s": b.work_split_s,
        "first_job_s": b.first_job_s,
        "last_arrival_s": b.last_arrival_s,
    }


# -- routers --------------------------------------------------------------------------------


class Router:
    """Where each job goes, in arrival order; told when an upstream answers."""

    def pick(self, index: int, job: Job) -> int:
        return 0

    def answered(self, upstream: int) -> None:
        pass


class RoundRobin(Router):
    def __init__(self, upstreams: int) -> None:
        self.upstreams = upstreams

    def pick(self, index: int, job: Job) -> int:
        return fleet_plan.round_robin(index, self.upstreams)


class LoadedFirst(Router):
    def __init__(self, upstreams: int) -> None:
        self.states = tuple(fleet_plan.RouteState() for _ in range(upstreams))

    def pick(self, index: int, job: Job) -> int:
        chosen = fleet_plan.loaded_first(job.model, self.states)
        self.states = fleet_plan.sent(self.states, chosen, job.model)
        return chosen

    def answered(self, upstream: int) -> None:
        self.states = fleet_plan.answered(self.states, upstream)


# -- processes ------------------------------------------------------------------------------


@attrs.define
class Fleet:
    """Stub processes, and foreman in front of them unless the run routes by itself."""

    folder: Path
    stubs: list[str]
    url: str = ""


def _stop(procs: Sequence[Process]) -> None:
    for proc in procs:
        if proc.alive:
            proc.terminate(timeout=15)


@contextmanager
def fleet(
    work: Path, name: str, count: int, stub_flags: Sequence[str], with_foreman: bool
) -> Iterator[Fleet]:
    """`count` stubs (and foreman with one `--ollama` per stub), stopped when the block ends."""
    work.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    procs: list[Process] = []
    try:
        urls = []
        for i in range(count):
            stub = stub_process(folder / f"stub{i}.log", "--log-level", "warning", *stub_flags)
            procs.append(stub)
            urls.append(stub.start())
        run = Fleet(folder, urls)
        if with_foreman:
            more = [flag for url in urls[1:] for flag in ("--ollama", url)]
            foreman = foreman_process(folder / "foreman.db", urls[0], folder / "foreman.log", *more)
            procs.insert(0, foreman)
            run.url = foreman.start()
            trio.run(wait_ready, run.url)
        yield run
    finally:
        _stop(procs)


@contextmanager
def configured_foreman(folder: Path, toml: str) -> Iterator[str]:
    """foreman configured by a foreman.toml alone (its upstreams as `[[upstream]]` tables)."""
    config = folder / "foreman.toml"
    config.write_text(toml)
    argv = [sys.executable, "-m", "foreman", "serve", "--port", "0"]
    argv += ["--db", str(folder / "foreman.db"), "--config", str(config)]
    # the file alone: FOREMAN_OLLAMA_URL in the caller's environment would replace its upstreams
    env = {key: value for key, value in os.environ.items() if not key.startswith("FOREMAN_")}
    proc = Process(argv, folder / "foreman.log", env)
    try:
        url = proc.start()
        trio.run(wait_ready, url)
        yield url
    finally:
        _stop([proc])


async def wait_ready(url: str) -> None:
    """Until foreman's /ready says it can take work (an upstream answered its probe):
    polled, since foreman offers no event for it."""
    conn = Connection(url)
    try:
        with trio.fail_after(30):
            while True:
                if (await conn.send("GET", "/ready")).status == 200:
                    return
                await trio.sleep(0.05)
    finally:
        await conn.aclose()


# -- playing a workload ---------------------------------------------------------------------


async def play(
    targets: Sequence[str], stubs: Sequence[str], jobs: Sequence[Job], router: Router
) -> dict[str, Any]:
    """Send every job at its arrival time to the target the router picks, all at once when
    they arrive together; then read each stub's loads and the jobs it ran."""
    waits = [0.0] * len(jobs)
    ends: list[float] = []
    failures: list[str] = []
    start = time.perf_counter() + 0.2

    async def one(i: int, job: Job, upstream: int) -> None:
        conn = Connection(targets[upstream])
        try:
            answer = await conn.send("POST", "/api/generate", body(job))
            if answer.status != 200:
                failures.append(f"{answer.status}: {answer.body[:200]!r}")
            waits[i] = answer.done - (start + job.at)
            ends.append(answer.done)
            router.answered(upstream)
        finally:
            await conn.aclose()

    async with trio.open_nursery() as nursery:
        for i, job in enumerate(jobs):
            await sleep_until(start + job.at)
            nursery.start_soon(one, i, job, router.pick(i, job))
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(jobs)} jobs failed, e.g. {failures[0]}")
    out = summarise(jobs, waits, max(ends) - start, 0)
    loads, ran = {}, {}
    for n, stub in enumerate(stubs, 1):
        loads[f"u{n}"] = (await stub_counters(stub))["loads"]
        ran[f"u{n}"] = sum(1 for e in await stub_record(stub) if e["kind"] in INFERENCE)
    out["loads"] = sum(loads.values())
    out["loads_by_upstream"] = loads
    out["jobs_by_upstream"] = ran
    return out


def run_foreman(work: Path, name: str, jobs: Sequence[Job], params: Params) -> dict[str, Any]:
    with fleet(work, name, params.upstreams, params.stub_flags(), True) as f:
        return trio.run(play, [f.url], f.stubs, jobs, Router())


def run_direct(
    work: Path,
    name: str,
    jobs: Sequence[Job],
    params: Params,
    router: Callable[[int], Router],
) -> dict[str, Any]:
    """Straight to the stubs, routed by the client as the proxy would."""
    with fleet(work, name, params.upstreams, params.stub_flags(), False) as f:
        return trio.run(play, f.stubs, f.stubs, jobs, router(params.upstreams))


# -- slots ----------------------------------------------------------------------------------


async def play_slots(url: str, stub: str, jobs: int) -> dict[str, Any]:
    """One request first (the load, not timed), then `jobs` same-model requests at once."""
    conn = Connection(url)
    try:
        warm = await conn.send("POST", "/api/generate", body(Job(0, MODELS[0], "warm up")))
        if warm.status != 200:
            raise RuntimeError(f"foreman answered {warm.status}: {warm.body[:200]!r}")
    finally:
        await conn.aclose()
    before = await stub_counters(stub)
    burst_jobs = [Job(0.0, MODELS[0], f"same-model job {i}") for i in range(jobs)]
    out = await play([url], [stub], burst_jobs, Router())
    after = await stub_counters(stub)
    return {
        "jobs": jobs,
        "makespan_s": out["makespan_s"],
        "jobs_per_s": jobs / out["makespan_s"],
        "wait_p50_ms": out["wait_p50_ms"],
        "most_at_once": after["max_inflight_inference"],
        "loads": after["loads"] - before["loads"],
    }


def run_slots(work: Path, name: str, slots: int, params: SlotParams) -> dict[str, Any]:
    """foreman with `slots` slots on one upstream that runs `params.slots` at once."""
    work.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    stub = stub_process(folder / "stub.log", "--log-level", "warning", *params.stub_flags())
    try:
        stub_url = stub.start()
        toml = f'[[upstream]]\nurl = "{stub_url}"\nname = "gpu0"\nslots = {slots}\n'
        with configured_foreman(folder, toml) as url:
            return trio.run(play_slots, url, stub_url, params.jobs)
    finally:
        _stop([stub])


def generation_time(work: Path, params: Params, samples: int = 20) -> float:
    """The stub's own time for one generation with the model loaded, as the median of
    `samples` requests straight to it."""

    async def measure(url: str) -> float:
        conn = Connection(url)
        times = []
        try:
            for i in range(samples + 1):
                answer = await conn.send("POST", "/api/generate", body(Job(0, MODELS[0], f"c{i}")))
                times.append(answer.done - answer.sent)
        finally:
            await conn.aclose()
        return percentile(times[1:], 50)

    with fleet(work, "fleet-calibrate", 1, params.stub_flags(), False) as f:
        return trio.run(measure, f.stubs[0])
