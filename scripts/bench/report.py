"""docs/benchmarks.md from the results: tables, ratios, and the issue's targets."""

from __future__ import annotations

import math
from typing import Any

from .targets import Target, med, targets

TARGETS_NOTE = (
    "Targets are what the project aims for; they are reported here, never asserted in tests."
    " Each is computed from figures measured in this run. *Whose goal*: the goals of issue 14"
    " (the lean path) replace earlier ones for the same figure, except where the earlier one"
    " is stricter, which is kept (and the row says how the issue's goal fares)."
)


def _num(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def fig(entry: Any, digits: int = 1) -> str:
    """A figure as `median (min-max)`, or just the number when there was one run."""
    if isinstance(entry, dict) and "median" in entry:
        med, low, high = entry["median"], entry["min"], entry["max"]
        if len(entry.get("runs", [])) <= 1 or low == high:
            return _num(med, digits)
        return f"{_num(med, digits)} ({_num(low, digits)}-{_num(high, digits)})"
    if isinstance(entry, int | float):
        return _num(float(entry), digits)
    return str(entry)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def headline(results: dict[str, Any]) -> str:
    lines = ["", "met  target: measured (goal)"]
    for t in targets(results):
        mark = "yes" if t.met else ("NO" if t.met is not None else "-")
        mark = "vs" if t.comparison else mark
        lines.append(f"{mark:4s} {t.figure}: {t.shown} ({t.goal})")
    return "\n".join(lines)


def _met_cell(t: Target) -> str:
    if t.comparison:
        return "compared"
    return "not measured" if t.met is None else ("yes" if t.met else "**no**")


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    pk = m["packages"]
    quick = results["mode"] == "quick"
    out: list[str] = [
        "# foreman benchmarks",
        "",
        "Written by `make bench`"
        + (" in `--quick` mode (small workloads, one repetition)" if quick else "")
        + f" on {m['date']}, in {results['elapsed_s'] / 60:.1f} minutes. Rerun it on your"
        " own machine; every figure is measured side by side in one run, over loopback,"
        " against the stub Ollama (`foreman stub`), with real processes. A figure shown as"
        " `a (b-c)` is the median `a` of several repetitions, with their min `b` and max `c`.",
        "",
        *_table(
            ["machine", ""],
            [
                ["CPU", f"{m['cpu']}, {m['cores']} cores"],
                ["memory", f"{m['memory_gb']} GB"],
                ["OS", m["os"]],
                ["Python", m["python"]],
                ["SQLite", m["sqlite"]],
                [
                    "packages",
                    ", ".join(f"{name} {version}" for name, version in pk.items() if version),
                ],
                ["foreman commit", str(m.get("commit"))],
                [
                    "load average (start, end)",
                    f"{m['load_average']:.2f}, {m.get('load_average_after', float('nan')):.2f}",
                ],
            ],
        ),
        "",
        "## Against the targets",
        "",
        TARGETS_NOTE,
        "",
        *_table(
            ["figure", "target", "measured", "met", "whose goal"],
            [[t.figure, t.goal, t.shown, _met_cell(t), t.note] for t in targets(results)],
        ),
        "",
        "Against other proxies (LiteLLM's proxy on the same stub, side by side with foreman):"
        " [benchmarks-peers.md](benchmarks-peers.md), written by `make bench-peers`.",
        "",
    ]
    if "swap" in results:
        out += _swap(results["swap"])
    if "overhead" in results:
        out += _overhead(results["overhead"])
    if "embeddings" in results:
        out += _embeddings(results["embeddings"])
    if "scale" in results:
        out += _scale(results["scale"])
    if "durability" in results:
        out += _durability(results["durability"])
    if "dashboard" in results:
        out += _dashboard(results["dashboard"])
    if "profile" in results:
        out += _profile(results["profile"])
    if "streams" in results:
        out += _streams(results["streams"])
    if "fleet" in results:
        out += _fleet(results["fleet"])
    if "standing" in results:
        out += _standing(results["standing"])
    if "replicas" in results:
        out += _replicas(results["replicas"])
    out += _missed(results)
    out += _notes()
    return "\n".join(out) + "\n"


def _swap(s: dict[str, Any]) -> list[str]:
    p = s["params"]
    out = [
        "## 1. Swap economy",
        "",
        f"{p['jobs']} jobs over {p['models']} models in a seeded random interleaving; the stub"
        f" charges {p['load_s']:g} s per model swap and generates {p['tokens']} tokens"
        f" {p['token_delay_s'] * 1000:g} ms apart ({p['generation_ms']:.0f} ms per job as"
        " measured straight at the stub). *Interleaved*: every job arrives at once."
        f" *Arriving*: the jobs arrive as a Poisson process over {p['arrival_span_s']:g} s,"
        " during the run. foreman gets each job as a synchronous `/api/generate` request at"
        " its arrival time; first-come-first-served (FCFS) sends the same jobs straight to the"
        " stub one at a time in arrival order, which is what Ollama does with one parallel"
        " slot; the lower bound is one load per model with every generation back to back. A"
        " job's wait runs from its arrival to its complete answer.",
        "",
        f"Repetitions: foreman {p['foreman_repetitions']}, FCFS {p['fcfs_repetitions']}. An"
        " FCFS run at this swap cost takes minutes (one swap for most jobs), so it runs once"
        " per workload, on its own stub, alongside foreman's runs: both spend nearly all their"
        " time waiting out the stub's simulated loads. FCFS is deterministic in its loads"
        " (one per change of model in arrival order); its timings vary by milliseconds.",
        "",
    ]
    for name in ("interleaved", "arriving"):
        w = s[name]
        f, c, lb = w["foreman"], w["fcfs"], w["lower_bound"]
        out += [f"### {name.capitalize()}", ""]
        out += _table(
            ["", "loads", "makespan s", "wait p50 ms", "wait p99 ms", "worst wait ms"],
            [
                [
                    "foreman",
                    fig(f["loads"], 0),
                    fig(f["makespan_s"]),
                    fig(f["wait_p50_ms"], 0),
                    fig(f["wait_p99_ms"], 0),
                    fig(f["wait_max_ms"], 0),
                ],
                [
                    "FCFS",
                    fig(c["loads"], 0),
                    fig(c["makespan_s"]),
                    fig(c["wait_p50_ms"], 0),
                    fig(c["wait_p99_ms"], 0),
                    fig(c["wait_max_ms"], 0),
                ],
                ["lower bound", str(lb["loads"]), _num(lb["makespan_s"]), "", "", ""],
            ],
        )
        out += [
            "",
            f"Makespan ratio FCFS / foreman: **{w['makespan_ratio']:.1f}x**; loads"
            f" {w['loads_ratio']:.1f}x as many; foreman's makespan is"
            f" {med(f['makespan_s']) / lb['makespan_s']:.2f}x the lower bound.",
            "",
            "Wait per model, p50 / p99 in ms:",
            "",
        ]
        rows = []
        for model in f["by_model"]:
            fm, cm = f["by_model"][model], c["by_model"].get(model, {})
            rows.append(
                [
                    model,
                    fig(fm["jobs"], 0),
                    f"{fig(fm['wait_p50_ms'], 0)} / {fig(fm['wait_p99_ms'], 0)}",
                    f"{fig(cm.get('wait_p50_ms', 'n/a'), 0)}"
                    f" / {fig(cm.get('wait_p99_ms', 'n/a'), 0)}",
                ]
            )
        out += _table(["model", "jobs", "foreman", "FCFS"], rows)
        out.append("")
    st = s["starvation"]
    labels = [key for key, value in st.items() if isinstance(value, dict)]
    out += [
        "### The starvation bound",
        "",
        f"A hot model arrives faster than it can be served for {st['hot_seconds']:g} s"
        f" ({st['jobs']} jobs in all); each of the three other models gets one job early on."
        " Drain-by-model alone keeps serving the hot model while it has work, so the other"
        " three wait out its whole backlog; the starvation bound (`--max-wait`) lets a job"
        " that waited too long run next, at the price of extra swaps.",
        "",
    ]
    rows = []
    for label in labels:
        r = st[label]
        cold = [m for m in r["by_model"] if not m.startswith("llama3")]
        worst_cold = max(med(r["by_model"][m]["wait_max_ms"]) for m in cold) if cold else 0
        hot = r["by_model"].get("llama3") or next(iter(r["by_model"].values()))
        rows.append(
            [
                "--max-wait 600 (default)"
                if label.startswith("default")
                else f"--max-wait {st['bound_s']:g}",
                fig(r["loads"], 0),
                fig(r["makespan_s"]),
                _num(worst_cold, 0),
                fig(hot["wait_max_ms"], 0),
            ]
        )
    out += _table(
        ["", "loads", "makespan s", "worst wait, other models ms", "worst wait, hot model ms"],
        rows,
    )
    out.append("")
    return out


def _overhead(o: dict[str, Any]) -> list[str]:
    n, st = o["non_streamed"], o["streamed_first_chunk"]
    relay = o["relay"]

    def row(label: str, e: dict[str, Any], name: str, prefix: str) -> list[str]:
        return [
            label,
            fig(e["direct_p50_ms"], 2),
            fig(e[f"{name}_p50_ms"], 2),
            fig(e[f"{prefix}added_p50_ms"], 2),
            fig(e["direct_p99_ms"], 2),
            fig(e[f"{name}_p99_ms"], 2),
            fig(e[f"{prefix}added_p99_ms"], 2),
        ]

    rows = [row("foreman, non-streamed, whole answer (ms)", n, "foreman", "")]
    floor_text: list[str] = []
    if "floor_p50_ms" in n:
        rows.append(
            row("bare relay (the floor), non-streamed, whole answer (ms)", n, "floor", "floor_")
        )
        floor_text = [
            "",
            "The floor is `scripts/bench/floor.py`: the same HTTP stack as foreman (Quart-Trio"
            " on Hypercorn, httpx to the stub) relaying the request and its answer, with no"
            " store, queue or worker. It runs beside foreman on the same stub, and its blocks"
            " of requests alternate with foreman's and the direct ones, from the same client."
            f" foreman adds {fig(n['over_floor_p50_ms'], 2)} ms at the median over the floor.",
        ]
    rows.append(row("foreman, streamed, first chunk (ms)", st, "foreman", ""))
    return [
        "## 2. Overhead",
        "",
        "A stub that answers at once (no load or token delay, 8 tokens). Serial requests"
        " from one client, alternating blocks of 50 straight to the stub, through foreman and"
        " through the bare relay. Through foreman every request is a job: stored, claimed by"
        " the worker, relayed, its end stored.",
        "",
        *_table(
            [
                "",
                "direct p50",
                "relayed p50",
                "added p50",
                "direct p99",
                "relayed p99",
                "added p99",
            ],
            rows,
        ),
        *floor_text,
        "",
        *_table(
            ["throughput of the one worker", "jobs/s"],
            [
                [
                    f"synchronous: {fig(o['worker_sync']['clients'], 0)} clients sending"
                    " non-streamed requests",
                    fig(o["worker_sync"]["jobs_per_s"], 0),
                ],
                [
                    "asynchronous: jobs queued with POST /jobs, then drained",
                    fig(o["worker_async"]["jobs_per_s"], 0),
                ],
                [
                    "the stub alone, one client, one request at a time",
                    fig(o["stub_alone_jobs_per_s"], 0),
                ],
            ],
        ),
        "",
        f"Streaming relay: one stream of {fig(relay['chunks'], 0)} NDJSON lines from a stub"
        " emitting them as fast as it can: "
        f"{fig(relay['direct_chunks_per_s'], 0)} lines/s direct,"
        f" {fig(relay['foreman_chunks_per_s'], 0)} lines/s through foreman"
        f" ({fig(relay['ratio'], 2)} of direct).",
        "",
    ]


def _embeddings(e: dict[str, Any]) -> list[str]:
    d, f = e["direct"], e["foreman"]
    return [
        "## 3. Embeddings relay",
        "",
        f"{fig(e['clients'], 0)} concurrent clients sending `/api/embed` requests for a few"
        " seconds, straight to the stub and then through foreman, while the chat queue is"
        " busy (chat jobs queued with POST /jobs keep the worker and the stub's chat slot"
        f" working throughout: {'yes' if e['chat_queue_busy_throughout'] else 'no'}).",
        "",
        *_table(
            ["", "requests/s", "p50 ms", "p99 ms"],
            [
                ["direct", fig(d["requests_per_s"], 0), fig(d["p50_ms"]), fig(d["p99_ms"])],
                ["foreman", fig(f["requests_per_s"], 0), fig(f["p50_ms"]), fig(f["p99_ms"])],
            ],
        ),
        "",
        f"foreman relays {fig(e['ratio_requests_per_s'], 2)} of the direct rate, at"
        f" {fig(e.get('ratio_p99', 'n/a'), 1)}x its p99; the"
        " embeddings never wait behind a chat job or a swap, but they share one Python"
        " process (and its CPU) with the worker and every other request.",
        "",
    ]


def _batch_enqueue(s: dict[str, Any]) -> list[str]:
    """The batch route's enqueue rate, when the run measured it."""
    batch = s.get("batch_enqueue")
    if batch is None:
        return []
    return [
        f"**Batch enqueue rate.** POST /jobs/batch from {fig(batch['submitters'], 0)}"
        f" concurrent submitters, {fig(batch['batch'], 0)} jobs a batch"
        f" ({fig(batch['jobs'], 0)} jobs, each batch one commit on disk before its 202):"
        f" **{fig(batch['jobs_per_s'], 0)} jobs/s**.",
        "",
    ]


def _scale(s: dict[str, Any]) -> list[str]:
    enq, floor = s["enqueue"], s["stack_floor"]
    rows = [
        [
            f"{int(size):,}",
            fig(c["claim_p50_ms"], 3),
            fig(c["claim_p99_ms"], 3),
            fig(c["db_mb"], 0),
        ]
        for size, c in s["claim"].items()
    ]
    mem, cl = s["memory"], s["clients"]
    return [
        "## 4. Scale",
        "",
        f"**Enqueue rate.** POST /jobs from {fig(enq['submitters'], 0)} concurrent"
        f" submitters ({fig(enq['jobs'], 0)} jobs, the default durability: each job is on"
        f" disk before its 202): **{fig(enq['jobs_per_s'], 0)} jobs/s**. The same client"
        " against the same HTTP stack (Quart-Trio on Hypercorn) with a route that only reads"
        f" the body and answers 202: {fig(floor['trivial_post_per_s'], 0)} requests/s (the"
        " bare relay's latency through that stack is in section 2).",
        "",
        *_batch_enqueue(s),
        "**Claim latency.** `SyncStore.claim` (the scheduling rule and its commit) on a"
        " database holding that many queued jobs over four models and three priorities,"
        " median and p99 of 300 claims:",
        "",
        *_table(["queued", "claim p50 ms", "claim p99 ms", "database MB"], rows),
        "",
        f"Largest / smallest at the median: {s['claim_ratio_p50']:.2f}x.",
        "",
        f"**Memory.** foreman's resident set: {fig(mem['rss_empty_mb'], 0)} MB on an empty"
        f" database, {fig(mem['rss_queued_mb'], 0)} MB with {int(med(mem['queued'])):,} jobs"
        f" queued (peak {fig(mem['peak_queued_mb'], 0)} MB).",
        "",
        f"**Waiting clients.** {fig(cl['clients'], 0)} synchronous requests at once, each on"
        f" its own connection, against an instant stub: {fig(cl['completed_ok'], 0)} completed"
        f" with 200 in {fig(cl['elapsed_s'])} s; resident memory"
        f" {fig(cl['rss_before_mb'], 0)} MB before, {fig(cl['rss_peak_mb'], 0)} MB at the peak.",
        "",
    ]


def _durability(d: dict[str, Any]) -> list[str]:
    w, sub = d["worker_path"], d["submissions"]
    return [
        "## 5. What durability costs at the store",
        "",
        "Measured on `SyncStore` directly, without HTTP. Per job through the worker (claim,"
        " then the end):",
        "",
        *_table(
            ["how commits reach the disk", "µs per job"],
            [
                [
                    "foreman: the claim unsynced, the end synced (fsync) before the answer",
                    fig(w["foreman_us_per_job"], 0),
                ],
                [
                    "every commit synced (synchronous = FULL throughout)",
                    fig(w["all_synced_us_per_job"], 0),
                ],
                [
                    "no commit synced (synchronous = NORMAL: survives a crash of foreman, not a"
                    " power cut)",
                    fig(w["none_synced_us_per_job"], 0),
                ],
            ],
        ),
        "",
        *_table(
            ["submissions", "µs per job"],
            [
                ["one transaction (one fsync) per job", fig(sub["one_per_commit_us_per_job"], 0)],
                [
                    f"group commit, {fig(sub['group'], 0)} jobs per transaction",
                    fig(sub["grouped_us_per_job"], 0),
                ],
            ],
        ),
        "",
        "See the Durability section of docs/architecture.md for what each commit promises.",
        "",
    ]


def _dashboard(d: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"{int(size):,}",
            fig(c["overview_p50_ms"], 2),
            fig(c["spacing_s"], 2),
            fig(c["activity_p50_ms"], 2),
            fig(c["activity_every_s"], 2),
        ]
        for size, c in d["summary"].items()
    ]
    v = d["viewers"]
    return [
        "## 6. What an open dashboard costs",
        "",
        "**The summary's reads**, with that many jobs queued over four models and"
        f" {int(med(next(iter(d['summary'].values()))['finished'])):,} jobs ended in the"
        " last day. After each change the board reads `SyncStore.overview` (waiting jobs"
        " per model, the last 40 swaps, the running job) and waits ten times that before"
        " the next summary (0.25 to 5 s); it reads the 24 h headline (`activity`) at most"
        " once per twenty times its cost (at least a second). One read serves every open"
        " page.",
        "",
        *_table(
            ["queued", "overview p50 ms", "spacing s", "headline p50 ms", "headline every s"],
            rows,
        ),
        "",
        f"**The worker with pages watching.** {fig(v['jobs'], 0)} queued jobs drained by"
        " the worker against an instant stub: "
        f"{fig(v['viewers_0']['jobs_per_s'], 0)} jobs/s with no dashboard open,"
        f" {fig(v['viewers_5']['jobs_per_s'], 0)} jobs/s with five pages on /queue/events"
        f" ({fig(v['ratio'], 2)}x), each page receiving"
        f" {fig(v['viewers_5']['kb_per_viewer_per_job'], 2)} KB per job.",
        "",
    ]


