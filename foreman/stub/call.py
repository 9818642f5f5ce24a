"""One Ollama request being served, and the request-side rules every route shares.

Bodies are decoded the way Go's encoding/json decodes them into Ollama's structs, so a wrong
type or bad JSON yields the same 400 text a real Ollama gives. Handlers raise `HttpError`; the
route family (native or OpenAI) turns it into its own error shape at the edge.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .durations import DurationError, parse_keep_alive
from .faults import Fault, FaultKind
from .http import Exchange
from .record import RequestEntry
from .shapes import dumps
from .state import StubState

JSON = "application/json; charset=utf-8"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
TEXT = "text/plain; charset=utf-8"


class HttpError(Exception):
    """An error answer: HTTP status plus Ollama's message text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def go_kind(value: object) -> str:
    """The JSON kind as Go's decoder names it in errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def decode_body(body: bytes, go_type: str) -> dict[str, Any]:
    """Decode a JSON object body, failing like gin's ShouldBindJSON into `api.<go_type>`."""
    text = body.decode("utf-8", "replace")
    if not text.strip():
        raise HttpError(400, "missing request body")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            raise HttpError(400, "unexpected EOF") from None
        char = text[exc.pos]
        raise HttpError(400, f"invalid character {char!r} looking for beginning of value") from None
    except ValueError as exc:  # NaN / Infinity, which Go's decoder does not accept
        char = str(exc)[:1]
        raise HttpError(400, f"invalid character {char!r} looking for beginning of value") from None
    except RecursionError:  # Go's decoder stops at a nesting depth of 10000
        raise HttpError(400, "exceeded max depth") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        kind = go_kind(value)
        raise HttpError(400, f"json: cannot unmarshal {kind} into Go value of type api.{go_type}")
    return value


def typed(body: Mapping[str, Any], name: str, go_struct: str, go_type: str) -> Any:
    """body[name], or None; a value of the wrong JSON kind is Go's unmarshal error.

    `go_type` is the Go type named in the error; "string", "bool", "int" and types starting
    with "map" are checked as such, anything else must be a JSON array.
    """
    value = body.get(name)
    if value is None:
        return None
    if go_type == "string":
        ok = isinstance(value, str)
    elif go_type == "bool":
        ok = isinstance(value, bool)
    elif go_type == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif go_type.startswith("map"):
        ok = isinstance(value, dict)
    else:
        ok = isinstance(value, list)
    if not ok:
        field = f"{go_struct}.{name}"
        message = f"json: cannot unmarshal {go_kind(value)} into Go struct field {field}"
        raise HttpError(400, f"{message} of type {go_type}")
    return value


def keep_alive_of(body: Mapping[str, Any]) -> float | None:
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except DurationError as exc:
        raise HttpError(400, str(exc)) from None


def stream_flag(body: Mapping[str, Any], go_struct: str, default: bool) -> bool:
    value = typed(body, "stream", go_struct, "bool")
    return default if value is None else bool(value)


class Call:
    """The context a route handler works in; `family` is "native" or "openai"."""

    def __init__(
        self,
        state: StubState,
        exchange: Exchange,
        entry: RequestEntry,
        family: str,
        fault: Fault | None = None,
    ) -> None:
        self.state = state
        self.exchange = exchange
        self.entry = entry
        self.family = family
        self.fault = fault  # a pending cut / mid_error fault, applied to the response body

    def body(self, go_type: str) -> dict[str, Any]:
        return decode_body(self.exchange.request.body, go_type)

    def take_fault(self) -> Fault | None:
        fault, self.fault = self.fault, None
        return fault

    async def send_json(self, obj: object, status: int = 200) -> None:
        """Send a whole JSON answer; a pending cut or mid_error fault spoils it."""
        body = dumps(obj)
        fault = self.take_fault() if status == 200 else None
        if fault is not None and fault.kind is FaultKind.MID_ERROR:
            raise HttpError(500, fault.text)
        if fault is not None and fault.kind is FaultKind.CUT:
            await self.exchange.start(status, JSON, content_length=len(body))
            await self.exchange.send(body[: len(body) // 2])
            self.exchange.abort(rst=fault.rst)
        await self.exchange.respond(status, body, JSON)

    async def send_text(self, text: str, status: int = 200) -> None:
        await self.exchange.respond(status, text.encode(), TEXT)

    async def send_empty(self, status: int = 200) -> None:
        await self.exchange.respond(status)
