"""The broadcaster's event-stream feeds and the caps on open streams."""

from __future__ import annotations

import gc

import pytest
import trio
import trio.testing

from foreman.api.jobs import STREAM_BATCH, _sse, batch_seconds
from foreman.events import JobEvents, StreamSlots, TooManyStreams
from foreman.jobs import Endpoint, Job, JobState


def job(job_id: str, state: JobState = JobState.QUEUED, owner: str | None = None) -> Job:
    return Job(
        id=job_id,
        endpoint=Endpoint.CHAT,
        model="m",
        model_key="m:latest",
        body=b"{}",
        stream=False,
        state=state,
        priority=0,
        attempts=0,
        max_attempts=5,
        not_before=0.0,
        enqueued_at=1.0,
        created_at=1.0,
        key_name=owner,
    )


def test_a_change_is_encoded_once_however_many_streams_send_it() -> None:
    events = JobEvents()
    calls: list[str] = []

    def encoder(j: Job) -> bytes:
        calls.append(j.id)
        return _sse(j)

    feeds = [events.open_feed(None) for _ in range(100)]
    feeds += [events.open_feed("a") for _ in range(20)]
    events.publish(job("a"))
    events.publish(job("a", JobState.WORKING))
    events.publish(job("b"))
    sent = [[change.encoded(encoder) for change in feed.take()] for feed in feeds]
    assert calls == ["a", "a", "b"]
    # every stream sends the very same bytes
    for i in range(2):
        assert all(s[i] is sent[0][i] for s in sent)
    assert sent[0][0] == _sse(job("a"))


def test_each_feed_gets_the_changes_it_may_see_once_and_in_order() -> None:
    events = JobEvents()
    everything = events.open_feed(None)
    mine = events.open_feed(None, owner="svc")
    one = events.open_feed("b")
    published = [
        job("a", owner="svc"),
        job("b", owner="other"),
        job("a", JobState.WORKING, owner="svc"),
        job("b", JobState.WORKING, owner="other"),
        job("a", JobState.DONE, owner="svc"),
    ]
    for j in published:
        events.publish(j)
    assert [c.job for c in everything.take()] == published
    assert [c.job for c in mine.take()] == [j for j in published if j.key_name == "svc"]
    assert [c.job for c in one.take()] == [j for j in published if j.id == "b"]
    assert everything.take() == []


def test_a_stopped_feed_hears_nothing_more() -> None:
    events = JobEvents()
    feeds = [events.open_feed(None), events.open_feed("a")]
    assert events.feed_count() == 2
    for feed in feeds:
        feed.stop()
    assert events.feed_count() == 0
    events.publish(job("a"))
    assert all(feed.take() == [] for feed in feeds)


def test_a_feed_that_falls_behind_ends_after_what_it_holds() -> None:
    events = JobEvents()
    slow = events.open_feed(None, limit=3)
    for i in range(5):
        events.publish(job(f"j{i}"))
    assert slow.ended
    assert [c.job.id for c in slow.take()] == ["j0", "j1", "j2"]


async def test_a_waiting_stream_wakes_for_a_change_and_at_shutdown() -> None:
    events = JobEvents()
    feed = events.open_feed(None)
    woke = trio.Event()

    async def wait() -> None:
        await feed.wait()
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        events.publish(job("a"))
    assert [c.job.id for c in feed.take()] == ["a"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed.wait)
        await trio.testing.wait_all_tasks_blocked()
        events.close_all()
    assert feed.ended
    # a feed opened after shutdown has ended already
    assert events.open_feed(None).ended


def test_a_key_may_hold_its_share_of_streams_then_gets_429() -> None:
    slots = StreamSlots(total=10, per_key=2)
    held = [slots.take("svc"), slots.take("svc")]
    with pytest.raises(TooManyStreams) as refused:
        slots.take("svc")
    assert refused.value.status == 429
    assert "event streams" in str(refused.value)
    # another key is not held back by svc's share
    slots.take("other")
    held[0].release()
    slots.take("svc")


def test_foreman_holds_at_most_the_total_then_answers_503() -> None:
    slots = StreamSlots(total=3, per_key=2)
    held = [slots.take("a"), slots.take("b"), slots.take(None)]
    with pytest.raises(TooManyStreams) as refused:
        slots.take("c")
    assert refused.value.status == 503
    assert len(slots) == 3
    held[2].release()
    held[2].release()  # releasing twice frees one place
    assert len(slots) == 2
    slots.take("c")


def test_without_keys_only_the_total_applies() -> None:
    slots = StreamSlots(total=5, per_key=1)
    held = [slots.take(None) for _ in range(5)]
    with pytest.raises(TooManyStreams) as refused:
        slots.take(None)
    assert refused.value.status == 503
    assert len(held) == 5


def test_a_slot_dropped_without_release_is_freed_when_collected() -> None:
    """A stream whose response never began (the client left at once) never runs the
    code that releases its slot."""
    slots = StreamSlots(total=1, per_key=1)
    slot = slots.take("svc")
    with pytest.raises(TooManyStreams):
        slots.take("svc")
    del slot
    gc.collect()
    slots.take("svc")


def test_many_queue_wide_streams_gather_changes_for_longer() -> None:
    assert batch_seconds(0) == batch_seconds(1) == STREAM_BATCH
    assert batch_seconds(200) > STREAM_BATCH
    assert batch_seconds(400) == pytest.approx(2 * batch_seconds(200))
