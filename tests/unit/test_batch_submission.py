"""POST /jobs/batch below the route: the body's checks, and the store's one commit for
the whole batch, all or none."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman.events import JobEvents, Wakeup
from foreman.jobs import Job
from foreman.queue import JobQueue
from foreman.store import IdempotencyConflict, Store, SyncStore, connect
from foreman.tickets import Tickets
from foreman.validate import (
    BatchTooLarge,
    InvalidRequest,
    batch_submission,
    submission,
)

from ._helpers import FakeClock, new_job


def item(text: str = "hi", **extra: Any) -> dict[str, Any]:
    body = {"model": "llama3", "messages": [{"role": "user", "content": text}]}
    return {"endpoint": "/api/chat", "body": body, **extra}


def batch(*items: Any) -> bytes:
    return json.dumps({"jobs": list(items)}).encode()


@pytest.fixture
def sync_store(tmp_path: Path) -> Iterator[SyncStore]:
    store = SyncStore(connect(tmp_path / "foreman.db"), FakeClock())
    yield store
    store.conn.close()


# -- the body -------------------------------------------------------------------------


def test_each_item_becomes_the_job_post_jobs_would_make_of_it() -> None:
    items = [item("a", priority=3, ref="r:1", deadline=60), item("b", max_attempts=2)]
    made = batch_submission(batch(*items), 5, 1000.0, 10)
    alone = [submission(json.dumps(i).encode(), 5, 1000.0) for i in items]
    assert [m.new for m in made] == alone
    assert [m.key for m in made] == [None, None]


def test_an_items_key_stands_for_its_content_whatever_its_spelling() -> None:
    spaced = b'{"jobs": [ {"idempotency_key": "k", "ref": "x",  "endpoint": "/api/chat",'
    spaced += b' "body": {"messages": [], "model": "m"}} ]}'
    compact = batch(
        {"endpoint": "/api/chat", "body": {"model": "m", "messages": []}, "ref": "x"}
        | {"idempotency_key": "k"}
    )
    (a,) = batch_submission(spaced, 5, 0.0, 10)
    (b,) = batch_submission(compact, 5, 0.0, 10)
    assert a.key == b.key == "k"
    assert a.content == b.content
    (other,) = batch_submission(batch(item("another", idempotency_key="k")), 5, 0.0, 10)
    assert other.content != a.content


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "missing request body"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"jobs": {}}', "jobs must be a list"),
        (b'{"jobs": "x"}', "jobs must be a list"),
        (b'{"jobs": []}', "at least one"),
        (b'{"jobs": [], "colour": 1}', "unknown field(s): colour"),
        (b'{"jobs": [1]}', "jobs[0]: a job submission must be a JSON object"),
        (b'{"jobs": [null]}', "jobs[0]: a job submission must be a JSON object"),
        (b'{"jobs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested too deeply"),
        (batch(item(), item(idempotency_key=7)), "jobs[1]: idempotency_key must be"),
        (batch(item(), item(idempotency_key="")), "jobs[1]: idempotency_key must be"),
        (batch(item(idempotency_key="a\nb")), "jobs[0]: idempotency_key must be"),
        (batch(item(), item(), item(colour=1)), "jobs[2]: unknown field(s): colour"),
        (batch(item(), {"endpoint": "/api/chat", "body": {}}), "jobs[1]: model is required"),
        (batch(item(priority=10**7)), "jobs[0]: priority must be"),
        (batch(item(deadline=-1)), "jobs[0]: deadline must be"),
        (b'{"jobs": [{"endpoint": "/api/chat", "body": {"model": "\\ud800"}}]}', "surrogate"),
    ],
)
def test_a_bad_batch_is_refused_naming_its_first_bad_item(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        batch_submission(raw, 5, 0.0, 10)
    assert message in str(refused.value)


def test_more_items_than_max_batch_is_its_own_refusal() -> None:
    assert len(batch_submission(batch(*[item()] * 3), 5, 0.0, 3)) == 3
    with pytest.raises(BatchTooLarge, match="at most 3 jobs"):
        batch_submission(batch(*[item()] * 4), 5, 0.0, 3)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), st.lists, max_leaves=8))
def test_any_json_body_is_a_batch_or_a_clear_refusal(jobs: Any) -> None:
    try:
        made = batch_submission(json.dumps({"jobs": jobs}).encode(), 5, 0.0, 10)
    except InvalidRequest:
        return
    assert made  # only a list of valid submissions gets here


# -- the store ------------------------------------------------------------------------


def test_a_batch_is_one_transaction_and_one_commit(sync_store: SyncStore) -> None:
    statements: list[str] = []
    sync_store.conn.set_trace_callback(statements.append)
    try:
        answers = sync_store.submit_all([(new_job(ref=f"r{i}"), f"id{i:02}") for i in range(20)])
    finally:
        sync_store.conn.set_trace_callback(None)
    assert [(job.id, job.ref, made) for job, made in answers] == [
        (f"id{i:02}", f"r{i}", True) for i in range(20)
    ]
    words = [s.split()[0].upper() for s in statements]
    assert words.count("BEGIN") == 1
    assert words.count("COMMIT") == 1
    assert len(sync_store.list_jobs(limit=100)) == 20


def test_a_conflict_anywhere_stores_nothing_and_names_its_item(sync_store: SyncStore) -> None:
    first = sync_store.enqueue(new_job(idempotency_key="k", request_hash="one"), "first")
    with pytest.raises(IdempotencyConflict) as refused:
        sync_store.submit_all(
            [
                (new_job(ref="a"), "a"),
                (new_job(ref="b", idempotency_key="k", request_hash="two"), "b"),
                (new_job(ref="c"), "c"),
            ]
        )
    assert refused.value.index == 1
    assert refused.value.job.id == first.id
    assert [job.id for job in sync_store.list_jobs()] == ["first"]


def test_a_key_twice_in_one_batch_names_one_job(sync_store: SyncStore) -> None:
    answers = sync_store.submit_all(
        [
            (new_job(idempotency_key="k", request_hash="h"), "a"),
            (new_job(idempotency_key="k", request_hash="h"), "b"),
        ]
    )
    assert [(job.id, made) for job, made in answers] == [("a", True), ("a", False)]
    with pytest.raises(IdempotencyConflict) as refused:
        sync_store.submit_all(
            [
                (new_job(idempotency_key="j", request_hash="h"), "c"),
                (new_job(idempotency_key="j", request_hash="other"), "d"),
            ]
        )
    assert refused.value.index == 1
    assert [job.id for job in sync_store.list_jobs()] == ["a"]


# -- the queue ------------------------------------------------------------------------


async def test_a_batch_wakes_the_workers_and_is_announced_in_item_order(tmp_path: Path) -> None:
    events = JobEvents()
    heard: list[Job] = []
    events.subscribe(None, heard.append)
    store = Store(SyncStore(connect(tmp_path / "foreman.db")), events.publish)
    wakeup = Wakeup()
    queue = JobQueue(store, Tickets(), wakeup, events, lambda _: False)
    try:
        armed = wakeup.arm()
        submitted = await queue.submit_all([new_job(ref=f"r{i}") for i in range(300)])
        assert armed.is_set()
        assert [s.job.ref for s in submitted] == [f"r{i}" for i in range(300)]
        # the ids sort as the items stand, so listings and the scheduling rule's ties
        # keep the order the jobs were given in
        ids = [s.job.id for s in submitted]
        assert ids == sorted(ids)
        assert [job.id for job in heard] == ids
        assert all(s.created for s in submitted)
    finally:
        await store.close()