def _standing(s: dict[str, Any]) -> list[str]:
    lk, w = s["lookup"], s["watched"]
    return [
        "## 10. Where a job stands",
        "",
        f"**A position lookup**, as GET /jobs/{{id}} makes it, with {int(med(lk['queued'])):,}"
        " jobs queued over four models and three priorities: counting the jobs of its model"
        " ahead of the last one of a model (every other job of the model is ahead:"
        f" {int(med(lk['ahead_of_last'])):,}) takes {fig(lk['lookup_last_p50_ms'], 2)} ms"
        f" at the median ({fig(lk['lookup_last_p99_ms'], 2)} ms p99); halfway along,"
        f" {fig(lk['lookup_middle_p50_ms'], 2)} ms. The forecast every lookup shares (made"
        f" again at most once a second) reads and plays the queue in"
        f" {fig(lk['forecast_p50_ms'], 2)} ms.",
        "",
        f"**The worker with positions watched.** {fig(w['jobs'], 0)} queued jobs drained by"
        " the worker against an instant stub: "
        f"{fig(w['watched_0']['jobs_per_s'], 0)} jobs/s with no stream open,"
        f" {fig(w['watched_100']['jobs_per_s'], 0)} jobs/s with the last 100 jobs' event"
        f" streams open, each sending its `position` as it moves ({fig(w['ratio'], 2)}x).",
        "",
    ]


