"""No stored row can break the answers that show it: a job read back from the store always
renders as JSON, whatever an older foreman (or a hand) left in its row."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman.api.jobs import job_json, timestamp
from foreman.board import job_view
from foreman.jobs import JobState
from foreman.store import SyncStore

from ._helpers import new_job


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, None),
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1_700_000_000.1234, "2023-11-14T22:13:20.123Z"),
        (1e308, "9999-12-31T23:59:59.000Z"),
        (math.inf, None),
        (math.nan, None),
        (-1e308, "1970-01-01T00:00:00.000Z"),
    ],
)
def test_timestamp_writes_any_stored_number_without_raising(value, shown):
    assert timestamp(value) == shown


@given(st.floats())
def test_timestamp_never_raises(value):
    shown = timestamp(value)
    assert shown is None or (shown.endswith("Z") and len(shown) == 24)


def test_a_row_with_a_huge_deadline_and_a_result_that_is_not_json_still_renders(
    store: SyncStore,
):
    # rows as an older foreman could leave them: a deadline of 1e308 seconds from now was
    # accepted, and `result` is plain text only SQL could have written
    job = store.enqueue(new_job(deadline=1e308))
    store.transition(job.id, JobState.QUEUED, JobState.WORKING)
    store.transition(job.id, JobState.WORKING, JobState.DONE, result={"ok": 1})
    store.conn.execute(
        "UPDATE jobs SET result = 'not json {', deadline = 1e999 WHERE id = ?", (job.id,)
    )

    (listed,) = store.list_jobs()
    shown = json.loads(json.dumps(job_json(listed), allow_nan=False))

    assert shown["deadline"] is None  # infinity: no time at all
    assert shown["result"] == {"raw": "not json {"}
    assert store.get(job.id) == listed


def test_a_job_names_the_upstream_that_ran_it_and_null_before_it_ran(store: SyncStore):
    waiting = store.enqueue(new_job())
    ran = store.enqueue(new_job())
    store.conn.execute("UPDATE jobs SET upstream = 'gpu1' WHERE id = ?", (ran.id,))
    store.conn.commit()
    shown = {job.id: job for job in store.list_jobs()}
    assert job_json(shown[waiting.id])["upstream"] is None
    assert job_json(shown[ran.id])["upstream"] == "gpu1"
    assert job_view(shown[ran.id])["upstream"] == "gpu1"
