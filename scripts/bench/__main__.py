"""`make bench`: measure foreman against first-come-first-served and against the stub
directly, and write docs/benchmarks.md and docs/benchmarks.json.

    python -m scripts.bench            # the whole suite (under 15 minutes on 2 cores)
    python -m scripts.bench --quick    # smaller workloads, one repetition (under 3 minutes)
    python -m scripts.bench --only swap,scale --out /tmp/bench
    python -m scripts.bench --only fleet        # one section (`make bench BENCH_ARGS=...`)

Everything runs on loopback against the stub Ollama, in real processes. Each figure is
the median of its repetitions, with min and max.

After writing, the run is compared with the committed docs/benchmarks.json (guard.py): a
figure more than 30% worse fails it, unless --accept or BENCH_ACCEPT=1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import (
    answers,
    dashboard,
    durability,
    fleet,
    guard,
    notify,
    overhead,
    pgserver,
    profile,
    replica_answers,
    replica_procs,
    replicas,
    report,
    scale,
    standing,
    streams,
    swap,
)
from .common import ROOT, aggregate, machine

SECTIONS = (
    "swap",
    "overhead",
    "embeddings",
    "scale",
    "durability",
    "dashboard",
    "streams",
    "standing",
    "profile",
    "fleet",
    "replicas",
)


def repeat(times: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return aggregate([run() for _ in range(times)])


def when() -> dict[str, Any]:
    """When a measurement started and how busy the machine was: a part of a section may be
    measured again on its own, in another run than the rest."""
    stamp = machine()
    return {"measured": {"date": stamp["date"], "load_average": stamp["load_average"]}}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Background(threading.Thread):
    """A first-come-first-served run in a thread: it spends nearly all its time in the
    stub's simulated loads, so it runs alongside foreman's runs instead of after them."""

    def __init__(self, run: Callable[[], dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self._run = run
        self.result: dict[str, Any] | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.result = self._run()
        except Exception as exc:  # reported by the main thread
            self.error = exc

    def outcome(self) -> dict[str, Any]:
        self.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def swap_section(work: Path, quick: bool) -> dict[str, Any]:
    if quick:
        params = swap.Params(jobs=40, load=0.25, tokens=4, token_delay=0.005)
        span, hot_seconds, bound, reps = 4.0, 4.0, 1.0, 1
    else:
        params = swap.Params(jobs=200, load=2.0, tokens=10, token_delay=0.005)
        span, hot_seconds, bound, reps = 30.0, 15.0, 5.0, 3
    workloads = {
        "interleaved": swap.interleaved(params.jobs, seed=6),
        "arriving": swap.arriving(params.jobs, seed=6, span=span),
    }
    generation = swap.calibrate(work, params)
    fcfs = {
        name: Background(lambda n=name, j=jobs: swap.run_fcfs(work, f"fcfs-{n}", j, params))
        for name, jobs in workloads.items()
    }
    for thread in fcfs.values():
        thread.start()
    out: dict[str, Any] = {
        "params": {
            "jobs": params.jobs,
            "models": len(swap.MODELS),
            "load_s": params.load,
            "tokens": params.tokens,
            "token_delay_s": params.token_delay,
            "generation_ms": generation * 1000,
            "arrival_span_s": span,
            "foreman_repetitions": reps,
            "fcfs_repetitions": 1,
        }
    }
    for name, jobs in workloads.items():
        log(f"swap economy, {name}: foreman x{reps}")
        mine = repeat(
            reps, lambda n=name, j=jobs: swap.run_foreman(work, f"foreman-{n}", j, params)
        )
        out[name] = {"foreman": mine, "lower_bound": swap.lower_bound(jobs, params, generation)}
    hot = swap.hot_model(hot_seconds, rate=1.3 / generation, seed=6)
    out["starvation"] = {"jobs": len(hot), "hot_seconds": hot_seconds, "bound_s": bound}
    for label, flags in (("default_600s", ()), (f"bound_{bound:g}s", ("--max-wait", str(bound)))):
        log(f"swap economy, starvation bound: {label}")
        out["starvation"][label] = repeat(
            max(1, reps - 1), lambda f=flags: swap.run_foreman(work, "starve", hot, params, *f)
        )
    for name, thread in fcfs.items():
        log(f"swap economy, {name}: waiting for first-come-first-served")
        result = thread.outcome()
        out[name]["fcfs"] = aggregate([result])
        out[name]["makespan_ratio"] = (
            result["makespan_s"] / out[name]["foreman"]["makespan_s"]["median"]
        )
        out[name]["loads_ratio"] = result["loads"] / out[name]["foreman"]["loads"]["median"]
    return out


def overhead_section(work: Path, quick: bool) -> dict[str, Any]:
    reps = 1 if quick else 3
    log(f"overhead x{reps}")
    return repeat(reps, lambda: overhead.overhead(work, quick))


def embeddings_section(work: Path, quick: bool) -> dict[str, Any]:
    reps = 1 if quick else 3
    log(f"embeddings relay x{reps}")
    return repeat(reps, lambda: overhead.embeddings(work, quick))


def scale_section(work: Path, quick: bool) -> dict[str, Any]:
    reps = 1 if quick else 3
    out: dict[str, Any] = {}
    log(f"scale: POST /jobs enqueue rate x{reps}")
    out["enqueue"] = repeat(reps, lambda: scale.enqueue_rate(work, quick))
    log(f"scale: POST /jobs/batch enqueue rate x{reps}")
    out["batch_enqueue"] = repeat(reps, lambda: scale.batch_enqueue_rate(work, quick))
    log(f"scale: the HTTP stack's floor x{reps}")
    out["stack_floor"] = repeat(reps, lambda: scale.stack_floor(work, quick))
    sizes = (1_000, 100_000) if quick else (1_000, 100_000, 1_000_000)
    out["claim"] = {}
    for size in sizes:
        log(f"scale: claim latency with {size:,} queued")
        out["claim"][str(size)] = repeat(
            1 if size >= 1_000_000 else reps, lambda n=size: scale.claim_latency(work, n)
        )
    first, last = out["claim"][str(sizes[0])], out["claim"][str(sizes[-1])]
    out["claim_ratio_p50"] = last["claim_p50_ms"]["median"] / first["claim_p50_ms"]["median"]
    log("scale: memory with 100,000 queued")
    out["memory"] = repeat(1, lambda: scale.memory_with_queue(work, 100_000))
    log("scale: 1,000 concurrent waiting clients")
    out["clients"] = repeat(1, lambda: scale.many_clients(work, 1000))
    return out


def durability_section(work: Path, quick: bool) -> dict[str, Any]:
    reps = 1 if quick else 3
    log(f"durability at the store x{reps}")
    return repeat(reps, lambda: durability.durability(work, quick))


def dashboard_section(work: Path, quick: bool) -> dict[str, Any]:
    reps = 1 if quick else 3
    out: dict[str, Any] = {"summary": {}}
    for queued in (1_000, 10_000, 100_000):
        log(f"dashboard: summary read with {queued:,} queued")
        out["summary"][str(queued)] = repeat(
            1, lambda n=queued: dashboard.summary_cost(work, n, finished=10_000)
        )
    log(f"dashboard: worker throughput with five dashboards open x{reps}")
    out["viewers"] = repeat(reps, lambda: dashboard.throughput_with_viewers(work, quick))
    return out


def standing_section(work: Path, quick: bool) -> dict[str, Any]:
    reps = 1 if quick else 3
    queued = 20_000 if quick else 100_000
    log(f"standing: a position lookup with {queued:,} queued")
    out: dict[str, Any] = {"lookup": repeat(1, lambda: standing.lookup_cost(work, queued))}
    log(f"standing: worker throughput with {standing.WATCHED} positions watched x{reps}")
    out["watched"] = repeat(reps, lambda: standing.throughput_watched(work, quick))
    return out


def streams_section(work: Path, quick: bool) -> dict[str, Any]:
    reps = 1 if quick else 3
    log(f"event streams: {streams.JOBS} jobs with 0 and {streams.READERS} readers x{reps}")
    return repeat(reps, lambda: streams.drain_with_readers(work, quick))


def fleet_section(work: Path, quick: bool) -> dict[str, Any]:
    # a job of about 0.3 s: the arriving jobs keep a perfect schedule about half busy (with
    # lighter jobs every router mostly waits for arrivals); --quick divides every duration
    # by four
    if quick:
        params = fleet.Params(jobs=300, upstreams=3, load=0.5, tokens=5, token_delay=0.015, span=15)
        slot_params = fleet.SlotParams(jobs=40, slots=4, tokens=5, token_delay=0.02)
        reps = 1
    else:
        params = fleet.Params(jobs=300, upstreams=3, load=2.0, tokens=10, token_delay=0.03, span=60)
        slot_params = fleet.SlotParams(jobs=80, slots=4, tokens=10, token_delay=0.02)
        reps = 2
    first = fleet.burst(params.jobs, seed=13)
    workloads = {"interleaved": first, "arriving": fleet.spread(first, params.span, seed=13)}
    log("fleet: the stub's generation time")
    generation = fleet.generation_time(work, params)
    routers = {"round_robin": fleet.RoundRobin, "loaded_first": fleet.LoadedFirst}
    # the routers' runs wait out the stubs' simulated loads: they run alongside foreman's
    direct = {
        (name, label): Background(
            lambda n=name, j=jobs, r=router, lb=label: fleet.run_direct(
                work, f"fleet-{lb}-{n}", j, params, r
            )
        )
        for name, jobs in workloads.items()
        for label, router in routers.items()
    }
    for thread in direct.values():
        thread.start()
    out: dict[str, Any] = {
        "params": {
            "jobs": params.jobs,
            "upstreams": params.upstreams,
            "models": len(fleet.MODELS),
            "load_s": params.load,
            "tokens": params.tokens,
            "token_delay_s": params.token_delay,
            "generation_ms": generation * 1000,
            "arrival_span_s": params.span,
            "last_arrival_s": workloads["arriving"][-1].at,
            "foreman_repetitions": reps,
            "router_repetitions": 1,
        }
    }
    for name, jobs in workloads.items():
        log(f"fleet, {name}: foreman over {params.upstreams} upstreams x{reps}")
        mine = repeat(reps, lambda n=name, j=jobs: fleet.run_foreman(work, f"fleet-{n}", j, params))
        out[name] = {"foreman": mine, "lower_bound": fleet.bound(jobs, params, generation)}
    n = slot_params.slots
    slots: dict[str, Any] = {
        "params": {
            "jobs": slot_params.jobs,
            "parallel": n,
            "tokens": slot_params.tokens,
            "token_delay_s": slot_params.token_delay,
            "batch_slowdown": slot_params.batch_slowdown,
            "stub_ceiling": slot_params.ceiling,
            "repetitions": reps,
        }
    }
    for count in (1, n):
        log(f"fleet: slots = {count} on a stub with --parallel {n} x{reps}")
        slots[f"slots_{count}"] = repeat(
            reps, lambda c=count: fleet.run_slots(work, f"slots-{c}", c, slot_params)
        )
    slots["ratio"] = (
        slots[f"slots_{n}"]["jobs_per_s"]["median"] / slots["slots_1"]["jobs_per_s"]["median"]
    )
    out["slots"] = slots
    for (name, label), thread in direct.items():
        log(f"fleet, {name}: waiting for {label.replace('_', '-')}")
        out[name][label] = aggregate([thread.outcome()])
    for name in workloads:
        w = out[name]
        makespan = w["foreman"]["makespan_s"]["median"]
        w["round_robin_ratio"] = w["round_robin"]["makespan_s"]["median"] / makespan
        w["loaded_first_ratio"] = w["loaded_first"]["makespan_s"]["median"] / makespan
        w["bound_ratio"] = makespan / w["lower_bound"]["makespan_s"]
    return out


def replicas_section(work: Path, quick: bool) -> dict[str, Any]:
    reason = pgserver.missing()
    if reason is not None:
        log(f"replicas on PostgreSQL: skipped: {reason}")
        return {"skipped": reason}
    reps = 1 if quick else 3
    out: dict[str, Any] = {"measured": machine()}
    with pgserver.durable_cluster() as cluster:
        out |= replicas.store_figures(work, cluster, quick, repeat, log)
        log(f"replicas: NOTIFY round trips between two connections x{reps}")
        with pgserver.database(cluster) as url:
            out["notify"] = repeat(reps, lambda: notify.round_trips(url, quick))
        log(f"replicas: an answer's relay between replicas, in one process x{reps}")
        with pgserver.database(cluster) as url:
            started = when()
            out["relay"] = repeat(reps, lambda: answers.measure(url, quick)) | started
        out["processes"] = replica_processes(work, cluster, quick)
    return out


def replica_processes(work: Path, cluster: Any, quick: bool) -> dict[str, Any]:
    """The figures of whole replicas, or the one line saying why this build cannot run
    `foreman serve` on PostgreSQL."""
    with pgserver.database(cluster) as url:
        reason = replica_procs.refusal(url)
    if reason is not None:
        log(f"replicas, whole processes: skipped: {reason}")
        return {"skipped": reason}
    out: dict[str, Any] = {}
    log("replicas: added latency, foreman on PostgreSQL beside foreman on SQLite")
    with pgserver.database(cluster) as url:
        out["latency"] = repeat(1, lambda: replica_procs.added_latency(work, url, quick))
    log("replicas: throughput of one replica, then two")
    out["throughput"] = repeat(
        1, lambda: replica_procs.throughput(work, lambda: pgserver.database(cluster), quick)
    )
    log("replicas: failover after kill -9 of the replica holding an upstream's lease")
    out["failover"] = repeat(
        1, lambda: replica_procs.failover(work, lambda: pgserver.database(cluster), quick)
    )
    log("replicas: answers through the driving replica and through the other, side by side")
    started = when()
    out["crossing"] = (
        repeat(
            1 if quick else 3,
            lambda: replica_answers.crossing(work, lambda: pgserver.database(cluster), quick),
        )
        | started
    )
    return out


def profile_section(work: Path, quick: bool) -> dict[str, Any]:
    log("profile: where foreman's CPU goes (py-spy)")
    return profile.profile(work, quick)


RUNNERS: dict[str, Callable[[Path, bool], dict[str, Any]]] = {
    "swap": swap_section,
    "overhead": overhead_section,
    "embeddings": embeddings_section,
    "scale": scale_section,
    "durability": durability_section,
    "dashboard": dashboard_section,
    "standing": standing_section,
    "streams": streams_section,
    "profile": profile_section,
    "fleet": fleet_section,
    "replicas": replicas_section,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small workloads, one repetition")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections, of: {', '.join(SECTIONS)}",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where to write")
    parser.add_argument(
        "--accept",
        action="store_true",
        default=os.environ.get("BENCH_ACCEPT", "") not in ("", "0"),
        help="report figures more than 30%% worse than the baseline, but do not fail"
        " (also BENCH_ACCEPT=1)",
    )
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    # the regression guard's baseline: read before this run overwrites it
    baseline = guard.load_baseline(args.out / "benchmarks.json", ROOT)
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(), "mode": "quick" if args.quick else "full"}
    with tempfile.TemporaryDirectory(prefix="foreman-bench-") as tmp:
        work = Path(tmp)
        for name in only:
            results[name] = RUNNERS[name](work, args.quick)
    results["elapsed_s"] = time.perf_counter() - started
    results["machine"]["load_average_after"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "benchmarks.md").write_text(report.render(results))
    log(f"done in {results['elapsed_s']:.0f}s: {args.out / 'benchmarks.md'}")
    print(report.headline(results))
    status, verdict = guard.check(results, baseline, args.accept)
    print("\n" + verdict, file=sys.stderr if status else sys.stdout, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
