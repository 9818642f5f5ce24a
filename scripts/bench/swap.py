"""Swap economy: foreman's drain-by-model against first-come-first-served.

One seeded workload of jobs over four models is played three ways against a stub that
charges `load` seconds per model swap and a fixed generation time per job:

- foreman: every job is a synchronous /api/generate request to foreman, sent at its
  arrival time; foreman decides the order.
- first come, first served: the same jobs straight to the stub, one at a time in arrival
  order (Ollama with one parallel slot); a job waits for the one before it.
- the lower bound: one load per distinct model, every generation back to back.

A job's wait is from its arrival to its complete answer.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from .common import ms, percentile, sleep_until, stack, stub_counters
from .loadgen import Connection

MODELS = ("llama3", "qwen2.5:7b", "mistral", "phi3")


@attrs.frozen
class Job:
    at: float  # seconds after the start
    model: str
    prompt: str


@attrs.frozen
class Params:
    jobs: int
    load: float  # seconds per swap
    tokens: int
    token_delay: float

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
        ]


def interleaved(count: int, seed: int, models: Sequence[str] = MODELS) -> list[Job]:
    """A burst: every job arrives at once, models in a seeded random interleaving."""
    rng = random.Random(seed)
    return [Job(0.0, rng.choice(models), f"burst job {i}") for i in range(count)]


def arriving(count: int, seed: int, span: float, models: Sequence[str] = MODELS) -> list[Job]:
    """Jobs that keep arriving during the run: a seeded Poisson process over `span` s."""
    rng = random.Random(seed)
    at = 0.0
    jobs = []
    for i in range(count):
        jobs.append(Job(at, rng.choice(models), f"arriving job {i}"))
        at += rng.expovariate(count / span)
    return jobs


def hot_model(seconds: float, rate: float, seed: int) -> list[Job]:
    """A hot model arriving faster than it can be served for `seconds`, and one job for each
    other model early on: without a starvation bound those wait out the whole backlog."""
    rng = random.Random(seed)
    jobs = [Job(0.5, model, f"cold job {model}") for model in MODELS[1:]]
    at = 0.0
    i = 0
    while at < seconds:
        jobs.append(Job(at, MODELS[0], f"hot job {i}"))
        at += rng.expovariate(rate)
        i += 1
    return sorted(jobs, key=lambda job: job.at)


def body(job: Job) -> bytes:
    return json.dumps({"model": job.model, "prompt": job.prompt, "stream": False}).encode()


def lower_bound(jobs: Sequence[Job], params: Params, generation: float) -> dict[str, Any]:
    """One load per distinct model, and every generation (as the stub measured it) back to
    back, and never ending before the last arrival's own generation."""
    loads = len({job.model for job in jobs})
    work = loads * params.load + len(jobs) * generation
    last = max(job.at for job in jobs) + generation
    return {"loads": loads, "makespan_s": max(work, last)}


def calibrate(work: Path, params: Params, samples: int = 20) -> float:
    """The stub's own time for one generation with the model already loaded (its timers
    and HTTP included), as the median of `samples` requests straight to it."""

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

    with stack(work, "calibrate", params.stub_flags(), None) as s:
        return trio.run(measure, s.stub_url)


def summarise(
    jobs: Sequence[Job], waits: Sequence[float], makespan: float, loads: int
) -> dict[str, Any]:
    by_model: dict[str, list[float]] = {}
    for job, wait in zip(jobs, waits, strict=True):
        by_model.setdefault(job.model, []).append(wait)
    return {
        "loads": loads,
        "makespan_s": makespan,
        "wait_p50_ms": ms(percentile(waits, 50)),
        "wait_p99_ms": ms(percentile(waits, 99)),
        "wait_max_ms": ms(max(waits)),
        "by_model": {
            model: {
                "jobs": len(values),
                "wait_p50_ms": ms(percentile(values, 50)),
                "wait_p99_ms": ms(percentile(values, 99)),
                "wait_max_ms": ms(max(values)),
            }
            for model, values in sorted(by_model.items())
        },
    }


async def play_fcfs(stub_url: str, jobs: Sequence[Job]) -> dict[str, Any]:
    """Straight to the stub, one at a time, in arrival order."""
    conn = Connection(stub_url)
    waits: list[float] = []
    start = time.perf_counter()
    end = start
    try:
        for job in jobs:
            await sleep_until(start + job.at)
            answer = await conn.send("POST", "/api/generate", body(job))
            if answer.status != 200:
                raise RuntimeError(f"stub answered {answer.status}: {answer.body[:200]!r}")
            end = answer.done
            waits.append(answer.done - (start + job.at))
    finally:
        await conn.aclose()
    loads = (await stub_counters(stub_url))["loads"]
    return summarise(jobs, waits, end - start, loads)


async def play_foreman(url: str, stub_url: str, jobs: Sequence[Job]) -> dict[str, Any]:
    """Every job a synchronous request to foreman, sent at its arrival time."""
    waits = [0.0] * len(jobs)
    failures: list[str] = []
    start = time.perf_counter() + 0.2
    ends: list[float] = []

    async def one(i: int, job: Job) -> None:
        conn = Connection(url)
        try:
            await sleep_until(start + job.at)
            answer = await conn.send("POST", "/api/generate", body(job))
            if answer.status != 200:
                failures.append(f"{answer.status}: {answer.body[:200]!r}")
            waits[i] = answer.done - (start + job.at)
            ends.append(answer.done)
        finally:
            await conn.aclose()

    async with trio.open_nursery() as nursery:
        for i, job in enumerate(jobs):
            nursery.start_soon(one, i, job)
    if failures:
        raise RuntimeError(f"{len(failures)} jobs failed through foreman, e.g. {failures[0]}")
    loads = (await stub_counters(stub_url))["loads"]
    return summarise(jobs, waits, max(ends) - start, loads)


def run_foreman(
    work: Path, name: str, jobs: Sequence[Job], params: Params, *flags: str
) -> dict[str, Any]:
    with stack(work, name, params.stub_flags(), list(flags)) as s:
        return trio.run(play_foreman, s.url, s.stub_url, jobs)


def run_fcfs(work: Path, name: str, jobs: Sequence[Job], params: Params) -> dict[str, Any]:
    with stack(work, name, params.stub_flags(), None) as s:
        return trio.run(play_fcfs, s.stub_url, jobs)
