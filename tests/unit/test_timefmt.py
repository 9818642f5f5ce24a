"""Times as foreman writes them: RFC 3339, UTC, a trailing Z."""

from __future__ import annotations

import json
import logging

from foreman.logs import JsonFormatter
from foreman.timefmt import rfc3339


def test_a_moment_is_written_in_utc_with_a_trailing_z() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1_795_449_909.123) == "2026-11-23T16:05:09.123Z"
    assert rfc3339(1.5, "microseconds") == "1970-01-01T00:00:01.500000Z"
    assert rfc3339(59.9, "seconds") == "1970-01-01T00:00:59Z"


def test_a_json_log_line_carries_its_time_in_milliseconds() -> None:
    record = logging.makeLogRecord({"msg": "hello", "levelname": "INFO", "created": 86_400.25})
    line = json.loads(JsonFormatter().format(record))
    assert line["time"] == "1970-01-02T00:00:00.250Z"
