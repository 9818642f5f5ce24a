"""The stub's model scheduler: one chat runner and one embedding runner, as Ollama runs them.

Chat and generate requests take the chat runner one at a time, in arrival order (trio.Lock is
FIFO), like Ollama's per-runner semaphore with NUM_PARALLEL=1. A request for another model, or
the same model with other runner options, pays `load_delay` and replaces the runner. Embedding
requests have their own runner and lock, so they never wait for a chat. keep_alive follows
Ollama: a given value replaces the runner's, none leaves it, and the timer runs only while the
runner is idle. Expired runners leave lazily, whenever the slots are looked at.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import trio

from .catalogue import ModelInfo
from .config import StubConfig
from .record import Recorder, RequestEntry, SlotEvent
from .slots import RunnerOptions, Slot


class Scheduler:
    """Owns the two slots and their locks; every slot change is recorded."""

    def __init__(self, recorder: Recorder, config: Callable[[], StubConfig]) -> None:
        self.recorder = recorder
        self._config = config
        self.chat = Slot("chat")
        self.embed = Slot("embed")
        self._chat_lock = trio.Lock()
        self._embed_lock = trio.Lock()

    def slots(self) -> Iterator[Slot]:
        yield self.chat
        yield self.embed

    def refresh(self, now: float) -> None:
        """Let idle runners whose keep_alive has run out leave their slot."""
        for slot in self.slots():
            if slot.due(now):
                self._leave(slot, "expired", slot.expires_at, None)

    def _leave(self, slot: Slot, reason: str, at: float, seq: int | None) -> None:
        assert slot.model is not None
        options = slot.options.as_dict() if slot.options else None
        event = SlotEvent(at, slot.name, "unload", slot.model.name, reason, seq, options)
        slot.clear()
        self.recorder.slot_event(event)

    async def _ensure(
        self,
        slot: Slot,
        model: ModelInfo,
        options: RunnerOptions,
        keep_alive: float | None,
        entry: RequestEntry,
        delay: float,
    ) -> None:
        """Make `slot` hold (model, options), loading it if needed; the caller holds the lock."""
        now = trio.current_time()
        self.refresh(now)
        if slot.holds(model, options):
            if keep_alive is not None:
                slot.keep_alive = keep_alive
            return
        if slot.model is not None:
            reason = "reload" if slot.model.name == model.name else "evicted"
            self._leave(slot, reason, now, entry.seq)
        chosen = self._config().default_keep_alive if keep_alive is None else keep_alive
        slot.occupy(model, options, chosen, now)
        slot.loading = True
        entry.loaded = True
        event = SlotEvent(
            now, slot.name, "load", model.name, "request", entry.seq, options.as_dict()
        )
        self.recorder.slot_event(event)
        done = False
        try:
            if delay > 0:
                await trio.sleep(delay)
            done = True
        finally:
            slot.loading = False
            entry.load_seconds = trio.current_time() - now
            if not done and slot.model is model:
                # Ollama aborts a load whose requester went away and drops the runner.
                self._leave(slot, "aborted", trio.current_time(), entry.seq)

    @asynccontextmanager
    async def inference(
        self,
        entry: RequestEntry,
        model: ModelInfo,
        options: RunnerOptions,
        keep_alive: float | None,
    ) -> AsyncIterator[None]:
        """Hold the chat runner for one generation; counted in flight from arrival."""
        self.recorder.inference_started()
        try:
            async with self._chat_lock:
                entry.start = trio.current_time()
                await self._ensure(
                    self.chat, model, options, keep_alive, entry, self._config().load_delay
                )
                self.chat.busy += 1
                try:
                    yield
                finally:
                    self.chat.busy -= 1
                    self.chat.idle_from(trio.current_time())
        finally:
            self.recorder.inference_ended()

    @asynccontextmanager
    async def embedding(
        self,
        entry: RequestEntry,
        model: ModelInfo,
        options: RunnerOptions,
        keep_alive: float | None,
    ) -> AsyncIterator[None]:
        """Hold the embedding runner for one request (embedding runners run one at a time)."""
        async with self._embed_lock:
            entry.start = trio.current_time()
            config = self._config()
            await self._ensure(
                self.embed, model, options, keep_alive, entry, config.embed_load_delay
            )
            self.embed.busy += 1
            try:
                if config.embed_delay > 0:
                    await trio.sleep(config.embed_delay)
                yield
            finally:
                self.embed.busy -= 1
                self.embed.idle_from(trio.current_time())

    async def load(
        self,
        slot: Slot,
        entry: RequestEntry,
        model: ModelInfo,
        options: RunnerOptions,
        keep_alive: float | None,
    ) -> None:
        """A load-only request: instant if already resident, else wait for the runner and load."""
        now = trio.current_time()
        self.refresh(now)
        if slot.holds(model, options):
            # Like any request on a resident runner, this restarts its idle timer.
            entry.start = now
            if keep_alive is not None:
                slot.keep_alive = keep_alive
            slot.idle_from(now)
            return
        lock = self._chat_lock if slot is self.chat else self._embed_lock
        config = self._config()
        delay = config.load_delay if slot is self.chat else config.embed_load_delay
        async with lock:
            entry.start = trio.current_time()
            await self._ensure(slot, model, options, keep_alive, entry, delay)
            slot.idle_from(trio.current_time())

    def unload(self, model: ModelInfo, entry: RequestEntry | None, reason: str = "unload") -> None:
        """Unload `model` wherever it is resident: now if idle, else when its runner goes idle."""
        now = trio.current_time()
        self.refresh(now)
        for slot in self.slots():
            if slot.model is None or slot.model.name != model.name:
                continue
            if slot.busy or slot.loading:
                slot.keep_alive = 0.0
            else:
                self._leave(slot, reason, now, entry.seq if entry else None)

    def describe(self, slot: Slot, now: float) -> dict[str, object] | None:
        """A slot's state for /_stub/state (monotonic times; None when empty)."""
        if slot.model is None:
            return None
        expiry = slot.expiry(now)
        return {
            "model": slot.model.name,
            "options": slot.options.as_dict() if slot.options else None,
            "keep_alive": -1 if math.isinf(slot.keep_alive) else slot.keep_alive,
            "busy": slot.busy,
            "loading": slot.loading,
            "loaded_at": slot.loaded_at,
            "expires_in": None if math.isinf(expiry) else expiry - now,
        }
