"""The targets the report holds foreman to, each computed from figures of one run.

Each row says what it measures, its goal, whether it was met, and the numbers it stands on
(`Figure`s): the regression guard (guard.py) compares those numbers between runs, so a row
and its guard never disagree about what a figure is or which way is better.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# issue 14, "the lean path": foreman's own cost down to the floor of its stack
LEAN = "issue 14"
FAIR = "issue 15"


@dataclass(frozen=True)
class Figure:
    """One number a target stands on. `slack` is an absolute change, in the figure's own
    unit, too small to mean anything on a shared machine (the guard ignores it)."""

    key: str
    label: str
    value: float
    higher_is_better: bool
    slack: float = 0.0


@dataclass(frozen=True)
class Target:
    key: str
    figure: str
    goal: str
    shown: str
    met: bool | None  # None: not measured in this run
    note: str = ""
    # the profile's workload (section 7) that shows what this figure is made of
    phase: str = ""
    figures: tuple[Figure, ...] = field(default=())
    # a comparison reported side by side, with no goal to meet
    comparison: bool = False


def med(entry: Any) -> float:
    """A figure's median over repetitions (or the figure itself, for one value)."""
    if isinstance(entry, dict) and "median" in entry:
        return float(entry["median"])
    return float(entry)


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _yes(met: bool) -> str:
    return "met" if met else "missed"


def _swap(r: dict[str, Any]) -> list[Target]:
    inter = r["swap"]["interleaved"]
    loads = med(inter["foreman"]["loads"])
    bound = inter["lower_bound"]["loads"]
    ratio = float(inter["makespan_ratio"])
    return [
        Target(
            "swap_loads",
            "loads on the interleaved burst",
            f"= lower bound ({bound})",
            _n(loads),
            loads <= bound,
            figures=(Figure("swap_loads", "swap: loads, interleaved burst", loads, False),),
        ),
        Target(
            "swap_makespan_ratio",
            "makespan, first-come-first-served / foreman",
            "≥ 3x",
            f"{ratio:.1f}x",
            ratio >= 3,
            figures=(Figure("swap_makespan_ratio", "swap: makespan FCFS / foreman", ratio, True),),
        ),
    ]


def _latency(r: dict[str, Any]) -> list[Target]:
    o = r["overhead"]
    n = o["non_streamed"]
    added = med(n["added_p50_ms"])
    figures = [Figure("added_p50_ms", "added latency p50, non-streamed (ms)", added, False, 0.5)]
    if "floor_added_p50_ms" in n:
        floor = med(n["floor_added_p50_ms"])
        gap = added - floor
        shown = f"{added:.2f} ms (floor {floor:.2f} ms, +{gap:.2f})"
        strict, lean = added <= 2 and gap <= 1, added <= 3 and gap <= 1
        figures.append(
            Figure("over_floor_p50_ms", "added latency p50 over the floor (ms)", gap, False, 0.5)
        )
    else:  # a run from before the floor was measured beside foreman
        shown = f"{added:.2f} ms"
        strict, lean = added <= 2, added <= 3
    first = med(o["streamed_first_chunk"]["added_p50_ms"])
    return [
        Target(
            "added_p50_ms",
            "added latency p50, non-streamed",
            "≤ 2 ms, and ≤ the bare-relay floor + 1 ms",
            shown,
            strict,
            note=f"{LEAN} asks ≤ 3 ms and ≤ floor + 1 ms ({_yes(lean)}); the earlier"
            " ≤ 2 ms is stricter and kept",
            phase="relaying",
            figures=tuple(figures),
        ),
        Target(
            "first_chunk_added_p50_ms",
            "added latency p50, first streamed chunk",
            "≤ 3 ms",
            f"{first:.2f} ms",
            first <= 3,
            note=LEAN,
            phase="relaying",
            figures=(
                Figure(
                    "first_chunk_added_p50_ms",
                    "added latency p50, first streamed chunk (ms)",
                    first,
                    False,
                    0.5,
                ),
            ),
        ),
    ]


