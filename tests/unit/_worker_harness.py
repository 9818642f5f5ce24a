"""The worker tier's rig: the real `Worker` and `supervise`, a real SQLite `Store` in the
test's directory, and an Ollama answered in memory (httpx's MockTransport), all under
trio's MockClock.

Times are exact: the clock jumps only when every task waits, and the store's calls run
inline (see `inline_store_calls`), so a test can assert that a retry happens at 2.005 s
and not somewhere near it. Waits are on events (a job change the store announced, a
request Ollama received), never on polls or sleeps.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
import trio.testing

from foreman.events import Wakeup
from foreman.jobs import Endpoint, Job, JobState, NewJob
from foreman.store import Store, SyncStore, connect
from foreman.supervisor import supervise
from foreman.tickets import Tickets
from foreman.upstream import Upstream
from foreman.worker import Worker, WorkerSettings

# the store's wall clock at virtual time 0 (a job's times are wall-clock seconds)
EPOCH = 1_000_000.0
# how long (virtual) any one wait of a test may take before the test fails
PATIENCE = 10_000.0


async def _inline_run_sync(
    fn: Callable[..., Any], *args: Any, limiter: Any = None, **_: Any
) -> Any:
    """`trio.to_thread.run_sync` without the thread: checkpoints where it would."""
    await trio.lowlevel.checkpoint_if_cancelled()
    result = fn(*args)
    await trio.lowlevel.cancel_shielded_checkpoint()
    return result


@attrs.frozen
class Seen:
    """One request Ollama received, at a virtual time."""

    at: float
    method: str
    path: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        """'load' or 'unload' for the worker's residency calls (a chat with no messages,
        a generate with no prompt), 'job' for a job's own request, else the path."""
        if self.path not in ("/api/chat", "/api/generate"):
            return self.path
        if self.path == "/api/chat":
            empty = self.body.get("messages") == []
        else:
            empty = "prompt" not in self.body
        if empty:
            return "unload" if self.body.get("keep_alive") == 0 else "load"
        return "job"


Answer = Callable[[httpx.Request], Awaitable[httpx.Response]]


def status(code: int, message: str = "boom") -> Answer:
    """Ollama answers `code` with its error body."""

    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(code, json={"error": message})

    return answer


def refused() -> Answer:
    """Ollama cannot be reached (the connection is refused)."""

    async def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    return answer


def hang(seconds: float = math.inf, then: Answer | None = None) -> Answer:
    """Ollama says nothing for `seconds` (virtual), then answers as `then` (or normally)."""

    async def answer(request: httpx.Request) -> httpx.Response:
        await trio.sleep(seconds)
        return await (then or _normal)(request)

    return answer


def ok() -> Answer:
    """Ollama's usual answer (to keep a place in a script)."""
    return hang(0.0)


def crash(exc: BaseException) -> Answer:
    """The HTTP client raises something no one expects (a bug, as far as the worker
    can tell)."""

    async def answer(request: httpx.Request) -> httpx.Response:
        raise exc

    return answer


