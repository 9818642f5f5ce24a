"""The benchmarks' regression guard (scripts/bench/guard.py) and the targets it reads
(scripts/bench/targets.py): pure functions over results, no benchmark run."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scripts.bench.guard import Change, check, compare, failures, judge, load_baseline, table
from scripts.bench.targets import Figure, figures, targets


def rate(value: float, key: str = "rate") -> Figure:
    return Figure(key, "a rate", value, higher_is_better=True)


def latency(value: float, key: str = "latency", slack: float = 0.0) -> Figure:
    return Figure(key, "a latency", value, higher_is_better=False, slack=slack)


@pytest.mark.parametrize(
    ("before", "now", "verdict"),
    [
        (rate(1000), rate(701), "same"),  # 29.9% lower
        (rate(1000), rate(699), "worse"),  # 30.1% lower
        (rate(1000), rate(1400), "better"),
        (rate(1000), rate(1299), "same"),
        (latency(10), latency(12.9), "same"),
        (latency(10), latency(13.1), "worse"),  # higher is worse for a latency
        (latency(10), latency(5), "better"),
        (latency(10), latency(7.1), "same"),
    ],
)
def test_judge_is_direction_aware(before: Figure, now: Figure, verdict: str) -> None:
    assert judge(before, now) == verdict


def test_a_change_within_the_figures_slack_is_noise() -> None:
    # 1.0 -> 1.4 ms is +40%, but less than the 0.5 ms a shared machine wobbles by
    assert judge(latency(1.0, slack=0.5), latency(1.4, slack=0.5)) == "same"
    assert judge(latency(1.0, slack=0.5), latency(1.6, slack=0.5)) == "worse"


def test_a_zero_baseline_is_judged_by_the_slack_alone() -> None:
    assert judge(latency(0.0, slack=0.5), latency(0.4, slack=0.5)) == "same"
    assert judge(latency(0.0, slack=0.5), latency(0.6, slack=0.5)) == "worse"
    assert Change("k", "l", 0.0, 0.6, "worse").percent is None


@given(
    before=st.floats(0.01, 1e6, allow_nan=False),
    factor=st.floats(0.0, 3.0, allow_nan=False),
    higher=st.booleans(),
)
def test_worse_exactly_when_more_than_30_percent_the_wrong_way(
    before: float, factor: float, higher: bool
) -> None:
    now = before * factor
    verdict = judge(Figure("k", "l", before, higher), Figure("k", "l", now, higher))
    wrong_way = (before - now) if higher else (now - before)
    assert (verdict == "worse") == (wrong_way > 0.3 * before)


def test_compare_names_new_figures_and_ignores_ones_not_measured_now() -> None:
    baseline = {"a": rate(100, "a"), "gone": rate(5, "gone")}
    now = {"a": rate(50, "a"), "fresh": latency(3, "fresh")}
    changes = compare(baseline, now)
    assert [(c.key, c.verdict) for c in changes] == [("a", "worse"), ("fresh", "new")]
    assert [c.key for c in failures(changes)] == ["a"]
    assert changes[0].percent == pytest.approx(-50)


def test_table_shows_figure_baseline_now_change_and_verdict() -> None:
    text = table(
        [Change("a", "jobs/s", 1000.0, 600.0, "worse"), Change("b", "p50 ms", None, 2.5, "new")]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["figure", "baseline", "now", "change", "%"]
    assert lines[1].split() == ["jobs/s", "1,000", "600", "-40%", "WORSE"]
    assert lines[2].split() == ["p50", "ms", "-", "2.50", "-", "new"]


# -- the targets and their figures, from results shaped as `make bench` writes them -----------


def spread(value: float) -> dict[str, Any]:
    return {"median": value, "min": value, "max": value, "runs": [value]}


def results(**changes: float) -> dict[str, Any]:
    """Results with the sections the issue's targets stand on; `changes` set figures."""
    v = {
        "added": 4.0,
        "floor": 1.5,
        "first": 3.2,
        "ratio": 0.4,
        "worker": 376.0,
        "enqueue": 1218.0,
        "embed": 0.13,
        "embed_p99": 4.0,
        **changes,
    }
    return {
        "mode": "full",
        "machine": {"date": "then"},
        "overhead": {
            "non_streamed": {
                "added_p50_ms": spread(v["added"]),
                "floor_added_p50_ms": spread(v["floor"]),
                "over_floor_p50_ms": spread(v["added"] - v["floor"]),
            },
            "streamed_first_chunk": {"added_p50_ms": spread(v["first"])},
            "relay": {"ratio": spread(v["ratio"])},
            "worker_async": {"jobs_per_s": spread(v["worker"])},
        },
        "embeddings": {
            "clients": spread(32),
            "ratio_requests_per_s": spread(v["embed"]),
            "ratio_p99": spread(v["embed_p99"]),
        },
        "scale": {
            "enqueue": {"jobs_per_s": spread(v["enqueue"])},
            "claim": {"1000": {}, "1000000": {}},
            "claim_ratio_p50": 1.1,
            "memory": {"rss_queued_mb": spread(98)},
        },
    }