def _embeddings(r: dict[str, Any]) -> list[Target]:
    e = r["embeddings"]
    ratio = med(e["ratio_requests_per_s"])
    if "ratio_p99" in e:
        p99 = med(e["ratio_p99"])
    else:  # a run from before the ratio was kept per repetition
        p99 = med(e["foreman"]["p99_ms"]) / med(e["direct"]["p99_ms"])
    clients = int(med(e["clients"]))
    return [
        Target(
            "embeddings_ratio",
            f"embeddings relay rate / direct ({clients} clients, chat queue busy)",
            "≥ 0.6x, p99 ≤ 3x direct",
            f"{ratio:.2f}x, p99 {p99:.1f}x",
            ratio >= 0.6 and p99 <= 3,
            note=LEAN,
            phase="embeddings",
            figures=(
                Figure("embeddings_ratio", "embeddings rate, foreman / direct", ratio, True),
                Figure("embeddings_p99_ratio", "embeddings p99, foreman / direct", p99, False),
            ),
        )
    ]


def _relay(r: dict[str, Any]) -> list[Target]:
    ratio = med(r["overhead"]["relay"]["ratio"])
    return [
        Target(
            "stream_relay_ratio",
            "stream relay, lines/s through foreman / direct",
            "≥ 0.7x",
            f"{ratio:.2f}x",
            ratio >= 0.7,
            note=LEAN,
            phase="streaming",
            figures=(
                Figure("stream_relay_ratio", "stream relay lines/s, foreman / direct", ratio, True),
            ),
        )
    ]


def _worker(r: dict[str, Any]) -> list[Target]:
    rate = med(r["overhead"]["worker_async"]["jobs_per_s"])
    return [
        Target(
            "worker_jobs_per_s",
            "jobs/s through one worker (instant upstream)",
            "≥ 400",
            _n(rate),
            rate >= 400,
            note=f"{LEAN}; replaces the earlier ≥ 300",
            phase="running",
            figures=(Figure("worker_jobs_per_s", "jobs/s through one worker", rate, True),),
        )
    ]


def _enqueue(r: dict[str, Any]) -> list[Target]:
    rate = med(r["scale"]["enqueue"]["jobs_per_s"])
    return [
        Target(
            "enqueue_jobs_per_s",
            "jobs/s accepted, single POST /jobs",
            "≥ 1,000",
            _n(rate),
            rate >= 1000,
            note=f"{LEAN} asks ≥ 700 ({_yes(rate >= 700)}); the earlier ≥ 1,000 is stricter"
            " and kept",
            phase="accepting",
            figures=(Figure("enqueue_jobs_per_s", "jobs/s accepted by POST /jobs", rate, True),),
        )
    ]


def _batch(r: dict[str, Any]) -> list[Target]:
    """jobs/s accepted by a batch submission (many jobs in one request, one commit), as
    `scale.batch_enqueue_rate` measures it; "not measured" when a run left it out."""
    batch = r["scale"].get("batch_enqueue")
    if not batch:
        return [
            Target(
                "batch_jobs_per_s",
                "jobs/s accepted, batch submission",
                "≥ 3,000",
                "not measured",
                None,
                note=LEAN,
                phase="accepting",
            )
        ]
    rate = med(batch["jobs_per_s"])
    return [
        Target(
            "batch_jobs_per_s",
            "jobs/s accepted, batch submission",
            "≥ 3,000",
            _n(rate),
            rate >= 3000,
            note=LEAN,
            phase="accepting",
            figures=(Figure("batch_jobs_per_s", "jobs/s accepted by a batch", rate, True),),
        )
    ]


def _scale(r: dict[str, Any]) -> list[Target]:
    s = r["scale"]
    ratio = float(s["claim_ratio_p50"])
    sizes = list(s["claim"])
    rss = med(s["memory"]["rss_queued_mb"])
    return [
        Target(
            "claim_ratio",
            f"claim latency, {int(sizes[-1]):,} / {int(sizes[0]):,} queued",
            "≤ 2x",
            f"{ratio:.2f}x",
            ratio <= 2,
            figures=(
                Figure("claim_ratio", "claim latency, largest / smallest queue", ratio, False),
            ),
        ),
        Target(
            "rss_queued_mb",
            "resident memory, 100k queued",
            "< 150 MB",
            f"{rss:.0f} MB",
            rss < 150,
            figures=(Figure("rss_queued_mb", "resident memory, 100k queued (MB)", rss, False),),
        ),
    ]


