"""What every route sends back: JSON documents, server-sent event streams, relayed answers,
and the request body they are made from.

The ground floor of `api/` beside `errors.py`: it knows no route and no part of foreman.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from quart import Response, request

JSON = "application/json; charset=utf-8"
EVENT_STREAM = "text/event-stream"
# a long-lived answer: no cache may keep it, and no proxy may hold it back to buffer it
STREAMING_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# a comment line on idle event streams, well inside a tunnel's 100 s idle limit
SSE_KEEPALIVE = 15.0
KEEP_ALIVE_COMMENT = b": keep-alive\n\n"


def compact_json(data: Any) -> str:
    """`data` as JSON without spaces: what foreman writes on the wire."""
    return json.dumps(data, separators=(",", ":"))


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(compact_json(data), status=status, content_type=JSON, headers=headers)


def sse_event(kind: str, data: Any, event_id: str | None = None) -> bytes:
    """One server-sent event: its kind, its id when it has one, and `data` as JSON."""
    head = f"event: {kind}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return f"{head}data: {compact_json(data)}\n\n".encode()


def event_stream(events: AsyncIterator[bytes]) -> Response:
    """A server-sent event stream that sends what `events` yields, as it yields it."""
    return Response(events, status=200, content_type=EVENT_STREAM, headers=STREAMING_HEADERS)


async def request_body() -> bytes:
    """The raw request body, exactly as the client sent it."""
    data = await request.get_data(cache=True, as_text=False, parse_form_data=False)
    return data


def build_response(
    body: bytes | AsyncIterator[bytes],
    status: int,
    headers: tuple[tuple[str, str], ...],
    *,
    length: int | None = None,
) -> Response:
    """An answer with exactly `headers`, framed by foreman's server: a whole body goes out
    with its Content-Length (`length` overrides it, for a HEAD), an iterator chunked."""
    out = Response(body, status=status)
    out.headers.clear()
    for name, value in headers:
        out.headers.add(name, value)
    if isinstance(body, bytes) and status >= 200 and status not in (204, 304):
        out.headers["Content-Length"] = str(len(body) if length is None else length)
    return out
