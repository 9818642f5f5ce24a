"""Everything a stub Ollama knows, apart from its sockets.

Route handlers and the control API read and change this; `StubOllama` adds the listener. Kept
apart so handlers never depend on the network layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import trio

from .catalogue import Catalogue
from .config import StubConfig, apply_changes
from .faults import FaultBook
from .record import Recorder
from .scheduler import Scheduler


class StubState:
    """Configuration, catalogue, slots, record and fault switches of one stub."""

    def __init__(self, config: StubConfig) -> None:
        self.config = config
        self.catalogue = Catalogue.from_names(config.chat_models, config.embed_models)
        self.recorder = Recorder(config.record_limit, on_change=self._notify)
        self.faults = FaultBook()
        self.scheduler = Scheduler(self.recorder, lambda: self.config)
        self.blobs: set[str] = set()
        self._waiters: list[trio.Event] = []
        self._gate: trio.Event | None = None

    @property
    def held(self) -> bool:
        return self._gate is not None

    def hold(self) -> None:
        """Pause every generation before its next token until `release` (a test's brake)."""
        if self._gate is None:
            self._gate = trio.Event()
        self._notify()

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()
        self._notify()

    async def pass_gate(self) -> None:
        while self._gate is not None:
            await self._gate.wait()

    def configure(self, changes: Mapping[str, Any]) -> StubConfig:
        """Apply run-time settings (ValueError if any is invalid; then nothing changes)."""
        self.config = apply_changes(self.config, changes)
        self.scheduler.wake()  # a larger `parallel` may let the head of the queue in
        self._notify()
        return self.config

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for event in waiters:
            event.set()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` is true; it is re-checked after every recorded change.

        Put a timeout around it (trio.fail_after): it waits forever otherwise.
        """
        while not predicate():
            event = trio.Event()
            self._waiters.append(event)
            await event.wait()
