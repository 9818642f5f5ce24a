"""How foreman writes a moment: RFC 3339, in UTC, with a trailing Z (as Ollama does).

Pure. The logs, the job API and the answers foreman writes for Ollama's clients all
write times this way; only the precision differs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

Timespec = Literal["seconds", "milliseconds", "microseconds"]


def rfc3339(seconds: float, timespec: Timespec = "milliseconds") -> str:
    """`seconds` since the epoch, e.g. 2026-11-23T16:05:09.123Z. Raises ValueError (or
    OverflowError) for a moment a datetime cannot hold, as `datetime.fromtimestamp`
    does."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")