def _streams(r: dict[str, Any]) -> list[Target]:
    s = r["streams"]
    ratio, goal = med(s["ratio"]), med(s["goal_ratio"])
    readers = int(med(s["readers_200"]["readers"]))
    return [
        Target(
            "event_readers_ratio",
            f"drain time, {readers} readers on /jobs/events / none",
            f"≤ {goal:g}x",
            f"{ratio:.2f}x",
            ratio <= goal,
            figures=(
                Figure("event_readers_ratio", "drain time with event readers / none", ratio, False),
            ),
        )
    ]


def _fleet(r: dict[str, Any]) -> list[Target]:
    f = r["fleet"]
    out: list[Target] = []
    for name, label in (("interleaved", "burst"), ("arriving", "arriving")):
        w = f.get(name)
        if not w:
            continue
        rows = (
            ("round_robin_ratio", "makespan, round-robin / foreman", "≥ 3x", 3.0, True),
            ("loaded_first_ratio", "makespan, loaded-first / foreman", "≥ 1.5x", 1.5, True),
            ("bound_ratio", "makespan, foreman / lower bound", "≤ 1.3x", 1.3, False),
        )
        for key, what, goal, bound, higher in rows:
            value = float(w[key])
            shown = f"{value:.1f}x" if higher else f"{value:.2f}x"
            met = value >= bound if higher else value <= bound
            fkey = f"fleet_{name}_{key}"
            figure = Figure(fkey, f"fleet {label}: {what}", value, higher)
            out.append(Target(fkey, f"fleet {label}: {what}", goal, shown, met, figures=(figure,)))
    slots = f.get("slots")
    if slots:
        n = slots["params"]["parallel"]
        ratio = float(slots["ratio"])
        out.append(
            Target(
                "slots_ratio",
                f"throughput, slots = {n} / slots = 1",
                "≥ 2.5x",
                f"{ratio:.1f}x",
                ratio >= 2.5,
                figures=(Figure("slots_ratio", f"throughput, slots = {n} / 1", ratio, True),),
            )
        )
    return out


def _standing(r: dict[str, Any]) -> list[Target]:
    lk, w = r["standing"]["lookup"], r["standing"]["watched"]
    queued = int(med(lk["queued"]))
    lookup = med(lk["lookup_last_p50_ms"])
    ratio = med(w["ratio"])
    return [
        Target(
            "position_lookup_ms",
            f"position lookup, {queued:,} queued (the longest count)",
            "< 5 ms" if queued >= 100_000 else "< 5 ms at 100,000 queued",
            f"{lookup:.2f} ms",
            lookup < 5 if queued >= 100_000 else None,
            note=FAIR,
            phase="",
            figures=(Figure("position_lookup_ms", "position lookup (ms)", lookup, False, 1.0),),
        ),
        Target(
            "watched_ratio",
            "worker throughput, 100 positions watched / none",
            "≥ 0.9x",
            f"{ratio:.2f}x",
            ratio >= 0.9,
            note=FAIR,
            phase="running",
            figures=(Figure("watched_ratio", "throughput with positions watched", ratio, True),),
        ),
    ]


REPLICAS = "issue 16"


def _compared(key: str, figure: str, shown: str, *figures: Figure) -> Target:
    return Target(
        key, figure, "side by side", shown, None, note=REPLICAS, figures=figures, comparison=True
    )


def _unmeasured(key: str, figure: str, goal: str) -> Target:
    return Target(key, figure, goal, "not measured (section 11 says why)", None, note=REPLICAS)


