"""Wall-clock time, read in this one place.

Only the strings Ollama puts in bodies (created_at, expires_at, modified_at, created) use it;
every duration and deadline in the stub uses trio's clock, so MockClock tests stay exact.
"""

from __future__ import annotations

import time


def wall_ns() -> int:
    """Nanoseconds since the Unix epoch."""
    return time.time_ns()


def wall_seconds() -> float:
    return wall_ns() / 1e9
