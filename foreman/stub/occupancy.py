"""How a stub's chat runner was shared, worked out from the stub's own record.

Pure. A test that drives foreman against stubs checks here, per stub, that foreman never had
two chat models running at once on it and never more requests at once than its slots. Works
on the live `RequestEntry` objects of an in-process stub and on the dicts GET /_stub/requests
returns for a stub process. A request holds the chat runner from `start` (its load included)
to `released`; one still holding it counts until now. Requests that never held it, or held it
for no time (a load that found its model resident), are left out. Models are compared by
Ollama's name matching; runner options are not compared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .catalogue import normalise_name
from .record import RequestEntry


@attrs.frozen
class Occupancy:
    """`most_at_once`: the most requests on the chat runner at one moment; `clashes`: pairs of
    request seqs, for different models, that were on it at the same time."""

    most_at_once: int
    clashes: tuple[tuple[int, int], ...]

    @property
    def models_overlapped(self) -> bool:
        return bool(self.clashes)


@attrs.frozen
class _Hold:
    seq: int
    model: str
    start: float
    until: float


def _field(record: RequestEntry | Mapping[str, Any], name: str) -> Any:
    if isinstance(record, RequestEntry):
        return getattr(record, name)
    return record.get(name)


def _holds(records: Iterable[RequestEntry | Mapping[str, Any]]) -> list[_Hold]:
    holds = []
    for record in records:
        start = _field(record, "start")
        if _field(record, "slot") != "chat" or start is None:
            continue
        released = _field(record, "released")
        until = math.inf if released is None else float(released)
        if until <= start:
            continue
        model = normalise_name(str(_field(record, "model") or ""))
        holds.append(_Hold(int(_field(record, "seq")), model, float(start), until))
    return holds


def chat_occupancy(records: Iterable[RequestEntry | Mapping[str, Any]]) -> Occupancy:
    """Sweep the holds in time order; one ending at the moment another starts never overlaps
    it (the next request takes the runner as the previous one lets go)."""
    events: list[tuple[float, int, _Hold]] = []
    for hold in _holds(records):
        events.append((hold.start, 1, hold))
        events.append((hold.until, 0, hold))
    events.sort(key=lambda event: (event[0], event[1], event[2].seq))
    active: dict[int, _Hold] = {}
    most = 0
    clashes: list[tuple[int, int]] = []
    for _, starting, hold in events:
        if not starting:
            active.pop(hold.seq, None)
            continue
        clashes.extend(
            (other.seq, hold.seq) for other in active.values() if other.model != hold.model
        )
        active[hold.seq] = hold
        most = max(most, len(active))
    return Occupancy(most, tuple(clashes))
