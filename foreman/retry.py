"""What to do after a failed upstream call: retry later, fail now, or wait out an outage.

Pure. `upstream` turns every failure into an `UpstreamError` with one of these kinds; the
worker asks `backoff_delay` how long a transient failure waits before its next attempt.
"""

from __future__ import annotations

import enum
import random

# the longest a retry waits, however many attempts failed before it
BACKOFF_CAP = 60.0


class FailureKind(enum.Enum):
    # Ollama cannot be reached at all: not the job's fault, no attempt is spent
    OUTAGE = "outage"
    # reset, timeout, 5xx, a stream cut before any byte reached the client: try again
    TRANSIENT = "transient"
    # Ollama understood the request and refused it (4xx): retrying cannot help
    PERMANENT = "permanent"


def classify_status(status: int) -> FailureKind:
    """Upstream 5xx, 408 and 429 are worth retrying; any other 4xx is the request's fault."""
    if status >= 500 or status in (408, 429):
        return FailureKind.TRANSIENT
    return FailureKind.PERMANENT


def backoff_delay(
    attempt: int, base: float, cap: float = BACKOFF_CAP, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter, capped: attempt 1 waits up to `base`.

    The jitter spreads retries of many jobs failed by one blip; the floor of half the
    window keeps a retry from firing immediately.
    """
    # the exponent is clamped: 2.0 ** 1024 raises OverflowError, and the cap is long
    # reached by then anyway
    window = min(cap, base * 2.0 ** min(max(0, attempt - 1), 1023))
    r = rng.random() if rng is not None else random.random()
    return window * (0.5 + 0.5 * r)