def _streams(s: dict[str, Any]) -> list[str]:
    quiet, busy = s["readers_0"], s["readers_200"]
    readers = int(med(busy["readers"]))
    return [
        "## 8. What open event streams cost",
        "",
        f"{fig(s['jobs'], 0)} jobs submitted one after another with POST /jobs and drained"
        " by the worker against an instant stub, timed from the first submission to the"
        f" last job's end: with no stream open, then with {readers} readers on /jobs/events"
        " (in a process of their own, reading everything as it comes; each received"
        f" {fig(busy['events_per_reader'], 0)} job events, every change of every job).",
        "",
        *_table(
            ["readers on /jobs/events", "submit and drain s", "foreman's CPU s"],
            [
                ["none", fig(quiet["elapsed_s"], 2), fig(quiet.get("foreman_cpu_s", "n/a"), 2)],
                [
                    str(readers),
                    fig(busy["elapsed_s"], 2),
                    fig(busy.get("foreman_cpu_s", "n/a"), 2),
                ],
            ],
        ),
        "",
        f"With {readers} readers / with none: **{fig(s['ratio'], 2)}x** (goal ≤"
        f" {med(s['goal_ratio']):g}x). Each change is encoded once for every stream, and a"
        " queue-wide stream gathers changes for a tenth of a second before it writes them"
        " (longer with many open: together they write about 1,000 times a second at most,"
        f" so {readers} streams gather for {readers / 1000:g} s), rather than writing once"
        " per change.",
        "",
    ]


