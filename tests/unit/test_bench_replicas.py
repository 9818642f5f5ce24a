"""The replicas section's rows in the benchmarks' targets and report (scripts/bench): pure
functions over results shaped as `make bench` writes them, no benchmark run."""

from __future__ import annotations

from typing import Any

from scripts.bench.guard import check
from scripts.bench.report import headline, render
from scripts.bench.targets import targets

SKIPPED = "no PostgreSQL server programs on this machine"
NOT_WIRED = "`foreman serve --db` takes only a SQLite path in this build"


def spread(value: float) -> dict[str, Any]:
    return {"median": value, "min": value, "max": value, "runs": [value]}


def store(backend_ms: float) -> dict[str, Any]:
    return {
        "claim_p50_ms": spread(backend_ms),
        "claim_p99_ms": spread(backend_ms * 3),
        "end_p50_ms": spread(0.5),
        "end_p99_ms": spread(2.0),
        "fill_s": spread(1.0),
    }


def processes(failover_s: float = 2.0, lost: int = 0) -> dict[str, Any]:
    return {
        "latency": {
            "direct_p50_ms": spread(0.4),
            "direct_p99_ms": spread(1.0),
            "sqlite_p50_ms": spread(4.0),
            "sqlite_p99_ms": spread(9.0),
            "sqlite_added_p50_ms": spread(3.6),
            "sqlite_added_p99_ms": spread(8.0),
            "postgres_p50_ms": spread(5.0),
            "postgres_p99_ms": spread(12.0),
            "postgres_added_p50_ms": spread(4.6),
            "postgres_added_p99_ms": spread(11.0),
            "postgres_over_sqlite_p50_ms": spread(1.0),
        },
        "throughput": {
            "jobs": spread(2000),
            "replicas_1": {"jobs_per_s": spread(300)},
            "replicas_2": {"jobs_per_s": spread(450), "leases": "1 + 1"},
            "ratio": spread(1.5),
        },
        "failover": {
            "upstream": "gpu1",
            "failover_s": spread(failover_s),
            "lease_seen_s": spread(failover_s - 0.1),
            "accepted": spread(200),
            "refused_while_down": spread(2),
            "done": spread(200 - lost),
            "lost": spread(lost),
        },
    }


def results(replicas: dict[str, Any]) -> dict[str, Any]:
    return {
        "mode": "full",
        "elapsed_s": 60.0,
        "machine": {
            "date": "then",
            "cpu": "a CPU",
            "cores": 2,
            "memory_gb": 8,
            "os": "Linux",
            "python": "3.11",
            "sqlite": "3.40",
            "packages": {},
            "load_average": 0.5,
        },
        "replicas": replicas,
    }


def measured(procs: dict[str, Any]) -> dict[str, Any]:
    return results(
        {
            "measured": {"date": "now", "load_average": 1.0},
            "enqueue": {
                "jobs": spread(3200),
                "submitters": spread(32),
                "sqlite": {"jobs_per_s": spread(10_000)},
                "postgres": {"jobs_per_s": spread(1_500)},
                "ratio": spread(0.15),
            },
            "claim": {
                "1000": {
                    "queued": spread(1000),
                    "sqlite": store(0.3),
                    "postgres": {**store(3.0), "statements_per_claim_and_end": spread(22)},
                },
                "100000": {
                    "queued": spread(100_000),
                    "sqlite": store(0.4),
                    "postgres": {**store(3.2), "statements_per_claim_and_end": spread(22)},
                },
            },
            "notify": {
                "pings": spread(1000),
                "burst": spread(5000),
                "payload_bytes": spread(101),
                "synced": {
                    "p50_ms": spread(0.15),
                    "p99_ms": spread(1.0),
                    "messages_per_s": spread(15_000),
                },
                "unsynced": {
                    "p50_ms": spread(0.14),
                    "p99_ms": spread(0.9),
                    "messages_per_s": spread(15_500),
                },
            },
            "processes": procs,
        }
    )


def by_key(r: dict[str, Any]) -> dict[str, Any]:
    return {t.key: t for t in targets(r)}


def test_a_run_without_postgresql_reports_the_rows_unmeasured_and_says_why() -> None:
    r = results({"skipped": SKIPPED})
    rows = by_key(r)
    assert rows["failover_s"].met is None
    assert all(not t.figures for t in rows.values())
    page = render(r)
    assert f"Not measured: {SKIPPED}." in page
    assert "| replicas: failover after kill -9 | < 5 s, nothing lost |" in page


def test_the_store_figures_are_comparisons_and_the_whole_replicas_wait_for_the_wiring() -> None:
    r = measured({"skipped": NOT_WIRED})
    rows = by_key(r)
    assert rows["replicas_enqueue_ratio"].comparison
    assert rows["replicas_enqueue_ratio"].shown == "1,500 / 10,000 jobs/s (0.15x)"
    assert rows["replicas_claim_100000"].figures[0].value == 8.0
    assert rows["failover_s"].met is None
    assert not rows["failover_s"].comparison
    page = render(r)
    assert "| 100,000 | PostgreSQL | 3.20 | 9.60 | 0.50 | 2.00 |" in page
    assert f"not measured: {NOT_WIRED}." in page
    assert "vs   enqueue through the Store" in headline(r)


def test_failover_is_met_under_five_seconds_with_nothing_lost() -> None:
    assert by_key(measured(processes(failover_s=4.0)))["failover_s"].met is True
    assert by_key(measured(processes(failover_s=6.0)))["failover_s"].met is False
    assert by_key(measured(processes(failover_s=2.0, lost=1)))["failover_s"].met is False
    page = render(measured(processes()))
    assert "Of 200 jobs accepted, 200 ended done and 0 were lost" in page
    assert "two replicas 450 jobs/s (1.50x; upstreams driven by each replica: 1 + 1)" in page
    assert "| foreman on PostgreSQL | 5.00 | 4.60 | 12.00 | 11.00 |" in page


def test_a_slower_failover_fails_the_guard_beyond_its_slack() -> None:
    baseline = (measured(processes(failover_s=1.5)), "committed")
    assert check(measured(processes(failover_s=2.4)), baseline, accept=False)[0] == 0
    status, text = check(measured(processes(failover_s=3.0)), baseline, accept=False)
    assert status == 1
    assert "failover after kill -9 (s)" in text
