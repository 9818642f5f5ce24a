"""The scheduling rule: which runnable job runs next. Pure, so it can be property-tested.

The store's claim query implements the same rule with indexed lookups; a property test
checks that the two agree. The rule, in order:

1. Starvation bound: a runnable job that has waited longer than `max_wait` goes first
   (the highest priority, then the oldest, of those).
2. Otherwise the highest priority first; within it, jobs for the resident model first,
   then the oldest.
3. When the resident model has nothing left at the top priority, switch to the model of
   the oldest job of the top priority.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs


@attrs.frozen
class Candidate:
    """The scheduling-relevant view of a queued job."""

    id: str
    model_key: str
    priority: int
    enqueued_at: float
    not_before: float = 0.0


def age_order(c: Candidate) -> tuple[float, str]:
    """Oldest first; the id breaks ties so the order is total and deterministic."""
    return (c.enqueued_at, c.id)


def rank(c: Candidate) -> tuple[int, float, str]:
    return (-c.priority, c.enqueued_at, c.id)


def is_starved(c: Candidate, now: float, max_wait: float) -> bool:
    """Waited longer than `max_wait` (written as the store's SQL compares it)."""
    return c.enqueued_at < now - max_wait


def pick_next(
    candidates: Iterable[Candidate],
    resident: str | None,
    now: float,
    max_wait: float,
) -> Candidate | None:
    """The job to run next, or None when nothing is runnable at `now`."""
    runnable = [c for c in candidates if c.not_before <= now]
    if not runnable:
        return None
    starved = [c for c in runnable if is_starved(c, now, max_wait)]
    if starved:
        return min(starved, key=rank)
    top = max(c.priority for c in runnable)
    at_top = [c for c in runnable if c.priority == top]
    if resident is not None:
        mine = [c for c in at_top if c.model_key == resident]
        if mine:
            return min(mine, key=age_order)
    return min(at_top, key=age_order)
