"""The store's indexed pick implements exactly the pure rule, on a real SQLite file and on
PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from foreman.jobs import JobState
from foreman.policy import Candidate, is_starved, pick_next
from foreman.residency import split_key
from foreman.store import SyncStore
from tests.pg.backends import BACKENDS, open_store

from ._strategies import MAX_WAITS, NOWS, RESIDENTS, ROWS


@pytest.fixture(scope="module", params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SyncStore:
    # one database for the module, emptied by each example; durability is not what these
    # tests are about, so SQLite skips fsync (the test cluster never syncs)
    return open_store(request, request.param, tmp_path_factory.mktemp("agree"), fast=True)


def load(store: SyncStore, rows: Sequence[tuple[Candidate, JobState]]) -> None:
    """Replace the table's contents with `rows`, with exactly these times and states."""
    with store.conn:
        store.conn.execute("BEGIN")
        store.conn.execute("DELETE FROM jobs")
        store.conn.executemany(
            "INSERT INTO jobs (id, endpoint, model, model_key, body, stream, state, priority,"
            " attempts, max_attempts, not_before, enqueued_at, created_at, turn)"
            " VALUES (?, '/api/chat', ?, ?, ?, 1, ?, ?, 0, 5, ?, ?, ?, ?)",
            [
                (
                    c.id,
                    split_key(c.model_key)[0],
                    c.model_key,
                    b"{}",
                    state.value,
                    c.priority,
                    c.not_before,
                    c.enqueued_at,
                    c.enqueued_at,
                    c.turn,
                )
                for c, state in rows
            ],
        )


@given(data=st.data(), rows=ROWS, now=NOWS, max_wait=MAX_WAITS)
def test_store_pick_equals_pure_rule(store, data, rows, now, max_wait):
    # half the time the resident is a model with jobs in the table
    keys = [c.model_key for c, _ in rows]
    resident = data.draw(st.one_of(RESIDENTS, st.sampled_from(keys)) if keys else RESIDENTS)
    load(store, rows)
    queued = [c for c, state in rows if state is JobState.QUEUED]

    expected = pick_next(queued, resident, now, max_wait)
    got = store.pick(resident, now, max_wait)

    assert got == expected
    if got is None:
        event("nothing runnable")
    elif is_starved(got, now, max_wait):
        event("starved pick")
    else:
        event("resident pick" if got.model_key == resident else "top pick, other model")


@given(rows=ROWS, now=NOWS)
def test_store_counts_and_backoff_agree_with_rows(store, rows, now):
    load(store, rows)
    queued = [c for c, state in rows if state is JobState.QUEUED]
    store.clock = lambda: now

    assert store.count_queued() == len(queued)
    for key in {c.model_key for c, _ in rows}:
        assert store.count_queued(key) == sum(1 for c in queued if c.model_key == key)
    waiting = [c.not_before for c in queued if c.not_before > now]
    assert store.next_not_before() == (min(waiting) if waiting else None)


def test_store_and_rule_agree_a_job_exactly_max_wait_old_is_not_starved(store):
    edge = Candidate("edge", "b:latest", 0, enqueued_at=10.0)
    older_mine = Candidate("mine", "a:latest", 0, enqueued_at=15.0)
    rows = [(edge, JobState.QUEUED), (older_mine, JobState.QUEUED)]
    load(store, rows)

    assert store.pick("a:latest", now=40.0, max_wait=30.0) == older_mine
    assert pick_next([edge, older_mine], "a:latest", now=40.0, max_wait=30.0) == older_mine
    assert store.pick("a:latest", now=40.0, max_wait=29.5) == edge

    # with a lower-priority job truly starved, the boundary job still does not count
    starving = Candidate("starving", "c:latest", -1, enqueued_at=0.0)
    urgent_edge = Candidate("urgent", "b:latest", 1, enqueued_at=10.0)
    load(store, [(starving, JobState.QUEUED), (urgent_edge, JobState.QUEUED)])
    assert pick_next([starving, urgent_edge], None, now=40.0, max_wait=30.0) == starving
    assert store.pick(None, now=40.0, max_wait=30.0) == starving


def test_store_and_rule_agree_when_only_lower_priorities_are_starved(store):
    fresh_urgent = Candidate("u", "a:latest", 2, enqueued_at=90.0)
    waiting_urgent = Candidate("w", "a:latest", 2, enqueued_at=0.0, not_before=200.0)
    starved_normal = Candidate("n", "b:latest", 1, enqueued_at=5.0)
    starved_low = Candidate("l", "m:latest", 0, enqueued_at=1.0)
    cands = [fresh_urgent, waiting_urgent, starved_normal, starved_low]
    load(store, [(c, JobState.QUEUED) for c in cands])

    assert pick_next(cands, "a:latest", now=100.0, max_wait=50.0) == starved_normal
    assert store.pick("a:latest", now=100.0, max_wait=50.0) == starved_normal