def by_key(r: dict[str, Any]) -> dict[str, Any]:
    return {t.key: t for t in targets(r)}


def test_the_added_latency_row_needs_both_the_bound_and_the_floor() -> None:
    assert by_key(results(added=1.9, floor=1.5))["added_p50_ms"].met is True
    # under 2 ms, but more than 1 ms over the floor measured beside it
    assert by_key(results(added=1.9, floor=0.5))["added_p50_ms"].met is False
    assert by_key(results(added=2.4, floor=2.0))["added_p50_ms"].met is False
    assert "(met)" in by_key(results(added=2.4, floor=2.0))["added_p50_ms"].note


def test_the_issues_rows_are_marked_met_or_missed() -> None:
    rows = by_key(results())
    assert rows["first_chunk_added_p50_ms"].met is False
    assert rows["stream_relay_ratio"].met is False
    assert rows["worker_jobs_per_s"].met is False
    assert rows["enqueue_jobs_per_s"].met is True
    assert rows["embeddings_ratio"].met is False
    good = by_key(results(first=2.0, ratio=0.8, worker=450, embed=0.7, embed_p99=2.5))
    assert all(
        good[k].met for k in ("first_chunk_added_p50_ms", "stream_relay_ratio", "worker_jobs_per_s")
    )
    assert good["embeddings_ratio"].met is True
    # the p99 bound alone misses the row
    assert by_key(results(embed=0.7, embed_p99=3.5))["embeddings_ratio"].met is False
    # the batch row waits for its figure
    assert rows["batch_jobs_per_s"].met is None


def test_a_slower_worker_fails_the_guard_and_a_faster_one_does_not() -> None:
    baseline = (results(), "committed")
    status, text = check(results(worker=250), baseline, accept=False)
    assert status == 1
    assert "jobs/s through one worker" in text
    assert "WORSE" in text
    assert check(results(worker=500), baseline, accept=False)[0] == 0
    assert check(results(worker=250), baseline, accept=True)[0] == 0


def test_a_higher_latency_fails_the_guard() -> None:
    status, text = check(results(added=6.0), (results(added=4.0), "committed"), accept=False)
    assert status == 1
    assert "added latency p50, non-streamed" in text


def test_quick_runs_and_runs_of_another_mode_do_not_fail() -> None:
    quick = results(worker=100)
    quick["mode"] = "quick"
    base_quick = results()
    base_quick["mode"] = "quick"
    assert check(quick, (base_quick, "last quick run"), accept=False)[0] == 0
    assert check(quick, (results(), "committed"), accept=False)[0] == 0
    assert check(results(), None, accept=False)[0] == 0


def test_an_older_baseline_without_some_figures_lists_them_as_new() -> None:
    old = copy.deepcopy(results())
    del old["overhead"]["non_streamed"]["floor_added_p50_ms"]
    del old["embeddings"]["ratio_p99"]
    old["embeddings"] |= {"foreman": {"p99_ms": spread(40)}, "direct": {"p99_ms": spread(10)}}
    del old["scale"]["enqueue"]
    before = figures(old, lenient=True)
    assert "over_floor_p50_ms" not in before
    assert before["embeddings_p99_ratio"].value == 4.0
    changes = {c.key: c.verdict for c in compare(before, figures(results()))}
    assert changes["over_floor_p50_ms"] == "new"
    assert changes["enqueue_jobs_per_s"] == "new"
    with pytest.raises(KeyError):
        figures(old)  # the run itself must have every figure its sections promise


def test_the_baseline_is_the_committed_file_not_the_one_on_disk(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    path = tmp_path / "docs" / "benchmarks.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"mode": "full", "committed": True}))
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "bench")
    path.write_text(json.dumps({"mode": "full", "committed": False}))
    loaded = load_baseline(path, tmp_path)
    assert loaded is not None
    assert loaded[0]["committed"] is True
    # not committed (or outside the repository): the file on disk
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"mode": "quick"}))
    loaded = load_baseline(other, tmp_path)
    assert loaded is not None
    assert loaded[0] == {"mode": "quick"}
    assert load_baseline(tmp_path / "absent.json", tmp_path) is None
