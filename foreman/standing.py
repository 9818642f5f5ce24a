"""Where a queued job stands, for the routes: its position and estimated start.

One `Standings` per daemon. It keeps the latest `forecast.Forecast` of the queue and
makes a new one only when a job changed since and the last is a second old, so watching
many jobs costs one forecast a second at most: a few seeks per queued model, the running
jobs, and the in-memory tally's counts, never a walk over the queue. Each job's own
standing adds one count of the jobs of its model ahead of it (`SyncStore.ahead_in_key`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from foreman.fleet import Fleet, Member
from foreman.forecast import Backlog, Forecast, Standing, Upstream, forecast
from foreman.jobs import Job, JobState
from foreman.metrics import JobTally
from foreman.store import Store

# the least time between two forecasts (and between two position events of one stream)
REFRESH_SECONDS = 1.0
# while a queued model has no measured job time, the measurements are read again this
# often (they are otherwise read every `fleet.COSTS_REFRESH_SECONDS`)
UNMEASURED_REFRESH_SECONDS = 2.0
# the measurements a forecast reads: the last day's
COSTS_WINDOW_SECONDS = 24 * 3600.0


class Standings:
    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        tally: JobTally,
        wall: Callable[[], float],
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._store = store
        self._fleet = fleet
        self._tally = tally
        self._wall = wall
        self._clock = clock
        self._forecast: Forecast | None = None
        self._version = -1
        self._made_at = -math.inf
        self._costs_read_at = -math.inf
        self._lock = trio.Lock()

    async def of(self, job: Job) -> Standing | None:
        """The standing of `job` as it is now (None unless it is queued)."""
        if job.state is not JobState.QUEUED:
            return None
        made = await self.forecast()
        ahead = await self._store.ahead_in_key(job)
        return made.standing(job.model_key, ahead)

    def changed_since(self, version: int) -> bool:
        return self._tally.version != version

    @property
    def version(self) -> int:
        """Goes up with every job change (see `changed_since`)."""
        return self._tally.version

    def start_time(self, standing: Standing) -> float | None:
        """The estimated start as a wall-clock time."""
        if standing.starts_in is None:
            return None
        return self._wall() + standing.starts_in

    async def forecast(self) -> Forecast:
        """The latest forecast, made again when a job changed since and it is a second
        old. Concurrent callers share one making."""
        async with self._lock:
            now = self._clock()
            if self._forecast is not None and (
                self._version == self._tally.version or now - self._made_at < REFRESH_SECONDS
            ):
                return self._forecast
            version = self._tally.version
            self._forecast = await self._make()
            self._version, self._made_at = version, self._clock()
            return self._forecast

    async def _make(self) -> Forecast:
        wall = self._wall()
        heads, running = await self._store.forecast_reads(wall)
        counts = self._tally.queued_by_key()
        if any(h.model_key not in self._fleet.costs.job_seconds for h in heads):
            await self._read_costs()
        costs = self._fleet.costs
        backlogs = [
            Backlog(h.model_key, counts.get(h.model_key, 1), h.priority, h.enqueued_at)
            for h in heads
        ]
        upstreams = [
            self._upstream(m, [j for j in running if j.upstream == m.name], wall)
            for m in self._fleet.healthy()
        ]
        return forecast(upstreams, backlogs, costs)

    async def _read_costs(self) -> None:
        """Read the measurements again if they are a little old: a model that has just
        run its first jobs gets estimates within seconds, not at the next refresh."""
        now = self._clock()
        if now - self._costs_read_at < UNMEASURED_REFRESH_SECONDS:
            return
        self._costs_read_at = now
        costs = await self._store.measured_costs(self._wall() - COSTS_WINDOW_SECONDS)
        self._fleet.set_costs(costs, now)

    def _upstream(self, member: Member, running: list[Job], wall: float) -> Upstream:
        """A member as the forecast sees it: the work left in its running jobs is each
        one's measured time less what it has run (a load's time too, while loading)."""
        costs = self._fleet.costs
        busy = 0.0
        for job in running:
            left = costs.job(job.model_key)
            if job.state is JobState.LOADING:
                left += costs.load(job.model_key)
            busy += max(0.0, left - (wall - (job.started_at or wall)))
        fleet = self._fleet
        return Upstream(
            member.name,
            member.spec.slots,
            member.loading_key or member.resident,
            busy,
            serves=lambda model: fleet.may_serve(member, model),
        )
