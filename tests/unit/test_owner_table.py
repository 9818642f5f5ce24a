"""The dashboard's per-owner table: who has how many jobs queued and running, with each
key's weight and cap, from the in-memory tally (never the database), and what a key that
sees only its own jobs may see of it."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman.api.dashboard import visible_summary
from foreman.board import Board, owner_rows
from foreman.jobs import JobState
from foreman.keys import parse_keys
from foreman.metrics import JobTally
from foreman.store import Store

from ._helpers import FakeClock, stored_job

KEYS = parse_keys(
    "batch 0123456789abcdefgh-batch jobs weight=1 max_queued=2000\n"
    "alice 0123456789abcdefgh-alice inference weight=3\n"
    "ops 0123456789abcdefgh-ops admin\n"
)


def test_each_key_gets_a_row_with_its_weight_and_cap_and_keyless_jobs_come_last() -> None:
    counts = {
        ("batch", "queued"): 1999,
        ("batch", "running"): 1,
        ("alice", "queued"): 1,
        ("", "queued"): 4,
        # a key since taken out of the keys file, whose job still runs
        ("gone", "running"): 1,
    }
    assert owner_rows(counts, KEYS) == [
        {"owner": "alice", "queued": 1, "running": 0, "weight": 3, "max_queued": None},
        {"owner": "batch", "queued": 1999, "running": 1, "weight": 1, "max_queued": 2000},
        {"owner": "gone", "queued": 0, "running": 1, "weight": None, "max_queued": None},
        # an idle key still shows its share
        {"owner": "ops", "queued": 0, "running": 0, "weight": 1, "max_queued": None},
        {"owner": None, "queued": 4, "running": 0, "weight": None, "max_queued": None},
    ]


def test_without_keys_the_table_holds_only_the_keyless_jobs_and_nothing_when_idle() -> None:
    empty = parse_keys("")
    assert owner_rows({}, empty) == []
    assert owner_rows({("", "running"): 1}, empty) == [
        {"owner": None, "queued": 0, "running": 1, "weight": None, "max_queued": None}
    ]


def test_no_key_reaches_the_table() -> None:
    rows = owner_rows({("batch", "queued"): 1}, KEYS)
    assert "0123456789abcdefgh" not in repr(rows)


_moves = st.lists(
    st.tuples(
        st.sampled_from(["j1", "j2", "j3", "j4", "j5"]),
        st.sampled_from(list(JobState)),
        st.sampled_from([None, "alice", "batch"]),
    ),
    max_size=60,
)


@given(start=_moves, moves=_moves)
def test_the_tallys_owner_counts_always_equal_a_count_of_its_unfinished_jobs(
    start: list[tuple[str, JobState, str | None]], moves: list[tuple[str, JobState, str | None]]
) -> None:
    """Kept as jobs move rather than counted per read: it must never drift from what a
    fresh count over every unfinished job would say."""
    tally = JobTally(clock=lambda: 0.0)
    unfinished = {job_id: (state, owner) for job_id, state, owner in start if not state.terminal}
    tally.load([(job_id, state, "m", owner) for job_id, (state, owner) in unfinished.items()])
    for job_id, state, owner in moves:
        # a job's owner never changes: the first one it was seen with stands
        owner = unfinished.get(job_id, (state, owner))[1]
        tally.record(stored_job(job_id, state, owner))
        if state.terminal:
            unfinished.pop(job_id, None)
        else:
            unfinished[job_id] = (state, owner)
        expected = collections.Counter(
            (o or "", "queued" if s is JobState.QUEUED else "running")
            for s, o in unfinished.values()
        )
        assert tally.by_owner() == expected


@pytest.fixture
async def async_store(tmp_path: Path) -> Store:
    return await Store.open(tmp_path / "owners.db", clock=FakeClock())


async def test_the_summary_shows_the_tally_as_it_is_now_without_a_new_read(
    async_store: Store,
) -> None:
    tally = JobTally(clock=lambda: 0.0)
    board = Board(async_store, max_wait=600, owners=tally.by_owner, keys=lambda: KEYS)
    tally.record(stored_job("a", JobState.QUEUED, "alice"))
    first = await board.summary()
    assert first["owners"][0] == {
        "owner": "alice",
        "queued": 1,
        "running": 0,
        "weight": 3,
        "max_queued": None,
    }
    # no job change reached the board (its cached read stands), yet the table is current
    tally.record(stored_job("a", JobState.WORKING, "alice"))
    tally.record(stored_job("b", JobState.QUEUED, None))
    again = await board.summary()
    assert board.version == 0
    assert again["owners"][0]["queued"] == 0
    assert again["owners"][0]["running"] == 1
    assert again["owners"][-1] == {
        "owner": None,
        "queued": 1,
        "running": 0,
        "weight": None,
        "max_queued": None,
    }


async def test_a_key_that_sees_only_its_own_jobs_sees_only_its_own_row(
    async_store: Store,
) -> None:
    tally = JobTally(clock=lambda: 0.0)
    for job_id, owner in (("a", "alice"), ("b", "batch"), ("c", None)):
        tally.record(stored_job(job_id, JobState.QUEUED, owner))
    board = Board(async_store, max_wait=600, owners=tally.by_owner, keys=lambda: KEYS)
    summary = await board.summary()
    assert [r["owner"] for r in summary["owners"]] == ["alice", "batch", "ops", None]
    assert [r["owner"] for r in visible_summary(summary, None)["owners"]] == [
        "alice",
        "batch",
        "ops",
        None,
    ]
    own = visible_summary(summary, "batch")["owners"]
    assert own == [{"owner": "batch", "queued": 1, "running": 0, "weight": 1, "max_queued": 2000}]
    # the whole summary is not changed for the next viewer
    assert len(summary["owners"]) == 4
