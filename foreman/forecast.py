"""Where a queued job stands: how many jobs start before it, and when it may start.

A forecast plays the placement rule forward one model at a time, not one job at a time,
so it costs a few steps per queued model however long the queue is:

- an upstream holding a model drains that model's queue first (drain by model), at its
  slots' pace, after the jobs it runs now;
- an upstream that runs out of work loads the next model no upstream holds, in the rule's
  order (highest priority, then the oldest job), and drains it;
- a job's own model's jobs ahead of it are counted exactly by the store; the jobs of other
  models that start meanwhile come from the forecast.

It leaves out what it cannot know or what rarely changes the answer: jobs that arrive
later, second copies of a model, the starvation bound and retries. Times come from what
foreman measured (each model's median job and load time, `policy.LoadCosts`); until a
model's jobs have been measured, its estimate is None.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping

import attrs

from foreman.policy import LoadCosts, model_of


@attrs.frozen
class Backlog:
    """One model's (residency key's) queued jobs: how many, and where its best job stands
    in the rule's order of models (its priority, then when it was queued)."""

    key: str
    queued: int
    top_priority: int
    oldest: float


@attrs.frozen
class Upstream:
    """One healthy upstream as the forecast sees it."""

    name: str
    slots: int
    # the key it holds or is loading (None: nothing, or not known)
    resident: str | None
    # seconds of work left in the jobs it runs now, summed over its slots
    busy_seconds: float = 0.0
    serves: Callable[[str], bool] = attrs.field(default=lambda _: True, eq=False, repr=False)


@attrs.frozen
class Drain:
    """One model's queue running on upstreams: its queued jobs start from `begins`
    (seconds from now), `slots` at a time, each taking `job_seconds`."""

    key: str
    begins: float
    slots: int
    job_seconds: float
    jobs: int

    def start_of(self, ahead: int) -> float:
        """When a job of this model with `ahead` of its jobs before it starts."""
        return self.begins + (ahead // self.slots) * self.job_seconds

    @property
    def ends(self) -> float:
        """When its last queued job ends: its upstreams run out of its work."""
        return self.start_of(self.jobs - 1) + self.job_seconds

    def started_by(self, at: float) -> int:
        """How many of its jobs have started `at` seconds from now."""
        if at < self.begins:
            return 0
        return min(self.jobs, (math.floor((at - self.begins) / self.job_seconds) + 1) * self.slots)


@attrs.frozen
class Standing:
    """A queued job's place: `position` jobs start before it; it starts in about
    `starts_in` seconds (None while its model's job time is not measured, or no healthy
    upstream may run it)."""

    position: int
    starts_in: float | None


@attrs.frozen
class Forecast:
    drains: Mapping[str, Drain]
    # the keys whose job time foreman has measured
    measured: frozenset[str]

    def standing(self, key: str, ahead: int) -> Standing:
        """The standing of a job of `key` with `ahead` jobs of its own key before it."""
        drain = self.drains.get(key)
        if drain is None:
            return Standing(ahead, None)
        at = drain.start_of(ahead)
        # a job of another model counts when it starts strictly before this one
        others = sum(d.started_by(at - 1e-9) for k, d in self.drains.items() if k != key)
        return Standing(ahead + others, at if key in self.measured else None)


def forecast(
    upstreams: Iterable[Upstream], backlogs: Iterable[Backlog], costs: LoadCosts
) -> Forecast:
    """The order and pace in which the queued models will drain (see the module)."""
    ups = list(upstreams)
    queued = {b.key: b for b in backlogs if b.queued > 0}
    # the upstreams holding each queued key: they drain it first, together
    holders: dict[str, list[int]] = {}
    for i, up in enumerate(ups):
        if up.resident is not None and up.resident in queued:
            holders.setdefault(up.resident, []).append(i)
    drains: dict[str, Drain] = {}
    # (when it runs out of work, its place in the configuration): the next to choose
    free: list[tuple[float, int]] = [
        (up.busy_seconds / max(1, up.slots), i)
        for i, up in enumerate(ups)
        if up.resident not in holders
    ]
    for key, held in holders.items():
        slots = sum(ups[i].slots for i in held)
        begins = sum(ups[i].busy_seconds for i in held) / slots
        drain = Drain(key, begins, slots, costs.job(key), queued[key].queued)
        drains[key] = drain
        free += [(drain.ends, i) for i in held]
    heapq.heapify(free)
    # the keys no upstream holds, in the order the rule loads them
    waiting = sorted(
        (b for k, b in queued.items() if k not in drains),
        key=lambda b: (-b.top_priority, b.oldest, b.key),
    )
    while waiting and free:
        at, i = heapq.heappop(free)
        up = ups[i]
        taken = next((b for b in waiting if up.serves(model_of(b.key))), None)
        if taken is None:
            continue  # nothing left that it may run: it stays idle
        waiting.remove(taken)
        key = taken.key
        drain = Drain(key, at + costs.load(key), up.slots, costs.job(key), taken.queued)
        drains[key] = drain
        heapq.heappush(free, (drain.ends, i))
    return Forecast(drains, frozenset(costs.job_seconds))