def _replicas(r: dict[str, Any]) -> list[Target]:
    rep = r["replicas"]
    if "skipped" in rep:
        return [
            _unmeasured("replicas_store", "replicas: PostgreSQL beside SQLite", "side by side"),
            _unmeasured("failover_s", "replicas: failover after kill -9", "< 5 s, nothing lost"),
        ]
    enq = rep["enqueue"]
    pg_rate, lite_rate = med(enq["postgres"]["jobs_per_s"]), med(enq["sqlite"]["jobs_per_s"])
    out = [
        _compared(
            "replicas_enqueue_ratio",
            f"enqueue through the Store ({int(med(enq['submitters']))} submitters),"
            " PostgreSQL / SQLite",
            f"{_n(pg_rate)} / {_n(lite_rate)} jobs/s ({pg_rate / lite_rate:.2f}x)",
            # SQLite's group commits swing with the disk's moods on a shared machine
            Figure(
                "replicas_enqueue_ratio",
                "enqueue, PostgreSQL / SQLite",
                pg_rate / lite_rate,
                True,
                0.05,
            ),
        )
    ]
    for queued, c in rep["claim"].items():
        pg, lite = med(c["postgres"]["claim_p50_ms"]), med(c["sqlite"]["claim_p50_ms"])
        pg99, lite99 = med(c["postgres"]["claim_p99_ms"]), med(c["sqlite"]["claim_p99_ms"])
        figures: tuple[Figure, ...] = ()
        if int(queued) >= 100_000:
            label = f"claim p50, {int(queued):,} queued, PostgreSQL / SQLite"
            figures = (Figure("replicas_claim_ratio", label, pg / lite, False),)
        out.append(
            _compared(
                f"replicas_claim_{queued}",
                f"claim latency, {int(queued):,} queued, PostgreSQL / SQLite",
                f"p50 {pg:.2f} / {lite:.2f} ms ({pg / lite:.1f}x),"
                f" p99 {pg99:.2f} / {lite99:.2f} ms",
                *figures,
            )
        )
    note = rep["notify"]["synced"]
    p50 = med(note["p50_ms"])
    out.append(
        _compared(
            "replicas_notify",
            "NOTIFY round trip between two connections (per relayed token)",
            f"p50 {p50:.2f} ms, p99 {med(note['p99_ms']):.2f} ms,"
            f" {_n(med(note['messages_per_s']))} messages/s",
            Figure("replicas_notify_p50_ms", "NOTIFY round trip p50 (ms)", p50, False, 0.5),
        )
    )
    if "relay" in rep:
        out.append(_relay_between(rep["relay"]))
    return out + _replica_processes(rep["processes"])


def _relay_between(relay: dict[str, Any]) -> Target:
    paced, unpaced = relay["paced_5ms"], relay["unpaced"]
    p50 = med(paced["token_p50_ms"])
    return _compared(
        "replicas_relay",
        "an answer's relay between replicas, in one process (NOTIFY and back), per token",
        f"p50 {p50:.2f} ms, p99 {med(paced['token_p99_ms']):.2f} ms (a token every"
        f" {med(paced['pace_ms']):.0f} ms); {_n(med(unpaced['tokens_per_s']))} tokens/s unpaced",
        Figure("replicas_relay_token_p50_ms", "relay between replicas p50 (ms)", p50, False, 0.5),
    )


def _crossing(c: dict[str, Any]) -> list[Target]:
    """The added latency per request and per token of an answer through the replica that
    does not drive the upstream, against the same answer through the one that does."""
    req, tok = c["request"], c["token"]
    added = med(req["added_p50_ms"])
    line = med(tok["other_line_extra_p50_ms"])
    first = med(tok["first_added_p50_ms"])
    return [
        _compared(
            "replicas_crossing_request",
            "added latency per request, through the other replica - the driving one"
            " (non-streamed /api/chat)",
            f"p50 {med(req['other_p50_ms']):.2f} - {med(req['driving_p50_ms']):.2f}"
            f" = {added:+.2f} ms, p99 {med(req['added_p99_ms']):+.2f} ms",
            Figure(
                "replicas_crossing_request_ms",
                "added latency per request through the other replica, p50 (ms)",
                added,
                False,
                1.0,
            ),
        ),
        _compared(
            "replicas_crossing_token",
            f"added delay per streamed line through the other replica"
            f" (a token every {med(tok['pace_ms']):.0f} ms)",
            f"p50 {line:+.2f} ms, p99 {med(tok['other_line_extra_p99_ms']):+.2f} ms"
            f" (driving's own p99 {med(tok['driving_line_extra_p99_ms']):+.2f} ms);"
            f" first line {first:+.2f} ms",
            Figure(
                "replicas_crossing_line_ms",
                "added delay per streamed line through the other replica, p50 (ms)",
                line,
                False,
                1.0,
            ),
            Figure(
                "replicas_crossing_first_ms",
                "added time to the first line through the other replica, p50 (ms)",
                first,
                False,
                1.0,
            ),
        ),
    ]


