"""The connection cap's arithmetic and the accept-failure log's throttle."""

from __future__ import annotations

import logging

import pytest

from foreman.config import ConfigError
from foreman.connections import (
    DEFAULT_CEILING,
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
    count.release()
    assert count.take()
    assert count.refused == 1


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