def _per_upstream(entry: dict[str, Any]) -> str:
    return " / ".join(fig(value, 0) for value in entry.values())


def _fleet(f: dict[str, Any]) -> list[str]:
    p = f["params"]
    n = p["upstreams"]
    out = [
        "## 9. Fleet",
        "",
        f"{p['jobs']} jobs over {p['models']} models in a seeded random interleaving, on {n}"
        f" stub upstreams (separate processes, one slot each) that charge {p['load_s']:g} s"
        f" per model swap and generate {p['tokens']} tokens {p['token_delay_s'] * 1000:g} ms"
        f" apart ({p['generation_ms']:.0f} ms per job as measured straight at a stub)."
        " *Interleaved*: every job arrives at once. *Arriving*: the same jobs, in the same"
        f" order, arrive as a seeded Poisson process over about {p['arrival_span_s']:g} s"
        f" (the last at {p['last_arrival_s']:.1f} s). Each job is a synchronous"
        " `/api/generate` request sent at its arrival time. The job length is chosen so"
        " that the arriving jobs bring"
        f" {f['arriving']['lower_bound']['work_split_s']:.0f} s of work per upstream (loads"
        f" included, split perfectly) over those {p['last_arrival_s']:.0f} s: with much"
        " lighter jobs every router would mostly wait for arrivals.",
        "",
        "Four ways to run them:",
        "",
        f"- **foreman** in front of the {n} upstreams (`--ollama` once per upstream) decides"
        " where and when each job runs;",
        f"- **round-robin** (what Olla and OllamaFlow do): job *i* goes straight to upstream"
        f" *i* mod {n};",
        "- **loaded-first** (what ollamaMQ and ollama-herd do): a job goes straight to an"
        " upstream that has its model loaded, else to the least busy one. The router knows"
        ' what it sent where, and reads "loaded" in its own favour: the model an upstream'
        " will hold once it has served what was already sent to it (the model of the last"
        " request sent there: a one-slot Ollama serves in arrival order and keeps the last"
        ' model loaded). "Least busy" is the fewest requests sent there and not yet'
        " answered; ties go to the first upstream;",
        f"- the **lower bound**: no schedule on {n} one-slot upstreams can beat"
        " max((J·g + L·s) / U, s + g, a + g), with J jobs of g seconds each, s seconds per"
        f" swap, U = {n} upstreams, a the last arrival, and L = max(models, min(U, J)) the fewest"
        " loads any schedule needs (every model must be loaded somewhere, and every"
        " upstream that works loads something first): all the work split perfectly over"
        " the upstreams, and no job ending before one load and its generation, nor before"
        " it arrives and is generated (`scripts/bench/fleet_plan.py`).",
        "",
        "Loads and jobs per upstream are the stubs' own counts. A job's wait runs from its"
        f" arrival to its complete answer. Repetitions: foreman {p['foreman_repetitions']},"
        f" the routers {p['router_repetitions']} (they wait out minutes of simulated swaps,"
        " so they run alongside foreman's runs, each on its own stubs).",
        "",
    ]
    for name in ("interleaved", "arriving"):
        w = f[name]
        lb = w["lower_bound"]
        rows = []
        for key, label in (
            ("foreman", "foreman"),
            ("round_robin", "round-robin"),
            ("loaded_first", "loaded-first"),
        ):
            r = w[key]
            rows.append(
                [
                    label,
                    fig(r["makespan_s"]),
                    fig(r["loads"], 0),
                    _per_upstream(r["loads_by_upstream"]),
                    _per_upstream(r["jobs_by_upstream"]),
                    fig(r["wait_p50_ms"], 0),
                    fig(r["wait_p99_ms"], 0),
                ]
            )
        rows.append(["lower bound", _num(lb["makespan_s"]), str(lb["loads"]), "", "", "", ""])
        out += [f"### {name.capitalize()}", ""]
        out += _table(
            [
                "",
                "makespan s",
                "loads",
                "loads per upstream",
                "jobs per upstream",
                "wait p50 ms",
                "wait p99 ms",
            ],
            rows,
        )
        rr, lf, bound = w["round_robin_ratio"], w["loaded_first_ratio"], w["bound_ratio"]
        out += [
            "",
            f"Makespan round-robin / foreman: **{rr:.1f}x** (goal ≥ 3x: {_met(rr >= 3)});"
            f" loaded-first / foreman: **{lf:.1f}x** (goal ≥ 1.5x: {_met(lf >= 1.5)});"
            f" foreman / lower bound: **{bound:.2f}x** (goal ≤ 1.3x: {_met(bound <= 1.3)}). The"
            f" lower bound here is the largest of {lb['work_split_s']:.1f} s (the perfect"
            f" split), {lb['first_job_s']:.1f} s (one load and one job) and"
            f" {lb['last_arrival_s']:.1f} s (the last arrival and its job).",
            "",
        ]
    s = f["slots"]
    sp = s["params"]
    k = sp["parallel"]
    one, many = s["slots_1"], s[f"slots_{k}"]
    out += [
        "### Slots",
        "",
        f"One stub with `--parallel {k}` (up to {k} generations of the loaded model at once;"
        f" {sp['tokens']} tokens {sp['token_delay_s'] * 1000:g} ms apart alone, each token"
        f" {sp['batch_slowdown'] * 100:g}% slower for every other generation running with it,"
        f" so {k} at once give at most {sp['stub_ceiling']:.2f}x the throughput of one) and a"
        f" burst of {sp['jobs']}"
        " requests for one model, after one request that loads it (not timed), through"
        f" foreman configured by a foreman.toml `[[upstream]]` table with `slots = {k}` and"
        f" with `slots = 1`. Repetitions: {sp['repetitions']}.",
        "",
        *_table(
            ["", "makespan s", "jobs/s", "wait p50 ms", "most at once on the stub"],
            [
                [
                    f"slots = {count}",
                    fig(r["makespan_s"], 2),
                    fig(r["jobs_per_s"]),
                    fig(r["wait_p50_ms"], 0),
                    fig(r["most_at_once"], 0),
                ]
                for count, r in ((1, one), (k, many))
            ],
        ),
        "",
        f"Throughput slots = {k} / slots = 1: **{s['ratio']:.1f}x** (goal ≥ 2.5x:"
        f" {_met(s['ratio'] >= 2.5)}).",
        "",
    ]
    return out


