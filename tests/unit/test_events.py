"""The broadcaster's event-stream feeds and the caps on open streams."""

from __future__ import annotations

import gc
from collections.abc import Awaitable

import pytest
import trio
import trio.testing

from foreman.api.jobs import STREAM_BATCH, _sse, batch_seconds
from foreman.events import Batch, JobEvents, StreamSlots, TooManyStreams
from foreman.jobs import Job, JobState

from ._helpers import later, stored_job, valid


def test_a_change_is_encoded_once_however_many_streams_send_it() -> None:
    events = JobEvents()
    calls: list[str] = []

    def encoder(j: Job) -> bytes:
        calls.append(j.id)
        return _sse(j)

    feeds = [events.open_feed(None) for _ in range(100)]
    feeds += [events.open_feed("a") for _ in range(20)]
    events.publish(stored_job("a"))
    events.publish(stored_job("a", JobState.WORKING))
    events.publish(stored_job("b"))
    sent = [[change.encoded(encoder) for change in feed.take()] for feed in feeds]
    assert calls == ["a", "a", "b"]
    # every stream sends the very same bytes
    for i in range(2):
        assert all(s[i] is sent[0][i] for s in sent)
    assert sent[0][0] == _sse(stored_job("a"))


def test_each_feed_gets_the_changes_it_may_see_once_and_in_order() -> None:
    events = JobEvents()
    everything = events.open_feed(None)
    mine = events.open_feed(None, owner="svc")
    one = events.open_feed("b")
    published = [
        stored_job("a", owner="svc"),
        stored_job("b", owner="other"),
        stored_job("a", JobState.WORKING, owner="svc"),
        stored_job("b", JobState.WORKING, owner="other"),
        stored_job("a", JobState.DONE, owner="svc"),
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
    events.publish(stored_job("a"))
    assert all(feed.take() == [] for feed in feeds)


def test_a_feed_that_falls_behind_ends_after_what_it_holds() -> None:
    events = JobEvents()
    slow = events.open_feed(None, limit=3)
    for i in range(5):
        events.publish(stored_job(f"j{i}"))
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
        events.publish(stored_job("a"))
    assert [c.job.id for c in feed.take()] == ["a"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed.wait)
        await trio.testing.wait_all_tasks_blocked()
        events.close_all()
    assert feed.ended
    # a feed opened after shutdown has ended already
    assert events.open_feed(None).ended


async def test_a_reload_wakes_every_waiting_stream_with_nothing_new() -> None:
    events = JobEvents()
    feeds = [events.open_feed(None), events.open_feed("a"), events.open_feed("b", "svc")]
    woke: list[int] = []

    async def wait(i: int) -> None:
        await feeds[i].wait()
        woke.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(len(feeds)):
            nursery.start_soon(wait, i)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        events.wake_all()
    assert sorted(woke) == [0, 1, 2]
    # nothing was handed over, and no feed ended: each stream goes on if its key stands
    assert all(feed.take() == [] for feed in feeds)
    assert not any(feed.ended for feed in feeds)


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


# -- a stream's next batch ----------------------------------------------------------------


async def timed(step: Awaitable[Batch]) -> tuple[Batch, float]:
    began = trio.current_time()
    out = await step
    return out, trio.current_time() - began


def ids(batch: Batch) -> list[tuple[str, JobState]]:
    return [(c.job.id, c.job.state) for c in batch.changes]


async def test_a_queue_wide_batch_is_every_change_in_order_gathered_for_as_long_as_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = JobEvents()
    feed = events.open_feed(None)
    asked: list[float] = []

    def gather() -> float:
        asked.append(trio.current_time())
        return 0.5

    now = trio.current_time()
    async with trio.open_nursery() as nursery:
        later(nursery, now + 2.0, lambda: events.publish(stored_job("a")))
        later(nursery, now + 2.1, lambda: events.publish(stored_job("b")))
        later(nursery, now + 2.2, lambda: events.publish(stored_job("a", JobState.WORKING)))
        later(nursery, now + 2.7, lambda: events.publish(stored_job("b", JobState.DONE)))
        batch, took = await timed(feed.next_batch(15.0, gather, valid))
        # nothing merged: a job's every change goes out, in the order committed
        assert ids(batch) == [
            ("a", JobState.QUEUED),
            ("b", JobState.QUEUED),
            ("a", JobState.WORKING),
        ]
        assert not batch.ended
        assert took == pytest.approx(2.5)
        # how long to gather is asked once something arrived, not before the wait
        assert asked == [pytest.approx(now + 2.0)]
        batch = await feed.next_batch(15.0, gather, valid)
        assert ids(batch) == [("b", JobState.DONE)]  # a queue-wide stream goes on


async def test_a_quiet_wait_is_a_keep_alive_and_a_queue_wide_one_still_gathers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = JobEvents()
    batch, took = await timed(events.open_feed("a").next_batch(15.0, None, valid))
    assert batch == Batch([])
    assert took == pytest.approx(15.0)
    everything = events.open_feed(None)
    now = trio.current_time()
    async with trio.open_nursery() as nursery:
        later(nursery, now + 15.2, lambda: events.publish(stored_job("a")))
        batch, took = await timed(everything.next_batch(15.0, lambda: 0.5, valid))
    assert ids(batch) == [("a", JobState.QUEUED)]
    assert took == pytest.approx(15.5)


async def test_a_jobs_batch_goes_out_at_once_and_ends_with_its_first_terminal_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = JobEvents()
    feed = events.open_feed("a")
    events.publish(stored_job("a", JobState.WORKING))
    batch, took = await timed(feed.next_batch(15.0, None, valid))
    assert (ids(batch), batch.ended, took) == ([("a", JobState.WORKING)], False, 0.0)
    events.publish(stored_job("a", JobState.FAILED))
    events.publish(stored_job("a", JobState.QUEUED))  # retried at once: after the stream's end
    batch = await feed.next_batch(15.0, None, valid)
    assert ids(batch) == [("a", JobState.FAILED)]
    assert batch.ended


async def test_a_key_that_no_longer_stands_ends_the_stream_with_nothing_more_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = JobEvents()
    feed = events.open_feed(None)
    events.publish(stored_job("a"))
    batch, took = await timed(feed.next_batch(15.0, lambda: 0.5, lambda: False))
    assert (batch, took) == (Batch([], ended=True), 0.0)
    assert [c.job.id for c in feed.take()] == ["a"]  # left unsent
    batch, took = await timed(feed.next_batch(4.0, None, lambda: False))
    assert batch == Batch([], ended=True)
    assert took == pytest.approx(4.0)


async def test_an_ended_feed_hands_over_what_it_holds_then_ends_the_stream_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = JobEvents()
    feed = events.open_feed(None)
    events.publish(stored_job("a"))
    events.close_all()
    batch, took = await timed(feed.next_batch(15.0, lambda: 0.5, valid))
    assert (ids(batch), batch.ended, took) == ([("a", JobState.QUEUED)], True, 0.0)
    batch, took = await timed(feed.next_batch(15.0, lambda: 0.5, valid))
    assert (batch, took) == (Batch([], ended=True), 0.0)
