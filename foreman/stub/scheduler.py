"""The stub's model scheduler: one chat runner and one embedding runner, as Ollama runs them.

The chat runner serves up to `parallel` requests at once (Ollama's OLLAMA_NUM_PARALLEL), all
for the model it holds with compatible runner options. Requests take it in arrival order: the
one at the head of the queue (trio.Lock is FIFO) joins the runner if its model is loaded and a
place is free; a request for another model, or for other runner options, waits until every
running request has ended, then pays `load_delay` and replaces the runner, and the requests
behind it wait their turn, even those for the model still loaded. Ollama lets requests for a
loaded model overtake a waiting swap; the stub keeps strict arrival order, so what foreman
sends is what runs. With parallel 1 this is one request at a time, in arrival order.

Batching: a token takes `token_delay * (1 + batch_slowdown * (running - 1))`, `running` being
the generations on the runner when the token starts. The default slowdown, 0.1, makes four
requests at once take 1.3x as long per token: about 3.1x the throughput of one, roughly what
batched decoding gives on a GPU. With parallel 1 a token takes exactly `token_delay`.

Embedding requests have their own runner and lock (Ollama runs embedding models one request at
a time), so they never wait for a chat. keep_alive follows Ollama: a given value replaces the
runner's, none leaves it, and the timer runs only while the runner is idle. Expired runners
leave lazily, whenever the slots are looked at.
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


def batch_factor(slowdown: float, running: int) -> float:
    """How much longer each token takes with `running` generations on one runner."""
    return 1.0 + slowdown * max(0, running - 1)


class Scheduler:
    """Owns the two slots, the chat queue and the embedding lock; every slot change is recorded."""

    def __init__(self, recorder: Recorder, config: Callable[[], StubConfig]) -> None:
        self.recorder = recorder
        self._config = config
        self.chat = Slot("chat")
        self.embed = Slot("embed")
        self._chat_queue = trio.Lock()  # held by the request at the head of the queue
        self._chat_freed = trio.Event()  # set when a place on the chat runner frees up
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

    def wake(self) -> None:
        """Let the head of the chat queue look again (a place freed up, or `parallel` grew)."""
        freed, self._chat_freed = self._chat_freed, trio.Event()
        freed.set()

    def token_seconds(self) -> float:
        """How long the next token takes, given the generations now on the chat runner."""
        config = self._config()
        return config.token_delay * batch_factor(config.batch_slowdown, self.chat.busy)

    def _chat_has_room(self, model: ModelInfo, options: RunnerOptions) -> bool:
        slot = self.chat
        if slot.busy == 0:
            return True  # an idle runner serves anyone, after a load if need be
        return slot.holds(model, options) and slot.busy < self._config().parallel

    async def _chat_turn(
        self,
        entry: RequestEntry,
        model: ModelInfo,
        options: RunnerOptions,
        keep_alive: float | None,
    ) -> None:
        """At the head of the queue: wait for room on the chat runner, then take it (loading
        the model if need be). The caller holds the queue lock."""
        while True:
            freed = self._chat_freed
            self.refresh(trio.current_time())
            if self._chat_has_room(model, options):
                break
            await freed.wait()
        entry.start = trio.current_time()
        entry.slot = self.chat.name
        try:
            await self._ensure(
                self.chat, model, options, keep_alive, entry, self._config().load_delay
            )
        except BaseException:
            entry.released = trio.current_time()
            raise

    @asynccontextmanager
    async def inference(
        self,
        entry: RequestEntry,
        model: ModelInfo,
        options: RunnerOptions,
        keep_alive: float | None,
    ) -> AsyncIterator[None]:
        """Hold a place on the chat runner for one generation; counted in flight from arrival."""
        self.recorder.inference_started()
        try:
            async with self._chat_queue:
                await self._chat_turn(entry, model, options, keep_alive)
                self.chat.busy += 1
            self.recorder.generation_started()
            try:
                yield
            finally:
                now = trio.current_time()
                self.chat.busy -= 1
                entry.released = now
                self.chat.idle_from(now)
                self.recorder.generation_ended()
                self.wake()
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
            entry.slot = self.embed.name
            config = self._config()
            try:
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
            finally:
                entry.released = trio.current_time()

    async def load(
        self,
        slot: Slot,
        entry: RequestEntry,
        model: ModelInfo,
        options: RunnerOptions,
        keep_alive: float | None,
    ) -> None:
        """A load-only request: instant if already resident, else wait for the runner and load.

        It holds the runner only while it loads, so its record's start and released are equal
        when it found the model resident.
        """
        now = trio.current_time()
        self.refresh(now)
        if slot.holds(model, options):
            # Like any request on a resident runner, this restarts its idle timer.
            entry.start = entry.released = now
            entry.slot = slot.name
            if keep_alive is not None:
                slot.keep_alive = keep_alive
            slot.idle_from(now)
            return
        if slot is self.chat:
            async with self._chat_queue:
                await self._chat_turn(entry, model, options, keep_alive)
                now = trio.current_time()
                entry.released = now
                slot.idle_from(now)
            return
        async with self._embed_lock:
            entry.start = trio.current_time()
            entry.slot = slot.name
            try:
                await self._ensure(
                    slot, model, options, keep_alive, entry, self._config().embed_load_delay
                )
            finally:
                entry.released = trio.current_time()
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