def _replicas(r: dict[str, Any]) -> list[str]:
    out = ["## 11. Replicas on PostgreSQL", ""]
    if "skipped" in r:
        return [*out, f"Not measured: {r['skipped']}.", ""]
    m = r["measured"]
    enq, note = r["enqueue"], r["notify"]
    reps = len(enq["ratio"]["runs"])
    out += [
        "One foreman's store on PostgreSQL beside the same store on SQLite, through the"
        " `Store` face foreman uses (its worker thread, its group commit), measured in one run"
        f" on {m['date']} (load average {m['load_average']:.2f} at the start; the machine's"
        " two cores are shared, so these figures are noisy: compare the columns, not the"
        " runs). PostgreSQL is a throwaway cluster of its own"
        " (`scripts/bench/pgserver.py`) on the same disk, over a Unix socket, with fsync,"
        " synchronous_commit and full_page_writes on: a synced commit waits for the WAL's"
        " flush as SQLite's waits for the file's. The worker's own moves (a claim) commit"
        " unsynced on both, as foreman makes them.",
        "",
        f"**Enqueue rate.** {fig(enq['jobs'], 0)} jobs from {fig(enq['submitters'], 0)}"
        " concurrent callers of `Store.submit`, committed together (group commit), each durable"
        " before its caller hears back; a fresh database for each run, the two backends"
        f" alternating (and which goes first). Repetitions: {reps}.",
        "",
        *_table(
            ["", "jobs/s"],
            [
                ["SQLite", fig(enq["sqlite"]["jobs_per_s"], 0)],
                ["PostgreSQL", fig(enq["postgres"]["jobs_per_s"], 0)],
                ["PostgreSQL / SQLite", fig(enq["ratio"], 2)],
            ],
        ),
        "",
        "**Claim latency.** `Store.claim_on` for an idle upstream of one slot holding the"
        " model of its last job (drain-by-model picks the next job of that model), then the"
        " job's end (`Store.transition` to done, a synced commit), with that many jobs queued"
        " over four models and three priorities; both stores open side by side, blocks of 25"
        " claims alternating between them. In ms:",
        "",
    ]
    rows = []
    for queued, c in r["claim"].items():
        for backend, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
            b = c[backend]
            rows.append(
                [
                    f"{int(queued):,}",
                    label,
                    fig(b["claim_p50_ms"], 2),
                    fig(b["claim_p99_ms"], 2),
                    fig(b["end_p50_ms"], 2),
                    fig(b["end_p99_ms"], 2),
                ]
            )
    out += _table(["queued", "", "claim p50", "claim p99", "end p50", "end p99"], rows)
    counts = [
        fig(c["postgres"]["statements_per_claim_and_end"], 0)
        for c in r["claim"].values()
        if "statements_per_claim_and_end" in c["postgres"]
    ]
    trips = [
        fig(c["postgres"]["round_trips_per_claim_and_end"], 0)
        for c in r["claim"].values()
        if "round_trips_per_claim_and_end" in c["postgres"]
    ]
    sent = (
        f" in {' and '.join(dict.fromkeys(trips))} round trips to the server over its socket"
        " (statements whose answers do not decide the next go out together, in one pipeline)"
        if trips
        else ", each a round trip to the server over its socket"
    )
    out += [
        "",
        f"On PostgreSQL a claim, the load it starts and the job's end send"
        f" {' and '.join(dict.fromkeys(counts))} statements"
        f" ({'at every queue length' if len(set(counts)) == 1 else 'by queue length'};"
        f" BEGIN and COMMIT included){sent}: the round trips, not the queue's length, are"
        " what the claim's latency is made of. On SQLite the same statements are calls into"
        " the library, in the process.",
        "",
        f"**NOTIFY round trips** (the per-token cost of an answer relayed between replicas):"
        f" one connection sends `pg_notify` with a {fig(note['payload_bytes'], 0)}-byte"
        " payload (one streamed line of an answer) from a Trio worker thread; another LISTENs,"
        " and Trio reads its socket (`wait_readable`, libpq's `consume_input` and `notifies`,"
        f" no thread). Latency: {fig(note['pings'], 0)} messages, one in flight, from the send"
        f" to the arrival; rate: {fig(note['burst'], 0)} messages sent back to back from one"
        " thread, each its own statement. Two senders in alternating blocks: one whose"
        " session commits synchronously (the server's setting), one with synchronous_commit"
        " off for its session. They should cost the same: a transaction that only notifies"
        " has written no data before its commit, and PostgreSQL does not wait for the WAL's"
        " flush to commit such a transaction, whatever synchronous_commit says; a"
        " notification is no more durable than the stream it carries.",
        "",
        *_table(
            ["sender", "p50 ms", "p99 ms", "messages/s"],
            [
                [
                    label,
                    fig(note[mode]["p50_ms"], 3),
                    fig(note[mode]["p99_ms"], 3),
                    fig(note[mode]["messages_per_s"], 0),
                ]
                for mode, label in (
                    ("synced", "synchronous_commit on"),
                    ("unsynced", "synchronous_commit off"),
                )
            ],
        ),
        "",
        *(_relay_between(r["relay"]) if "relay" in r else []),
    ]
    return out + _replica_processes(r["processes"])