def _replica_processes(p: dict[str, Any]) -> list[Target]:
    if "skipped" in p:
        return [
            _unmeasured(
                "replicas_added_ms",
                "added latency p50, foreman on PostgreSQL - on SQLite",
                "side by side",
            ),
            _unmeasured("replicas_throughput", "throughput, two replicas / one", "side by side"),
            _unmeasured("failover_s", "failover after kill -9", "< 5 s, nothing lost"),
            _unmeasured(
                "replicas_crossing",
                "added latency per request and per token, through the other replica",
                "side by side",
            ),
        ]
    lat, thr, fo = p["latency"], p["throughput"], p["failover"]
    gap = med(lat["postgres_over_sqlite_p50_ms"])
    ratio = med(thr["ratio"])
    seconds, lost = med(fo["failover_s"]), int(med(fo["lost"]))
    return [
        _compared(
            "replicas_added_ms",
            "added latency p50, foreman on PostgreSQL - on SQLite",
            f"{med(lat['postgres_added_p50_ms']):.2f} - {med(lat['sqlite_added_p50_ms']):.2f}"
            f" = {gap:+.2f} ms",
            Figure("replicas_added_ms", "added latency, PostgreSQL - SQLite (ms)", gap, False, 0.5),
        ),
        _compared(
            "replicas_throughput",
            "throughput, two replicas / one (two instant upstreams)",
            f"{_n(med(thr['replicas_2']['jobs_per_s']))}"
            f" / {_n(med(thr['replicas_1']['jobs_per_s']))} jobs/s ({ratio:.2f}x)",
            Figure("replicas_throughput_ratio", "throughput, two replicas / one", ratio, True),
        ),
        Target(
            "failover_s",
            "failover after kill -9 (until a job completes on its upstream again)",
            "< 5 s, nothing lost",
            f"{seconds:.2f} s, {lost} lost of {int(med(fo['accepted']))}",
            seconds < 5 and lost == 0,
            note=REPLICAS,
            figures=(Figure("failover_s", "failover after kill -9 (s)", seconds, False, 1.0),),
        ),
        *(_crossing(p["crossing"]) if "crossing" in p else []),
    ]


# (the section a row needs, its rows), in the order of the report's table
ROWS: tuple[tuple[str, Callable[[dict[str, Any]], list[Target]]], ...] = (
    ("swap", _swap),
    ("overhead", _latency),
    ("embeddings", _embeddings),
    ("overhead", _relay),
    ("overhead", _worker),
    ("scale", _enqueue),
    ("scale", _batch),
    ("scale", _scale),
    ("streams", _streams),
    ("fleet", _fleet),
    ("standing", _standing),
    ("replicas", _replicas),
)


def targets(results: dict[str, Any], lenient: bool = False) -> list[Target]:
    """Every target the run measured. `lenient` skips a row the results cannot build (an
    older run's JSON, read as the guard's baseline, may lack a figure)."""
    out: list[Target] = []
    for section, rows in ROWS:
        if not results.get(section):
            continue
        try:
            out += rows(results)
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
            if not lenient:
                raise
    return out


def figures(results: dict[str, Any], lenient: bool = False) -> dict[str, Figure]:
    """The numbers every target stands on, by key; a figure that is not a finite number
    (a run that measured nothing) is left out."""
    return {
        f.key: f
        for t in targets(results, lenient)
        for f in t.figures
        if isinstance(f.value, float | int) and math.isfinite(f.value)
    }
