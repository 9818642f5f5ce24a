"""What the stub saw: every Ollama request in arrival order, slot changes, and counters.

Pure bookkeeping; tests read it (directly or through GET /_stub/requests) to prove what foreman
sent upstream and when, without relying on wall-clock timing. Times are trio monotonic seconds.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import attrs

# Request kinds that run the model and so take the chat runner (up to `parallel` at once).
INFERENCE_KINDS = frozenset({"chat", "generate", "v1-chat", "v1-completions"})


@attrs.define
class RequestEntry:
    """One Ollama request (control requests under /_stub/ are never recorded)."""

    seq: int
    method: str
    path: str
    kind: str
    model: str | None
    arrival: float
    connection: int = 0
    # the request target as sent (path and query, still encoded) and the headers as
    # received (names in lower case): what foreman relayed, byte for byte
    target: str = ""
    headers: list[tuple[str, str]] = attrs.field(factory=list)
    body: Any = None
    keep_alive: Any = None
    stream: bool | None = None
    # `start` is when the request took its runner (before any load it pays), `released` when
    # it let go, `slot` which runner ("chat" or "embed"); `end` is when its answer was done.
    start: float | None = None
    end: float | None = None
    slot: str | None = None
    released: float | None = None
    status: int | None = None
    cancelled: bool = False
    fault: str | None = None
    loaded: bool = False
    load_seconds: float = 0.0
    runner_options: dict[str, Any] | None = None
    tokens: int = 0
    done_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.end is not None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class SlotEvent:
    """A model entering ("load") or leaving ("unload") a slot, and why it left."""

    at: float
    slot: str
    event: str
    model: str
    reason: str
    seq: int | None = None
    options: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


class Recorder:
    """The record and counters; `on_change` wakes whoever waits for a condition on them."""

    def __init__(self, limit: int = 100_000, on_change: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self._on_change = on_change or (lambda: None)
        self.entries: deque[RequestEntry] = deque(maxlen=limit)
        self.slot_events: deque[SlotEvent] = deque(maxlen=limit)
        self.loads: Counter[str] = Counter()
        self.unloads: Counter[str] = Counter()
        self.next_seq = 1
        self.requests = 0  # since the last reset, even beyond `limit`
        self.completed = 0
        self.inflight_inference = 0
        self.max_inflight_inference = 0
        self.running_inference = 0
        self.max_running_inference = 0
        self.inflight_requests = 0
        self.open_connections = 0
        self.total_connections = 0

    def changed(self) -> None:
        self._on_change()

    def begin(
        self, method: str, path: str, kind: str, model: str | None, now: float
    ) -> RequestEntry:
        entry = RequestEntry(self.next_seq, method, path, kind, model, now)
        self.next_seq += 1
        self.entries.append(entry)
        self.requests += 1
        self.inflight_requests += 1
        self.changed()
        return entry

    def finish(self, entry: RequestEntry, now: float) -> None:
        entry.end = now
        self.completed += 1
        self.inflight_requests -= 1
        self.changed()

    def inference_started(self) -> None:
        """Count an inference request from arrival (waiting ones included) to its end."""
        self.inflight_inference += 1
        self.max_inflight_inference = max(self.max_inflight_inference, self.inflight_inference)
        self.changed()

    def inference_ended(self) -> None:
        self.inflight_inference -= 1
        self.changed()

    def generation_started(self) -> None:
        """Count a generation holding the chat runner (waiting and loading ones excluded)."""
        self.running_inference += 1
        self.max_running_inference = max(self.max_running_inference, self.running_inference)
        self.changed()

    def generation_ended(self) -> None:
        self.running_inference -= 1
        self.changed()

    def slot_event(self, event: SlotEvent) -> None:
        self.slot_events.append(event)
        (self.loads if event.event == "load" else self.unloads)[event.model] += 1
        self.changed()

    def connection_opened(self) -> None:
        self.open_connections += 1
        self.total_connections += 1
        self.changed()

    def connection_closed(self) -> None:
        self.open_connections -= 1
        self.changed()

    def reset(self) -> None:
        """Forget history; what is in flight now keeps being counted."""
        self.entries.clear()
        self.slot_events.clear()
        self.loads.clear()
        self.unloads.clear()
        self.requests = self.completed = 0
        self.max_inflight_inference = self.inflight_inference
        self.max_running_inference = self.running_inference
        self.changed()

    def counters(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "completed": self.completed,
            "loads": sum(self.loads.values()),
            "unloads": sum(self.unloads.values()),
            "loads_by_model": dict(self.loads),
            "unloads_by_model": dict(self.unloads),
            "inflight_inference": self.inflight_inference,
            "max_inflight_inference": self.max_inflight_inference,
            "running_inference": self.running_inference,
            "max_running_inference": self.max_running_inference,
            "inflight_requests": self.inflight_requests,
            "open_connections": self.open_connections,
            "total_connections": self.total_connections,
        }