def _relay_between(relay: dict[str, Any]) -> list[str]:
    paced, unpaced = relay["paced_5ms"], relay["unpaced"]
    return [
        "**An answer's relay between replicas, in one process**"
        f" (`scripts/bench/answers.py`{_stamp(relay)}): the parts of the relay foreman runs,"
        " without HTTP or"
        " a worker: a `RemoteTicket` on the replica running the job sends each message"
        " through its `AnswerSender` (`pg_notify` on the waiting replica's channel), a LISTEN"
        " connection hands it to the waiting replica's `AnswerInbox` and the client's ticket."
        f" A stream of {fig(paced['tokens'], 0)} tokens, one every"
        f" {fig(paced['pace_ms'], 0)} ms: each token arrives {fig(paced['token_p50_ms'], 2)} ms"
        f" (p50; p99 {fig(paced['token_p99_ms'], 2)} ms) after it was sent. Sent as fast as"
        f" they come ({fig(unpaced['tokens'], 0)} tokens, where the sender's batching shows):"
        f" {fig(unpaced['tokens_per_s'], 0)} tokens/s, each {fig(unpaced['token_p50_ms'], 1)} ms"
        " after it was sent (p50: the queue behind it).",
        "",
    ]


def _replica_processes(p: dict[str, Any]) -> list[str]:
    out = ["### Whole replicas", ""]
    if "skipped" in p:
        return [
            *out,
            "Added latency of one foreman on PostgreSQL against one on SQLite, two replicas'"
            " throughput against one, and the failover after kill -9"
            f" (`scripts/bench/replica_procs.py`): not measured: {p['skipped']}.",
            "",
        ]
    lat, thr, fo = p["latency"], p["throughput"], p["failover"]
    return [
        *out,
        "**Added latency.** Serial non-streamed requests from one client, in alternating"
        " blocks straight to an instant stub, through foreman on SQLite and through foreman"
        " on PostgreSQL (the same stub):",
        "",
        *_table(
            ["", "p50 ms", "added p50 ms", "p99 ms", "added p99 ms"],
            [
                [
                    label,
                    fig(lat[f"{key}_p50_ms"], 2),
                    fig(lat.get(f"{key}_added_p50_ms", ""), 2),
                    fig(lat[f"{key}_p99_ms"], 2),
                    fig(lat.get(f"{key}_added_p99_ms", ""), 2),
                ]
                for key, label in (
                    ("direct", "direct"),
                    ("sqlite", "foreman on SQLite"),
                    ("postgres", "foreman on PostgreSQL"),
                )
            ],
        ),
        "",
        f"**Throughput.** {fig(thr['jobs'], 0)} jobs queued with POST /jobs (half through each"
        " replica) on two instant stub upstreams, then drained: one replica"
        f" {fig(thr['replicas_1']['jobs_per_s'], 0)} jobs/s, two replicas"
        f" {fig(thr['replicas_2']['jobs_per_s'], 0)} jobs/s ({fig(thr['ratio'], 2)}x; upstreams"
        f" driven by each replica: {thr['replicas_2'].get('leases', 'n/a')}).",
        "",
        "**Failover.** Two replicas, two stub upstreams (about 50 ms a job), a job submitted"
        " every 40 ms"
        " alternating between the replicas; the replica holding the lease of upstream"
        f" `{fo['upstream']}` is killed with SIGKILL. A job completed on that upstream again"
        f" {fig(fo['failover_s'], 2)} s later (goal < 5 s); the survivor's /ready listed the"
        f" lease after {fig(fo['lease_seen_s'], 2)} s. Of {fig(fo['accepted'], 0)} jobs"
        f" accepted, {fig(fo['done'], 0)} ended done and {fig(fo['lost'], 0)} were lost"
        f" ({fig(fo['refused_while_down'], 0)} submissions to the dead replica were refused"
        " and sent to the other).",
        "",
        *(_crossing(p["crossing"]) if "crossing" in p else []),
    ]


