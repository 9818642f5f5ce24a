"""The connection cap's arithmetic and the accept-failure log's throttle."""

from __future__ import annotations

import logging

import pytest
import trio

from foreman.config import ConfigError
from foreman.connections import (
    DEFAULT_CEILING,
    RECLAIM_SLACK,
    RESERVED_FILES,
    AcceptFailureThrottle,
    ConnectionCount,
    connection_cap,
)


def test_the_default_cap_is_what_the_file_limit_leaves_after_the_reserve() -> None:
    assert connection_cap(None, 1024, 72) == 1024 - RESERVED_FILES - 72
    assert connection_cap(None, 1 << 20, 72) == DEFAULT_CEILING


def test_a_cap_the_file_limit_cannot_hold_fails_with_one_line() -> None:
    with pytest.raises(ConfigError, match="max_connections=2000 is more than") as err:
        connection_cap(2000, 1024, 72)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="leaves no room"):
        connection_cap(None, 100, 72)
    assert connection_cap(10, 1024, 72) == 10


def test_the_count_refuses_past_the_cap_and_frees_places() -> None:
    count = ConnectionCount(2)
    assert count.take()
    assert count.take()
    assert not count.take()
    count.release("first")
    assert count.take()
    assert count.refused == 1


async def test_at_the_cap_the_connection_idle_longest_makes_room() -> None:
    count = ConnectionCount(3)
    waits = {name: trio.CancelScope() for name in ("a", "b", "c")}
    for _ in waits:
        assert count.take()
    count.idle("b", waits["b"])
    count.idle("a", waits["a"])
    count.idle("c", waits["c"])
    count.busy("c")  # a request came on c: it is not idle any more
    assert count.take()
    assert waits["b"].cancel_called
    assert not waits["a"].cancel_called
    assert not waits["c"].cancel_called
    assert count.take()
    assert waits["a"].cancel_called
    # nobody idle: the next one is refused
    assert not count.take()
    assert (count.reclaimed, count.refused) == (2, 1)
    # the reclaimed ones let go of their places as they close
    count.release("b")
    count.release("a")
    assert count.open == 3


async def test_reclaiming_stops_while_too_many_closes_are_pending() -> None:
    count = ConnectionCount(RECLAIM_SLACK)
    for i in range(RECLAIM_SLACK):
        assert count.take()
        count.idle(i, trio.CancelScope())
    for _ in range(RECLAIM_SLACK):
        assert count.take()
    count.idle("one more", trio.CancelScope())
    assert not count.take()  # the files of the closing ones are not free yet
    count.release(0)
    assert count.take()


def test_accept_failures_reach_the_log_once_a_window_without_their_traceback() -> None:
    throttle = AcceptFailureThrottle(every=3600.0)

    def record() -> logging.LogRecord:
        try:
            raise OSError(24, "Too many open files")
        except OSError as exc:
            return logging.LogRecord(
                "trio.serve_listeners",
                logging.ERROR,
                "",
                0,
                "accept returned %s",
                ("EMFILE",),
                (type(exc), exc, exc.__traceback__),
            )

    first = record()
    assert throttle.filter(first)
    assert first.exc_info is None
    assert not any(throttle.filter(record()) for _ in range(50))
