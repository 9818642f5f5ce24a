"""kill -9 at random moments, with one of two upstreams in trouble, loses no job, finishes
none twice, runs none twice unless a kill interrupted it, and never crowds an upstream.

`make test` runs a few rounds; `make crash` runs the campaign's 100 (CRASH_ROUNDS) and
prints its report.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .crash import run_campaign
from .crash_replicas import replica_summary, run_replica_campaign, running_problems

pytestmark = pytest.mark.slow

ROUNDS = int(os.environ.get("CRASH_ROUNDS", "4"))
SEED = int(os.environ.get("CRASH_SEED", "6"))


@pytest.mark.timeout(max(300, ROUNDS * 10))
async def test_kill_9_at_random_moments_over_two_upstreams_loses_nothing_runs_nothing_twice(
    tmp_path: Path,
) -> None:
    report = await run_campaign(tmp_path, ROUNDS, SEED)
    print("\n" + report.summary())
    assert report.rounds == ROUNDS
    assert report.jobs > 0
    assert report.lost == []
    assert report.finished_twice == []
    assert report.wrong_results == []
    assert report.ran_twice == []
    assert report.crowded == []
    assert set(report.jobs_by_upstream) == {"a", "b"}
    assert report.integrity == "ok"


@pytest.mark.timeout(max(300, ROUNDS * 20))
async def test_kill_9_of_either_replica_on_postgresql_loses_nothing_runs_nothing_twice(
    tmp_path: Path, postgres_url: str
) -> None:
    report, campaign = await run_replica_campaign(tmp_path, postgres_url, ROUNDS, SEED)
    print("\n" + replica_summary(campaign))
    assert report.rounds == ROUNDS
    assert report.jobs > 0
    assert report.lost == []
    assert report.finished_twice == []
    assert report.wrong_results == []
    assert report.ran_twice == []
    assert report.crowded == []
    assert campaign.survivor_unanswered == []
    assert set(report.jobs_by_upstream) == {"a", "b"}
    assert report.integrity == "ok"


def test_the_database_check_sees_a_crowded_upstream_two_models_and_a_job_on_no_upstream() -> None:
    def row(
        job: str, upstream: str | None, model: str = "llama3", state: str = "working"
    ) -> dict[str, str | None]:
        return {"id": job, "upstream": upstream, "model_key": model, "state": state}

    slots = {"a": 1, "b": 2}
    fine = [row("1", "a"), row("2", "b"), row("3", "b"), row("4", "a", state="queued")]
    assert running_problems(fine, slots) == []
    assert len(running_problems([row("1", "a"), row("2", "a", state="loading")], slots)) == 1
    assert len(running_problems([row("1", "b"), row("2", "b"), row("3", "b")], slots)) == 1
    assert len(running_problems([row("1", "b"), row("2", "b", "mistral")], slots)) == 1
    assert len(running_problems([row("1", None)], slots)) == 1
    assert running_problems([row("1", "a", state="done"), row("2", "a")], slots) == []