class Pulse:
    """Wakes whoever waits for a condition each time something changes."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def changed(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def until(self, predicate: Callable[[], object]) -> None:
        with trio.fail_after(PATIENCE):
            while not predicate():
                await self._event.wait()


class FakeOllama:
    """Ollama in memory: every route the worker uses, answered at once unless a test
    scripted otherwise (`script`), or refused while `down`."""

    def __init__(self, tokens: tuple[str, ...] = ("Hello", " there")) -> None:
        self.tokens = tokens
        self.seen: list[Seen] = []
        self.down = False
        self.loaded: list[str] = []
        self._scripts: dict[str, list[Answer]] = {}
        self.pulse = Pulse()

    def script(self, kind: str, *answers: Answer) -> None:
        """The next requests of `kind` (see `Seen.kind`) get these answers, in order."""
        self._scripts.setdefault(kind, []).extend(answers)

    def times(self, kind: str) -> list[float]:
        return [s.at for s in self.seen if s.kind == kind]

    async def until_seen(self, kind: str, count: int) -> None:
        await self.pulse.until(lambda: len(self.times(kind)) >= count)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        seen = Seen(trio.current_time(), request.method, request.url.path, body)
        self.seen.append(seen)
        self.pulse.changed()
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        script = self._scripts.get(seen.kind)
        if script:
            return await script.pop(0)(request)
        return await _normal(request, self)


async def _normal(request: httpx.Request, ollama: FakeOllama | None = None) -> httpx.Response:
    path = request.url.path
    body = json.loads(request.content) if request.content else {}
    if path == "/api/version":
        return httpx.Response(200, json={"version": "0.9.0"})
    if path == "/api/ps":
        names = ollama.loaded if ollama is not None else []
        return httpx.Response(200, json={"models": [{"name": n} for n in names]})
    if path == "/api/show":
        return httpx.Response(200, json={"capabilities": ["completion"]})
    tokens = ollama.tokens if ollama is not None else ("ok",)
    chat = path == "/api/chat"

    def part(text: str, done: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"model": body.get("model"), "done": done}
        if chat:
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["response"] = text
        return out

    if body.get("stream", True) and (body.get("messages") or body.get("prompt")):
        lines = [part(t, False) for t in tokens] + [part("", True)]
        content = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        return httpx.Response(
            200, headers={"Content-Type": "application/x-ndjson"}, content=content
        )
    return httpx.Response(200, json=part("".join(tokens), True))


class TopOfWindow(random.Random):
    """Backoff jitter pinned to the top of its range: a retry waits the whole window."""

    def random(self) -> float:
        return 1.0


@attrs.frozen
class Moved:
    """A job change the store committed, at a virtual time."""

    at: float
    job: Job


class Rig:
    """One worker, its store and its Ollama. `start` runs the supervisor."""

    def __init__(
        self,
        store: Store,
        worker: Worker,
        ollama: FakeOllama,
        nursery: trio.Nursery,
        restart_delay: float,
    ) -> None:
        self.store = store
        self.worker = worker
        self.ollama = ollama
        self.nursery = nursery
        self.restart_delay = restart_delay
        self.moves: list[Moved] = []
        self.pulse = Pulse()

    def on_change(self, job: Job) -> None:
        self.moves.append(Moved(trio.current_time(), job))
        self.pulse.changed()

    def start(self) -> None:
        self.nursery.start_soon(lambda: supervise(self.worker, restart_delay=self.restart_delay))

    async def submit(self, new: NewJob) -> Job:
        job = await self.store.enqueue(new)
        self.worker.wakeup.notify()
        return job

    def history(self, job_id: str) -> list[Moved]:
        return [m for m in self.moves if m.job.id == job_id]

    def times_in(self, job_id: str, state: JobState) -> list[float]:
        return [m.at for m in self.history(job_id) if m.job.state is state]

    async def until_state(self, job_id: str, state: JobState, count: int = 1) -> Job:
        """The job as it was the `count`th time it reached `state`."""
        await self.pulse.until(lambda: len(self.times_in(job_id, state)) >= count)
        return [m.job for m in self.history(job_id) if m.job.state is state][count - 1]


def gaps(times: list[float]) -> list[float]:
    """The time between each pair of successive times."""
    return [b - a for a, b in itertools.pairwise(times)]


def wall(virtual: float) -> float:
    """The store's wall-clock time at a virtual time."""
    return EPOCH + virtual


@asynccontextmanager
async def open_rig(
    db_path: Path,
    clock: trio.testing.MockClock,
    *,
    ollama: FakeOllama | None = None,
    restart_delay: float = 1.0,
    sync: Callable[[sqlite3.Connection, Callable[[], float]], SyncStore] = SyncStore,
    **settings: Any,
) -> AsyncIterator[Rig]:
    """A rig whose store reads its wall clock off the MockClock; `sync` builds the
    store's SQL layer (a test's subclass may fail writes). Everything stops when the
    block ends."""
    ollama = ollama or FakeOllama()
    store = Store(sync(connect(db_path), lambda: wall(clock.current_time())))
    http = httpx.AsyncClient(base_url="http://ollama.test", transport=ollama.transport())
    try:
        async with http, trio.open_nursery() as nursery:
            worker = Worker(
                store,
                Upstream(http, read_timeout=30.0),
                Tickets(),
                Wakeup(),
                WorkerSettings(**{"job_timeout": math.inf, **settings}),
                rng=TopOfWindow(),
            )
            rig = Rig(store, worker, ollama, nursery, restart_delay)
            store.set_listener(rig.on_change)
            yield rig
            nursery.cancel_scope.cancel()
    finally:
        await store.close()


def rig_clock(monkeypatch: Any) -> trio.testing.MockClock:
    """The tier's clock: virtual time that jumps as soon as every task waits, with the
    store's calls run on trio's own thread for the test.

    Under MockClock a task waiting on a thread counts as idle, so virtual time could
    leap to the next deadline (the job timeout, a backoff) while the database works, and
    an asserted time would be off by however long a write took on a busy machine.
    Inline, a store call takes no virtual time and the times are exact. The threaded
    store has its own tests (test_store*.py, and every test over sockets)."""
    monkeypatch.setattr(trio.to_thread, "run_sync", _inline_run_sync)
    return trio.testing.MockClock(autojump_threshold=0)


def chat(model: str = "llama3", text: str = "hi", *, stream: bool = False, **fields: Any) -> NewJob:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    values: dict[str, Any] = {
        "endpoint": Endpoint.CHAT,
        "model": model,
        "model_key": f"{model}:latest",
        "body": json.dumps(body).encode(),
        "stream": stream,
    }
    values.update(fields)
    return NewJob(**values)
