"""StubOllama: the stub's public face, tying its state, listener and controls together.

`serve` is meant for `nursery.start`: it binds (port 0 picks a free port), reports the port,
and owns every task the stub runs; cancelling it stops everything. Everything else here is a
synchronous window on the state, for tests running in the same process.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from .config import StubConfig
from .control import Controls, handle_control
from .faults import Fault, FaultKind, make_fault
from .generation import expected_embedding, expected_text
from .http import Exchange
from .listener import Listener
from .occupancy import Occupancy, chat_occupancy
from .record import RequestEntry, SlotEvent
from .routes import serve_request
from .slots import Slot
from .state import StubState


class StubOllama:
    """A fake Ollama: deterministic answers, a truthful record, and faults on demand."""

    def __init__(self, config: StubConfig | None = None) -> None:
        self.state = StubState(config or StubConfig())
        self._listener = Listener(self._handle, self.state.recorder)
        self.controls = Controls(self.state, self._listener)

    # -- configuration -------------------------------------------------------------------

    @property
    def config(self) -> StubConfig:
        return self.state.config

    def configure(self, **changes: Any) -> StubConfig:
        """Change run-time settings (load_delay, token_delay, tokens, ...); ValueError if bad."""
        return self.controls.configure(**changes)

    @property
    def url(self) -> str:
        return self.controls.url

    # -- the record ----------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestEntry]:
        """Every Ollama request so far, in arrival order (live objects: they fill in)."""
        return list(self.state.recorder.entries)

    @property
    def slot_events(self) -> list[SlotEvent]:
        return list(self.state.recorder.slot_events)

    def requests_of(self, *kinds: str) -> list[RequestEntry]:
        return [entry for entry in self.state.recorder.entries if entry.kind in kinds]

    @property
    def loads(self) -> dict[str, int]:
        return dict(self.state.recorder.loads)

    @property
    def unloads(self) -> dict[str, int]:
        return dict(self.state.recorder.unloads)

    @property
    def max_inflight_inference(self) -> int:
        return self.state.recorder.max_inflight_inference

    @property
    def inflight_inference(self) -> int:
        return self.state.recorder.inflight_inference

    @property
    def max_running_inference(self) -> int:
        """The most generations that held the chat runner at once (waiting ones excluded)."""
        return self.state.recorder.max_running_inference

    def occupancy(self) -> Occupancy:
        """How the chat runner was shared: most requests at once, and any two models at once."""
        return chat_occupancy(self.state.recorder.entries)

    @property
    def inflight_requests(self) -> int:
        return self.state.recorder.inflight_requests

    @property
    def open_connections(self) -> int:
        return self.state.recorder.open_connections

    def counters(self) -> dict[str, Any]:
        """requests, completed, loads, unloads (totals and by model), in-flight counts..."""
        return self.controls.counters()

    def reset_record(self) -> None:
        """Forget recorded requests, slot events and counters (in-flight ones still count)."""
        self.controls.reset_record()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds, re-checking on every recorded change.

        Example: `with trio.fail_after(5): await stub.wait_until(lambda: stub.inflight_inference)`.
        """
        await self.controls.wait_until(predicate)

    def hold(self) -> None:
        """Pause generation: requests holding the chat runner stop before their next token.

        Lets a test keep a request in flight for as long as it needs, without timing: hold,
        send, `wait_until(lambda: stub.inflight_inference == n)`, check, then `release`.
        Embedding requests are not held.
        """
        self.controls.hold()

    def release(self) -> None:
        self.controls.release()

    @property
    def held(self) -> bool:
        return self.state.held

    # -- slots ---------------------------------------------------------------------------

    def _resident(self, slot: Slot) -> str | None:
        self.state.scheduler.refresh(trio.current_time())
        return slot.model.name if slot.model else None

    @property
    def chat_model(self) -> str | None:
        """The model in the chat slot now (expired ones are gone); needs a running trio."""
        return self._resident(self.state.scheduler.chat)

    @property
    def embed_model(self) -> str | None:
        """The model in the embedding slot now."""
        return self._resident(self.state.scheduler.embed)

    # -- deterministic output --------------------------------------------------------------

    def expected_text(self, endpoint: str, body: Mapping[str, Any]) -> str:
        """The text this stub answers `body` with on `endpoint`, at its current token count."""
        return expected_text(endpoint, body, tokens=self.config.tokens)

    def expected_embedding(self, model: str, text: str) -> list[float]:
        return expected_embedding(model, text, dims=self.config.embedding_dims)

    # -- faults --------------------------------------------------------------------------

    def add_fault(self, kind: FaultKind | str, **options: Any) -> Fault:
        """Arm a fault switch; see `make_fault` for the options (count, path, after, ...)."""
        return self.arm(make_fault(kind, **options))

    def arm(self, fault: Fault) -> Fault:
        """Arm a built fault; `refuse` takes effect at once instead of waiting for a request."""
        return self.controls.arm(fault)

    def clear_faults(self) -> None:
        """Disarm every switch and end a refusal started by a `refuse` fault."""
        self.controls.clear_faults()

    @property
    def refusing(self) -> bool:
        return self.controls.refusing

    def refuse(self, seconds: float | None) -> None:
        """Go down now (refuse connections, reset open ones); come back after `seconds`.

        With `seconds` None the stub stays down until `start_listening` or `clear_faults`.
        """
        self.controls.refuse(seconds)

    # -- listening -------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._listener.listening

    @property
    def host(self) -> str:
        return self._listener.host

    @property
    def port(self) -> int:
        return self._listener.port

    def stop_listening(self, *, drop_connections: bool = True) -> None:
        """Simulate "Ollama is down": new connections are refused from now on.

        With `drop_connections`, open connections are reset too (except those used for the
        control API), so pooled keep-alive connections fail as they would against a dead
        Ollama, and requests in flight end (recorded with fault "down").
        """
        self._listener.stop(drop_connections=drop_connections)

    async def start_listening(self) -> None:
        """Simulate "Ollama is back": listen again on the same port."""
        await self._listener.start()

    async def _handle(self, exchange: Exchange) -> None:
        path = exchange.request.path
        if path == "/_stub" or path.startswith("/_stub/"):
            exchange.conn.control = True
            await handle_control(self.controls, exchange)
            return
        exchange.conn.control = False
        await serve_request(self.state, exchange, self._listener.loopback)

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; for `nursery.start`, which receives the bound port.

        Raises OSError (before reporting) when the port cannot be bound.
        """
        await self._listener.run(host, port, lambda bound: task_status.started(bound))

    # -- state ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything /_stub/state shows: slots, counters, faults, settings."""
        return self.controls.snapshot()


@asynccontextmanager
async def running_stub(
    config: StubConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[StubOllama]:
    """Run a stub for the duration of an `async with` block (port 0 = a free port)."""
    stub = StubOllama(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(stub.serve, host=host, port=port))
        try:
            yield stub
        finally:
            nursery.cancel_scope.cancel()