def _stamp(part: dict[str, Any]) -> str:
    """When a part measured on its own was measured, for the sentence that names it."""
    m = part.get("measured")
    if not m:
        return ""
    return f"; measured on {m['date']}, load average {m['load_average']:.2f} at its start"


def _runs(entry: Any) -> str:
    count = len(entry.get("runs", [])) if isinstance(entry, dict) else 1
    return f"{count} run" if count <= 1 else f"{count} runs"


def _crossing(c: dict[str, Any]) -> list[str]:
    req, tok = c["request"], c["token"]

    def row(label: str, key: str, added: str | None = None, digits: int = 2) -> list[str]:
        return [
            label,
            fig(tok.get(f"driving_{key}", req.get(f"driving_{key}", "")), digits),
            fig(tok.get(f"other_{key}", req.get(f"other_{key}", "")), digits),
            fig(tok[added] if added else req.get(f"added_{key}", ""), digits),
        ]

    return [
        "**Answers through the other replica** (`scripts/bench/replica_answers.py`"
        f"{_stamp(c)}). Two"
        " replicas and one stub upstream; the first replica started holds the upstream's"
        " lease and drives it (leases at the end:"
        f" {c.get('leases', 'n/a')}). A synchronous client of the other replica waits there"
        " while its job runs on the driving replica, which relays the answer through"
        " PostgreSQL's NOTIFY (jobs by waiting replica:"
        f" {' and '.join(str(n) for n in c.get('waiters', [])) or 'n/a'}). Serial requests"
        " from one client, alternating in blocks between the two replicas (each figure the"
        f" median of {_runs(req['added_p50_ms'])}):"
        f" {fig(req['requests'], 0)} non-streamed /api/chat on each to an instant stub, then"
        f" {fig(tok['streams'], 0)} streamed ones on each with the stub paced at one token every"
        f" {fig(tok['pace_ms'], 0)} ms ({fig(tok['tokens'], 0)} tokens, {fig(tok['lines'], 0)}"
        " lines with the last). A line's delay is its arrival since the request less the"
        " median arrival of the same line through the driving replica: through the driving"
        " replica it is the noise, through the other the cost the crossing adds to each token."
        " In ms:",
        "",
        *_table(
            ["", "driving replica", "other replica", "other - driving"],
            [
                row("whole answer, not streamed, p50", "p50_ms"),
                row("whole answer, not streamed, p99", "p99_ms"),
                row("first line, p50", "first_p50_ms", "first_added_p50_ms"),
                row("first line, p99", "first_p99_ms", "first_added_p99_ms"),
                [
                    "gap between lines, p50 / p99",
                    f"{fig(tok['driving_gap_p50_ms'], 2)} / {fig(tok['driving_gap_p99_ms'], 2)}",
                    f"{fig(tok['other_gap_p50_ms'], 2)} / {fig(tok['other_gap_p99_ms'], 2)}",
                    "",
                ],
                [
                    "each line's delay, p50 / p99",
                    f"{fig(tok['driving_line_extra_p50_ms'], 2)}"
                    f" / {fig(tok['driving_line_extra_p99_ms'], 2)}",
                    f"{fig(tok['other_line_extra_p50_ms'], 2)}"
                    f" / {fig(tok['other_line_extra_p99_ms'], 2)}",
                    "",
                ],
            ],
        ),
        "",
        "The added latency per request is the last column's first two rows; the added"
        " latency per token is the other replica's line delay (its p50 against the driving"
        " replica's, 0 by construction; its p99 against the driving replica's p99). The gaps"
        " between lines tell a stream the crossing slows (they would widen) from one it only"
        " shifts (they stay at the stub's pace). A difference below zero is no gain the"
        " crossing makes but the machine's noise, and the work shared: through the other"
        " replica, the client's HTTP side runs in a second process beside the driving"
        " replica's relay from the upstream.",
        "",
    ]


def _met(met: bool) -> str:
    return "met" if met else "**missed**"


PHASE_TEXT = {
    "accepting": "accepting jobs: POST /jobs from 32 submitters, the stub held",
    "running": "running them: the worker drains the queue against an instant stub",
    "relaying": "relaying serial non-streamed /api/generate requests from one client",
    "embeddings": "relaying /api/embed from 32 clients",
    "streaming": "relaying one fast stream of NDJSON lines",
}


def _profile(p: dict[str, Any]) -> list[str]:
    out = ["## 7. Where foreman's CPU goes", ""]
    if "skipped" in p:
        return [*out, f"Not measured: {p['skipped']}.", ""]
    phases = [name for name in PHASE_TEXT if name in p]
    out += [
        "py-spy samples foreman 250 times a second in each workload below, one at a time"
        " on one foreman (the figures a target stands on are made of these):",
        "",
        *[f"- *{name}*: {PHASE_TEXT[name]}" for name in phases],
        "",
        "Each sample counts for the code running at that moment; samples of a thread"
        " waiting for I/O or for work are left out. Shares of the busy samples, %:",
        "",
    ]
    names: list[str] = []
    for phase in phases:
        names += [n for n in p[phase].get("layers_pct", {}) if n not in names]
    rows = [
        [name] + [_num(p[phase].get("layers_pct", {}).get(name, 0.0), 0) for phase in phases]
        for name in names
    ]
    out += _table(["layer", *phases], rows)
    out += ["", "foreman's own busiest functions (share of busy samples, %):", ""]
    for phase in phases:
        out.append(f"- {phase}: {_top(p, phase, 5)}")
    out.append("")
    return out


