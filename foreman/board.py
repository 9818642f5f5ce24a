"""The dashboard's view of the queue: what it holds, what runs, what the swaps cost.

One `Board` per daemon. It hears every committed job change from the broadcaster and the
worker's progress through `poke`, and hands both on to the dashboard's event streams, each
of which has its own channel (`Feed`). A stream sends job changes in small batches and a
fresh `summary` at most once per `spacing` seconds; the summary is read from the
database once per change and shared by every viewer, and the spacing grows with what the
read costs, so open dashboards cannot crowd the worker out of the store. The per-owner
table is not read from the database at all: it comes from the in-memory tally of
unfinished jobs and the keys in force.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from foreman import events
from foreman.jobs import Job, JobState
from foreman.keys import KeyRing
from foreman.residency import split_key
from foreman.standing import Standings
from foreman.status import Status, WorkerStatistics, idle
from foreman.store import Activity, Overview, Store, Swap

# the headline's window
ACTIVITY_WINDOW = 24 * 3600.0
# bounds on the time between two summaries a stream sends
MIN_SPACING = 0.25
MAX_SPACING = 5.0
# how many times its own cost a summary read waits before the next one
COST_FACTOR = 10.0
# the headline walks a day of finished jobs: it is read again at most this often, and
# at most once per this many times what its read cost
ACTIVITY_REFRESH = 1.0
ACTIVITY_COST_FACTOR = 20.0
# how many of the latest loads the swap timeline shows, per upstream
SWAPS_PER_UPSTREAM = 40
# the longest error text a dashboard row carries
ERROR_CHARS = 500
# how many of the newest queued jobs a summary says the place of
PLACES = 50
# how long a stream gathers changes after the first before it writes them (a person
# cannot tell)
BATCH_SECONDS = 0.1


class Poke:
    """Something other than a job changed (a token arrived, an embedding model was used)."""


POKE = Poke()


class Resync(Poke):
    """Jobs were deleted (a purge): no change announces it, so a stream sends a whole new
    snapshot."""


RESYNC = Resync()


@attrs.define(eq=False)
class Change(events.Change):
    """A committed job change, numbered: a stream that read the jobs when the board was
    at `version` v has seen every change numbered v or lower. Its encoding is shared by
    every stream that sends it (see `events.Change`)."""

    version: int


@attrs.define(eq=False)
class _Viewer:
    send: trio.MemorySendChannel[Change | Poke]
    # a poke (or resync) is already in the channel: one is enough
    poked: bool = False
    resync: bool = False


@attrs.frozen
class Batch:
    """What a dashboard stream sends after a burst: each job `changes` names once, in its
    latest state (in the order of those latest changes); a new snapshot instead when
    `resync` (it holds every change before it); and, when `ended`, nothing more after
    these (the viewer fell behind, foreman is shutting down, or the key no longer
    stands): the stream closes and the page reconnects."""

    changes: list[Change]
    resync: bool = False
    ended: bool = False


@attrs.define(eq=False)
class Feed:
    """One dashboard stream's changes. Its channel ends when the viewer falls too far
    behind or foreman shuts down."""

    receive: trio.MemoryReceiveChannel[Change | Poke]
    _viewer: _Viewer
    _board: Board
    # only the changes of this key's jobs (None: all)
    owner: str | None = None

    def took_poke(self, poke: Poke) -> None:
        """Call after taking a `Poke` (or `Resync`), so the next one is delivered."""
        if isinstance(poke, Resync):
            self._viewer.resync = False
        else:
            self._viewer.poked = False

    async def next_batch(
        self, wait: float, seen: int, still_valid: Callable[[], bool]
    ) -> Batch | None:
        """The next burst, or None if nothing arrived within `wait` seconds.

        Changes come in bursts (a job moves three times in a few milliseconds): what
        arrives within `BATCH_SECONDS` of the first goes out in one write. A stream that
        read the jobs at board version `seen` skips the changes numbered at or below it.
        `still_valid` is asked once the wait is over, before anything is gathered: False
        ends the stream with nothing more sent.
        """
        items: list[Change | Poke] = []
        with trio.move_on_after(wait):
            try:
                items.append(await self.receive.receive())
            except trio.EndOfChannel:
                return Batch([], ended=True)
        if not still_valid():
            return Batch([], ended=True)
        if not items:
            return None
        await trio.sleep(BATCH_SECONDS)
        ended = self._take_waiting(items)
        latest: dict[str, Change] = {}
        resync = False
        for item in items:
            if isinstance(item, Poke):
                self.took_poke(item)
                resync = resync or isinstance(item, Resync)
            elif item.version > seen and (self.owner is None or item.job.key_name == self.owner):
                latest.pop(item.job.id, None)
                latest[item.job.id] = item
        return Batch(list(latest.values()), resync, ended)

    def _take_waiting(self, items: list[Change | Poke]) -> bool:
        """Move every change already in the channel into `items`; True if it ended."""
        while True:
            try:
                items.append(self.receive.receive_nowait())
            except trio.WouldBlock:
                return False
            except trio.EndOfChannel:
                return True

    def stop(self) -> None:
        self._board._drop(self._viewer)


class Board:
    def __init__(
        self,
        store: Store,
        max_wait: float,
        status: Callable[[], Status] | None = None,
        clock: Callable[[], float] | None = None,
        owners: Callable[[], Mapping[tuple[str, str], int]] | None = None,
        keys: Callable[[], KeyRing] | None = None,
    ) -> None:
        self.store = store
        self.max_wait = max_wait
        # the present: each upstream's resident model, running jobs, tokens and health,
        # and whether jobs are taken (set by the daemon once the parts exist)
        self.status: Callable[[], Status] = status or idle
        # unfinished jobs by (owner, "queued" or "running"), kept in memory as jobs move
        # (`JobTally.by_owner`), and the keys in force: the per-owner table, read fresh
        # for each summary without touching the database
        self._owners = owners or dict
        self._keys = keys or KeyRing
        self._clock = clock or store.now
        self._viewers: set[_Viewer] = set()
        self._closed = False
        self._version = 0
        self._overview: Overview | None = None
        self._overview_version = -1
        self._activity: Activity | None = None
        self._activity_version = -1
        self._activity_at = 0.0
        self._activity_every = ACTIVITY_REFRESH
        # where the newest queued jobs stand, read with the overview (see `_places`)
        self.standings: Standings | None = None
        self._places: dict[str, dict[str, Any]] = {}
        self._lock = trio.Lock()
        self.spacing = MIN_SPACING
        # the embedding model last relayed, and when (embeddings bypass the queue)
        self.embedding: tuple[str, float] | None = None

    # -- fed by foreman's parts -----------------------------------------------------------

    def on_job_change(self, job: Job) -> None:
        """A broadcaster listener: never blocks."""
        self._version += 1
        change = Change(job, self._version)
        for viewer in list(self._viewers):
            self._offer(viewer, change)

    def poke(self) -> None:
        """Tell the viewers to send a fresh summary of something the database does not
        hold (a token relayed, an embedding model used): no new read is needed."""
        for viewer in list(self._viewers):
            if not viewer.poked:
                viewer.poked = True
                self._offer(viewer, POKE)

    def jobs_removed(self) -> None:
        """Finished jobs were deleted: every stream starts over from a new snapshot."""
        self._version += 1
        for viewer in list(self._viewers):
            if not viewer.resync:
                viewer.resync = True
                self._offer(viewer, RESYNC)

    def embedding_used(self, model: str) -> None:
        if self.embedding is None or self.embedding[0] != model:
            self.embedding = (model, self._clock())
            self.poke()
        else:
            self.embedding = (model, self._clock())

    def _offer(self, viewer: _Viewer, item: Change | Poke) -> None:
        try:
            viewer.send.send_nowait(item)
        except trio.WouldBlock:
            # a viewer this far behind starts over (its stream ends; the page reconnects)
            self._drop(viewer)
        except trio.ClosedResourceError:
            self._viewers.discard(viewer)

    def _drop(self, viewer: _Viewer) -> None:
        self._viewers.discard(viewer)
        viewer.send.close()

    # -- viewers --------------------------------------------------------------------------

    def open_feed(self, buffer: int = 1024, owner: str | None = None) -> Feed:
        """Every change from now on (to `Feed.next_batch`, only `owner`'s jobs if given),
        until `Feed.stop`."""
        send, receive = trio.open_memory_channel[Change | Poke](buffer)
        viewer = _Viewer(send)
        if self._closed:
            send.close()
        else:
            self._viewers.add(viewer)
        return Feed(receive, viewer, self, owner)

    def close_all(self) -> None:
        """End every dashboard stream, now and from now on (shutdown)."""
        self._closed = True
        for viewer in list(self._viewers):
            self._drop(viewer)

    @property
    def version(self) -> int:
        return self._version

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    # -- the summary ----------------------------------------------------------------------

    async def summary(self) -> dict[str, Any]:
        """The queue as it stands. The database is read once per job change however many
        viewers ask (the headline at most once per `ACTIVITY_REFRESH`: see
        `refresh_due`); each upstream's token count is read fresh each time."""
        async with self._lock:
            status = self.status()
            version = self._version
            if self._overview is None or self._overview_version != version:
                began = trio.current_time()
                running = [job_id for u in status.upstreams for job_id in u.running]
                recent = SWAPS_PER_UPSTREAM * max(1, len(status.upstreams))
                self._overview = await self.store.overview(running, recent)
                self._places = await self._read_places()
                cost = trio.current_time() - began
                self.spacing = min(MAX_SPACING, max(MIN_SPACING, cost * COST_FACTOR))
                self._overview_version = version
            if self._activity is None or (
                self._activity_version != version
                and trio.current_time() >= self._activity_at + self._activity_every
            ):
                began = trio.current_time()
                self._activity = await self.store.activity(self._clock() - ACTIVITY_WINDOW)
                self._activity_at = trio.current_time()
                cost = self._activity_at - began
                self._activity_every = max(ACTIVITY_REFRESH, cost * ACTIVITY_COST_FACTOR)
                self._activity_version = version
            return self._render(self._overview, self._activity, status) | {"places": self._places}

    async def _read_places(self) -> dict[str, dict[str, Any]]:
        """Where the newest `PLACES` queued jobs stand (position and estimated start, as
        epoch seconds), by job id: the rows the page shows first. Each costs a count of the
        jobs ahead of it, paid once per summary however many pages are open."""
        standings = self.standings
        if standings is None:
            return {}
        places: dict[str, dict[str, Any]] = {}
        for job in await self.store.list_jobs(state=JobState.QUEUED, limit=PLACES):
            standing = await standings.of(job)
            if standing is not None:
                places[job.id] = {
                    "position": standing.position,
                    "estimated_start": standings.start_time(standing),
                    "owner": job.key_name,
                }
        return places

    def refresh_due(self) -> float | None:
        """When (trio time) a summary would bring a headline newer than the last one, or
        None while it is current: a stream sends one more summary then, so the headline
        catches up even if nothing changes after a burst."""
        if self._activity is None or self._activity_version == self._version:
            return None
        return self._activity_at + self._activity_every

    def _render(self, overview: Overview, activity: Activity, status: Status) -> dict[str, Any]:
        now = self._clock()
        first = status.upstreams[0].name if status.upstreams else ""
        jobs = {job.id: job for job in overview.running if not job.state.terminal}
        lanes = [self._lane(u, jobs, overview.swaps, first) for u in status.upstreams]
        resident = {u.resident for u in status.upstreams if u.resident is not None}
        waiting = sorted(
            overview.waiting,
            key=lambda w: (w.model_key not in resident, -w.top_priority, w.oldest_enqueued_at),
        )
        running = next((job for lane in lanes for job in lane["running"]), None)
        return {
            "now": now,
            "ollama_up": status.online,
            "accepting": status.accepting,
            "max_wait": self.max_wait,
            "resident": {
                # the first upstream's (the only one's, with one upstream)
                "chat": lanes[0]["chat"] if lanes else None,
                "embedding": None
                if self.embedding is None
                else {"model": self.embedding[0], "used_at": self.embedding[1]},
            },
            "upstreams": lanes,
            # the first upstream's oldest running job; `upstreams[].running` holds them all
            "running": running,
            "waiting": [
                {
                    "model": split_key(w.model_key)[0],
                    "key": w.model_key,
                    "count": w.count,
                    "oldest_enqueued_at": w.oldest_enqueued_at,
                    "top_priority": w.top_priority,
                    "resident": w.model_key in resident,
                    "overdue": now - w.oldest_enqueued_at >= self.max_wait,
                }
                for w in waiting
            ],
            "queued": sum(w.count for w in waiting),
            "owners": owner_rows(self._owners(), self._keys()),
            "swaps": [
                {
                    "model": split_key(s.model_key)[0],
                    "key": s.model_key,
                    "upstream": swap_lane(s, first),
                    "job_id": s.job_id,
                    "started_at": s.started_at,
                    "loaded_at": s.loaded_at,
                    "load_ms": round((s.loaded_at - s.started_at) * 1000),
                    "jobs": s.jobs,
                }
                for s in overview.swaps
            ],
            "activity": {
                "window": ACTIVITY_WINDOW,
                "finished": activity.finished,
                "loads": activity.loads,
                "arrival_loads": activity.arrival_loads,
                "swaps_avoided": max(0, activity.arrival_loads - activity.loads),
                "done_last_hour": activity.done_last_hour,
            },
        }

    @staticmethod
    def _lane(
        upstream: WorkerStatistics,
        jobs: dict[str, Job],
        swaps: list[Swap],
        first: str,
    ) -> dict[str, Any]:
        """One upstream as the dashboard shows it: its health, its chat model and since
        when, its slots in use, and the jobs it runs.

        Tokens are counted per upstream: a job's own count is known only while it is its
        upstream's one running job; otherwise the lane shows the upstream's total.
        """
        running = [jobs[job_id] for job_id in upstream.running if job_id in jobs]
        since = None
        if upstream.resident is not None:
            ours = [s for s in swaps if swap_lane(s, first) == upstream.name]
            if ours and ours[-1].model_key == upstream.resident:
                since = ours[-1].loaded_at
        one = len(running) == 1
        return {
            "name": upstream.name,
            "online": upstream.online,
            "slots": upstream.slots,
            "in_use": len(upstream.running),
            "loading": upstream.loading,
            "tokens": upstream.tokens if upstream.running else None,
            "chat": None
            if upstream.resident is None
            else {
                "model": split_key(upstream.resident)[0],
                "key": upstream.resident,
                "since": since,
            },
            "running": [
                {
                    **job_view(job),
                    "upstream": upstream.name,
                    "tokens": upstream.tokens if one else None,
                }
                for job in running
            ],
        }


def owner_rows(counts: Mapping[tuple[str, str], int], ring: KeyRing) -> list[dict[str, Any]]:
    """The per-owner table: every key in force (idle ones too, so an operator sees each
    key's share and cap), every other name that still has unfinished jobs (a key since
    removed), and last, while it has any, the jobs made without a key (owner None). Only
    names: a key itself never reaches the tally."""
    queued: dict[str, int] = {}
    running: dict[str, int] = {}
    for (owner, kind), n in counts.items():
        into = queued if kind == "queued" else running
        into[owner] = into.get(owner, 0) + n
    configured = {key.name: key for key in ring.keys}
    named = sorted((set(configured) | set(queued) | set(running)) - {""})
    rows = []
    for name in named:
        key = configured.get(name)
        rows.append(
            {
                "owner": name,
                "queued": queued.get(name, 0),
                "running": running.get(name, 0),
                "weight": key.weight if key is not None else None,
                "max_queued": key.max_queued if key is not None else None,
            }
        )
    if queued.get("") or running.get(""):
        rows.append(
            {
                "owner": None,
                "queued": queued.get("", 0),
                "running": running.get("", 0),
                "weight": None,
                "max_queued": None,
            }
        )
    return rows


def swap_lane(swap: Swap, first: str) -> str:
    """The upstream a load belongs to on the timeline: a load recorded before foreman
    drove several upstreams (no name) was made by the only one, shown as the first."""
    return swap.upstream or first


def job_view(job: Job) -> dict[str, Any]:
    """A job as the dashboard shows it: no request, no result, times as epoch seconds."""
    error = job.error
    if error is not None and len(error) > ERROR_CHARS:
        error = error[: ERROR_CHARS - 1] + "\u2026"
    return {
        "id": job.id,
        "state": job.state.value,
        "endpoint": job.endpoint.value,
        "model": split_key(job.model_key)[0],
        "priority": job.priority,
        "ref": job.ref,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created_at": job.created_at,
        "enqueued_at": job.enqueued_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "queue_ms": job.queue_ms,
        "error": error,
        "owner": job.key_name,
        "stream": job.stream,
        "upstream": job.upstream,
    }
