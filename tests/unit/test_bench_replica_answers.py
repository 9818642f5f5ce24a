"""The benchmarks' figures of answers crossing between replicas (scripts/bench): the pure
reduction of streamed lines, and the rows and report of section 11, over results shaped as
`make bench` writes them; no benchmark run."""

from __future__ import annotations

from typing import Any

import pytest

from scripts.bench.guard import check
from scripts.bench.replica_answers import line_figures
from scripts.bench.report import render
from scripts.bench.targets import targets
from tests.unit.test_bench_replicas import NOT_WIRED, measured, processes, spread


def crossing(added_ms: float = 0.4, line_ms: float = 0.3) -> dict[str, Any]:
    return {
        "request": {
            "requests": spread(400),
            "driving_p50_ms": spread(12.0),
            "other_p50_ms": spread(12.0 + added_ms),
            "added_p50_ms": spread(added_ms),
            "driving_p99_ms": spread(20.0),
            "other_p99_ms": spread(21.0),
            "added_p99_ms": spread(1.0),
        },
        "token": {
            "streams": spread(40),
            "tokens": spread(50),
            "pace_ms": spread(20.0),
            "lines": spread(51),
            "driving_first_p50_ms": spread(30.0),
            "driving_first_p99_ms": spread(36.0),
            "other_first_p50_ms": spread(30.5),
            "other_first_p99_ms": spread(37.0),
            "first_added_p50_ms": spread(0.5),
            "first_added_p99_ms": spread(1.0),
            "driving_gap_p50_ms": spread(20.3),
            "driving_gap_p99_ms": spread(23.0),
            "other_gap_p50_ms": spread(20.3),
            "other_gap_p99_ms": spread(25.0),
            "driving_line_extra_p50_ms": spread(0.0),
            "driving_line_extra_p99_ms": spread(8.5),
            "other_line_extra_p50_ms": spread(line_ms),
            "other_line_extra_p99_ms": spread(9.7),
        },
        "leases": "driving 1, other 0",
        "waiters": [420, 420],
        "measured": {"date": "later", "load_average": 2.5},
    }


RELAY = {
    "paced_5ms": {
        "tokens": spread(500),
        "pace_ms": spread(5.0),
        "token_p50_ms": spread(0.43),
        "token_p99_ms": spread(0.56),
        "tokens_per_s": spread(180),
    },
    "unpaced": {
        "tokens": spread(1000),
        "pace_ms": spread(0.0),
        "token_p50_ms": spread(24.4),
        "token_p99_ms": spread(25.3),
        "tokens_per_s": spread(7650),
    },
}


def with_crossing(**kw: float) -> dict[str, Any]:
    r = measured({**processes(), "crossing": crossing(**kw)})
    r["replicas"]["relay"] = RELAY
    return r


def by_key(r: dict[str, Any]) -> dict[str, Any]:
    return {t.key: t for t in targets(r)}


def test_lines_are_measured_against_the_driving_replicas_median_line() -> None:
    driving = [[0.030, 0.050, 0.070], [0.032, 0.052, 0.072], [0.031, 0.051, 0.071, 0.091]]
    # one line later by 2 ms each; the extra last line of one stream is not compared
    other = [[0.033, 0.053, 0.073], [0.033, 0.053, 0.073], [0.033, 0.053, 0.073]]
    out = line_figures({"driving": driving, "other": other}, 2, 0.02)
    assert out["lines"] == 3
    assert out["driving_line_extra_p50_ms"] == pytest.approx(0.0)
    assert out["other_line_extra_p50_ms"] == pytest.approx(2.0)
    assert out["other_gap_p50_ms"] == pytest.approx(20.0)
    assert out["driving_first_p50_ms"] == pytest.approx(31.0)
    assert out["first_added_p50_ms"] == pytest.approx(2.0)


def test_the_crossing_rows_are_comparisons_standing_on_the_added_latencies() -> None:
    rows = by_key(with_crossing(added_ms=0.4, line_ms=0.3))
    request, token, relay = (
        rows["replicas_crossing_request"],
        rows["replicas_crossing_token"],
        rows["replicas_relay"],
    )
    assert all(row.comparison for row in (request, token, relay))
    assert all(row.met is None for row in (request, token, relay))
    assert request.shown == "p50 12.40 - 12.00 = +0.40 ms, p99 +1.00 ms"
    assert [f.key for f in token.figures] == [
        "replicas_crossing_line_ms",
        "replicas_crossing_first_ms",
    ]
    assert token.figures[0].value == 0.3
    assert "a token every 20 ms" in token.figure
    assert relay.figures[0].value == 0.43


def test_the_report_says_what_the_crossing_figures_mean() -> None:
    page = render(with_crossing())
    assert "**Answers through the other replica**" in page
    assert "| whole answer, not streamed, p50 | 12.00 | 12.40 | 0.40 |" in page
    assert "| each line's delay, p50 / p99 | 0.00 / 8.50 | 0.30 / 9.70 |  |" in page
    assert "jobs by waiting replica: 420 and 420" in page
    assert "(each figure the median of 1 run)" in page
    assert "replica_answers.py`; measured on later, load average 2.50 at its start)" in page
    assert "the added latency per token is the other replica's line delay" in page
    assert "7,650 tokens/s" in page


def test_a_run_without_whole_replicas_lists_the_crossing_unmeasured() -> None:
    rows = by_key(measured({"skipped": NOT_WIRED}))
    assert rows["replicas_crossing"].met is None
    assert not rows["replicas_crossing"].figures


def test_a_slower_crossing_fails_the_guard_beyond_its_slack() -> None:
    baseline = (with_crossing(line_ms=0.3), "committed")
    assert check(with_crossing(line_ms=1.2), baseline, accept=False)[0] == 0
    status, text = check(with_crossing(line_ms=3.0), baseline, accept=False)
    assert status == 1
    assert "added delay per streamed line through the other replica" in text
