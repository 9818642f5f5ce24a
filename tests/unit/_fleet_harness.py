"""The worker tier's fleet rig: one real `Worker` per upstream over one real store, each
upstream an Ollama in memory that takes virtual time to load and to answer, and records
what it ran when (see _worker_harness for the single worker's rig and its clock)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
import trio.testing

from foreman.events import Wakeup
from foreman.fleet import Fleet, Member
from foreman.jobs import Job, JobState, NewJob
from foreman.residency import normalise_model
from foreman.store import Store, SyncStore, connect
from foreman.supervisor import supervise
from foreman.tickets import Tickets
from foreman.upstream import Upstream
from foreman.upstream_specs import UpstreamSpec
from foreman.worker import Worker, WorkerSettings

from ._worker_harness import FakeOllama, Moved, Pulse, Seen, TopOfWindow, _normal, wall


@attrs.frozen
class Ran:
    """One generation an upstream ran: which model, from when to when (virtual)."""

    model: str
    start: float
    end: float


class TimedOllama(FakeOllama):
    """An Ollama that takes `load_seconds` to load a model and `job_seconds` to answer
    (longer by `slowdown` per other generation running beside it), lists `models` in
    /api/tags (None: every model), and answers 404 for a model it does not have."""

    def __init__(
        self,
        name: str,
        models: Sequence[str] | None = None,
        *,
        job_seconds: float = 1.0,
        load_seconds: float = 2.0,
    ) -> None:
        super().__init__()
        self.name = name
        self.models = None if models is None else {normalise_model(m) for m in models}
        self.job_seconds = job_seconds
        self.load_seconds = load_seconds
        self.ran: list[Ran] = []
        self.loads: list[str] = []
        self.active: dict[int, str] = {}
        self.most_at_once = 0
        # two different models generating at once, ever
        self.mixed = False

    def has(self, model: str) -> bool:
        return self.models is None or normalise_model(model) in self.models

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        seen = Seen(trio.current_time(), request.method, request.url.path, body)
        self.seen.append(seen)
        self.pulse.changed()
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if seen.path == "/api/tags":
            names = sorted(self.models or ())
            return httpx.Response(200, json={"models": [{"name": n} for n in names]})
        model = body.get("model")
        if seen.kind in ("load", "job", "/api/show") and not self.has(str(model)):
            return httpx.Response(404, json={"error": f'model "{model}" not found'})
        if seen.kind == "load":
            await trio.sleep(self.load_seconds)
            self.loads.append(normalise_model(str(model)))
        if seen.kind == "job":
            await self._generate(normalise_model(str(model)))
            if self.down:
                raise httpx.ReadError("the server went away", request=request)
        return await _normal(request, self)

    async def _generate(self, model: str) -> None:
        token = object()
        self.active[id(token)] = model
        self.mixed = self.mixed or len(set(self.active.values())) > 1
        self.most_at_once = max(self.most_at_once, len(self.active))
        start = trio.current_time()
        try:
            await trio.sleep(self.job_seconds)
        finally:
            del self.active[id(token)]
        if not self.down:
            # an answer cut off by the server's death is not a generation it ran
            self.ran.append(Ran(model, start, trio.current_time()))
        self.pulse.changed()


class FleetRig:
    """Several workers, their store and their Ollamas. `start` supervises them all."""

    def __init__(
        self,
        store: Store,
        workers: list[Worker],
        ollamas: list[TimedOllama],
        nursery: trio.Nursery,
    ) -> None:
        self.store = store
        self.workers = workers
        self.ollamas = ollamas
        self.nursery = nursery
        self.moves: list[Moved] = []
        self.pulse = Pulse()

    def on_change(self, job: Job) -> None:
        self.moves.append(Moved(trio.current_time(), job))
        self.pulse.changed()

    def start(self) -> None:
        for worker in self.workers:
            self.nursery.start_soon(supervise, worker)

    async def submit(self, new: NewJob) -> Job:
        job = await self.store.enqueue(new)
        self.workers[0].wakeup.notify()
        return job

    def final(self) -> dict[str, Job]:
        """Each job as it was last seen."""
        return {m.job.id: m.job for m in self.moves}

    async def until_all(self, state: JobState, count: int) -> None:
        await self.pulse.until(
            lambda: sum(1 for j in self.final().values() if j.state is state) >= count
        )

    def starts(self, job_id: str) -> list[Moved]:
        """Each claim of the job (a move out of the queue)."""
        out = []
        previous: JobState | None = None
        for m in self.moves:
            if m.job.id != job_id:
                continue
            if previous is JobState.QUEUED and m.job.state is not JobState.QUEUED:
                out.append(m)
            previous = m.job.state
        return out


@asynccontextmanager
async def open_fleet(
    db_path: Path,
    clock: trio.testing.MockClock,
    ollamas: Sequence[TimedOllama],
    *,
    slots: Sequence[int] | None = None,
    models: Sequence[Sequence[str] | None] | None = None,
    **settings: Any,
) -> AsyncIterator[FleetRig]:
    """A fleet of one worker per Ollama (its `slots` and allowed `models`, by position).
    Everything stops when the block ends."""
    store = Store(SyncStore(connect(db_path), lambda: wall(clock.current_time())))
    tickets = Tickets()
    wakeup = Wakeup()
    try:
        async with AsyncExitStack() as stack:
            members = []
            for i, ollama in enumerate(ollamas):
                http = await stack.enter_async_context(
                    httpx.AsyncClient(
                        base_url=f"http://{ollama.name}.test", transport=ollama.transport()
                    )
                )
                allowed = models[i] if models else None
                spec = UpstreamSpec(
                    url=f"http://{ollama.name}.test",
                    name=ollama.name,
                    slots=slots[i] if slots else 1,
                    models=tuple(allowed) if allowed is not None else None,
                )
                upstream = Upstream(http, read_timeout=30.0)
                members.append((Member(spec, relay=upstream, probes=upstream), upstream))
            fleet = Fleet(tuple(m for m, _ in members))
            nursery = await stack.enter_async_context(trio.open_nursery())
            workers = [
                Worker(
                    store,
                    upstream,
                    tickets,
                    wakeup,
                    WorkerSettings(**{"job_timeout": math.inf, **settings}),
                    rng=TopOfWindow(),
                    member=member,
                    fleet=fleet,
                )
                for member, upstream in members
            ]
            rig = FleetRig(store, workers, list(ollamas), nursery)
            store.set_listener(rig.on_change)
            yield rig
            nursery.cancel_scope.cancel()
    finally:
        await store.close()
