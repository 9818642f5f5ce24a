"""Fault switches: what should go wrong, for which upcoming requests, how many times.

Pure. The HTTP layer asks `FaultBook.take` once per Ollama request, on arrival; the first switch
that matches is consumed (its count drops by one) and applied. `refuse` is not per request: the
server acts on it as soon as it is set (it stops listening for `seconds`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from .catalogue import normalise_name

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an "
    "internal error, check ollama server logs for details"
)


class FaultKind(enum.StrEnum):
    REFUSE = "refuse"  # stop listening for `seconds`: connections are refused
    RESET = "reset"  # read the request, then reset the TCP connection (SO_LINGER 0)
    STATUS = "status"  # answer `status` with an Ollama-shaped error body
    HANG = "hang"  # read the request and never answer until the client goes away
    CUT = "cut"  # send `after` stream lines, then close without the terminating chunk
    MID_ERROR = "mid_error"  # send `after` lines, then one {"error": ...} line and end


class FaultError(ValueError):
    """A fault description that cannot be applied; str() says why."""


def default_message(status: int) -> str:
    if status == 503:
        return BUSY_MESSAGE
    if status >= 500:
        return RUNNER_STOPPED
    return "bad request" if status == 400 else f"request failed with status {status}"


@attrs.define
class Fault:
    """One switch. `count` None means every matching request until cleared."""

    kind: FaultKind
    count: int | None = 1
    path: str | None = None
    model: str | None = None
    request_kind: str | None = None
    after: int = 0
    status: int = 500
    message: str | None = None
    seconds: float | None = None
    rst: bool = False
    hits: int = 0
    id: int = 0

    @property
    def text(self) -> str:
        """The error text this fault puts in a body."""
        return self.message if self.message is not None else default_message(self.status)

    def matches(self, path: str, model: str | None, kind: str) -> bool:
        if self.path is not None and self.path != path:
            return False
        if self.request_kind is not None and self.request_kind != kind:
            return False
        return self.model is None or (model is not None and normalise_name(model) == self.model)

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["kind"] = str(self.kind)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """Build a switch from its JSON description, rejecting anything ambiguous."""
        if not isinstance(data, Mapping):
            raise FaultError("a fault must be a JSON object")
        settable = {f.name for f in attrs.fields(cls)} - {"hits", "id"}
        unknown = set(data) - settable
        if unknown:
            raise FaultError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        try:
            kind = FaultKind(str(data.get("kind")))
        except ValueError:
            names = ", ".join(k.value for k in FaultKind)
            raise FaultError(f"fault kind must be one of: {names}") from None
        return make_fault(
            kind,
            count=_opt_int(data, "count", 1),
            path=_opt_str(data, "path"),
            model=_opt_str(data, "model"),
            request_kind=_opt_str(data, "request_kind"),
            after=_opt_int(data, "after", 0) or 0,
            status=_opt_int(data, "status", 500) or 500,
            message=_opt_str(data, "message"),
            seconds=_opt_float(data, "seconds"),
            rst=bool(data.get("rst", False)),
        )


def make_fault(
    kind: FaultKind | str,
    *,
    count: int | None = 1,
    path: str | None = None,
    model: str | None = None,
    request_kind: str | None = None,
    after: int = 0,
    status: int = 500,
    message: str | None = None,
    seconds: float | None = None,
    rst: bool = False,
) -> Fault:
    """Validate and build a fault switch."""
    try:
        fault_kind = FaultKind(kind)
    except ValueError:
        raise FaultError(f"unknown fault kind {kind!r}") from None
    if count is not None and count < 1:
        raise FaultError("count must be at least 1 (or null for every request)")
    if after < 0:
        raise FaultError("after must not be negative")
    if not 400 <= status <= 599:
        raise FaultError("status must be a 4xx or 5xx code")
    if seconds is not None and seconds < 0:
        raise FaultError("seconds must not be negative")
    return Fault(
        fault_kind,
        count=count,
        path=path,
        model=normalise_name(model) if model else None,
        request_kind=request_kind,
        after=after,
        status=status,
        message=message,
        seconds=seconds,
        rst=rst,
    )


def _opt_int(data: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = data.get(key, default)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise FaultError(f"{key} must be an integer")


def _opt_float(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return None if value is None else float(value)
    raise FaultError(f"{key} must be a number")


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise FaultError(f"{key} must be a string")


class FaultBook:
    """The armed per-request switches, in the order they were set."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._next_id = 1

    def add(self, fault: Fault) -> Fault:
        fault.id = self._next_id
        self._next_id += 1
        self._faults.append(fault)
        return fault

    def clear(self) -> None:
        self._faults.clear()

    def take(self, path: str, model: str | None, kind: str) -> Fault | None:
        """Consume one use of the first switch matching this request, if any."""
        for fault in self._faults:
            if fault.matches(path, model, kind):
                fault.hits += 1
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count == 0:
                        self._faults.remove(fault)
                return fault
        return None

    def __iter__(self) -> Iterator[Fault]:
        return iter(list(self._faults))

    def to_list(self) -> list[dict[str, Any]]:
        return [fault.to_dict() for fault in self._faults]