def _top(p: dict[str, Any], phase: str, count: int) -> str:
    top = p[phase].get("foreman_top_pct", {})
    return ", ".join(
        f"`{name.split(' (')[0]}` {_num(v, 1)}" for name, v in list(top.items())[:count]
    )


def _layers(p: dict[str, Any], phase: str, count: int = 3) -> str:
    layers = list(p[phase].get("layers_pct", {}).items())[:count]
    return ", ".join(f"{name} {value:.0f}%" for name, value in layers)


def _profile_ref(results: dict[str, Any], phase: str) -> str:
    p = results.get("profile") or {}
    if not phase or phase not in p:
        return " (Section 7 has no profile of it in this run.)"
    return (
        f" Section 7, *{phase}*: busiest layers {_layers(p, phase)}; foreman's busiest"
        f" functions {_top(p, phase, 3)}."
    )


def _why(results: dict[str, Any], t: Target) -> str:
    """What a missed target's figure is made of, from this run's other figures."""
    over, scale = results.get("overhead", {}), results.get("scale", {})
    if t.key == "added_p50_ms":
        n = over["non_streamed"]
        added = med(n["added_p50_ms"])
        if "floor_added_p50_ms" not in n:
            return f"foreman adds {added:.1f} ms."
        bare = med(n["floor_added_p50_ms"])
        return (
            f"Of the {added:.1f} ms foreman adds to a non-streamed request, {bare:.1f} ms is"
            " what the same HTTP stack adds to a bare relay with no store, queue or worker"
            f" (section 2, measured beside it); the remaining {max(0.0, added - bare):.1f} ms"
            " is foreman's: the submission's commit, waking the worker, the claim's commit,"
            " the end's commit (two of them synced: the submission and the end, which"
            " durability requires before the 202 and the answer), each a hand-off to the"
            " store's thread and back, and handing the answer from the worker to the waiting"
            " request. On two shared cores every hand-off also waits for a core."
        )
    if t.key == "first_chunk_added_p50_ms":
        first = med(over["streamed_first_chunk"]["added_p50_ms"])
        return (
            f"foreman adds {first:.1f} ms before a stream's first chunk: the job is stored,"
            " claimed and its request sent upstream before the first line can come back."
        )
    if t.key == "embeddings_ratio":
        e = results["embeddings"]
        return (
            f"{med(e['foreman']['requests_per_s']):,.0f} against"
            f" {med(e['direct']['requests_per_s']):,.0f} requests/s direct (section 3). The"
            " embeddings take the lean path (no web framework) and foreman's own keep-alive"
            " client to Ollama; what is left is the HTTP server and trio's scheduling, in the"
            " one Python process that also runs the worker: its thread is busy nearly all"
            " the time, so one process cannot go much further (the GIL). Serving the"
            " stateless routes from more than one process (workers sharing the port with"
            " SO_REUSEPORT) is what would pass it, on a machine with cores to spare."
        )
    if t.key == "stream_relay_ratio":
        relay = over["relay"]
        return (
            f"{med(relay['foreman_chunks_per_s']):,.0f} against"
            f" {med(relay['direct_chunks_per_s']):,.0f} lines/s direct (section 2): every"
            " line is read from Ollama by the worker (foreman's own HTTP client), handed to"
            " the waiting request and written by the server, the lines waiting together in"
            " one write; trio's scheduling and the HTTP server are most of the cost."
        )
    if t.key == "worker_jobs_per_s":
        worker = med(over["worker_async"]["jobs_per_s"])
        return (
            f"{worker:,.0f} jobs/s is {1000 / worker:.1f} ms per job, serial: an HTTP"
            " request to Ollama, then the job's end and the next claim committed together"
            " with an fsync, one thread hop."
        )
    if t.key in ("enqueue_jobs_per_s", "batch_jobs_per_s") and "stack_floor" in scale:
        enqueue = med(scale["enqueue"]["jobs_per_s"])
        ceiling = med(scale["stack_floor"]["trivial_post_per_s"])
        grouped = ""
        if "durability" in results:
            sub = results["durability"]["submissions"]
            factor = med(sub["one_per_commit_us_per_job"]) / med(sub["grouped_us_per_job"])
            grouped = f" (section 5: {factor:.0f}x less store time per submission)"
        return (
            f"{enqueue:,.0f} jobs/s is {100 * enqueue / ceiling:.0f}% of what this stack"
            f" answers on a route that does nothing ({ceiling:,.0f} requests/s, section 4);"
            " with one request per job no change inside foreman can pass that ceiling. Group"
            f" commit removed the fsync per job{grouped}; a batch submission (many jobs in one"
            " request) is what goes past it."
        )
    return f"{t.shown} against a goal of {t.goal}."


def _missed(results: dict[str, Any]) -> list[str]:
    """For each missed target: what its figure is made of, from this run's figures, and
    the profile of the workload behind it."""
    missed = [t for t in targets(results) if t.met is False and t.phase]
    if not missed:
        return []
    out = ["## What the missed targets are made of", ""]
    for t in missed:
        out.append(f"- **{t.figure}** ({t.shown}; goal {t.goal}). {_why(results, t)}")
        out[-1] += _profile_ref(results, t.phase)
    out.append("")
    return out


def _notes() -> list[str]:
    return [
        "## Reading these numbers",
        "",
        "- The load generator is a minimal HTTP/1.1 client (`scripts/bench/loadgen.py`):"
        " httpx costs more CPU per request than foreman spends answering one, and on two"
        " cores it would measure itself.",
        "- The stub, foreman and the load generator share the machine's cores; a busy"
        " machine (see the load average above) makes every figure worse, foreman's more than"
        " the stub's.",
        "- After writing this page, `make bench` compares every figure a target stands on"
        " with the committed docs/benchmarks.json (`scripts/bench/guard.py`) and fails when"
        " one is more than 30% worse, in its own direction (a rate lower, a latency or a cost"
        " ratio higher; an added latency must also have moved by more than 0.5 ms)."
        " `BENCH_ACCEPT=1 make bench` reports and passes, for a deliberate change.",
        "",
    ]
