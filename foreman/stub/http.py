"""HTTP/1.1 over trio sockets with h11. Knows nothing of Ollama.

One task per connection, keep-alive between requests. A request body is read whole (Ollama
bodies are small); then the handler runs while a watcher task keeps reading the socket, because
end-of-file there means the client went away and must cancel the handler, as Go's server cancels
a request's context. Responses are plain (Content-Length) or streamed (chunked, one send per
chunk). Faults need endings no well-behaved server has: `abort` resets the connection
(SO_LINGER 0) or closes it in the middle of a body.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import NoReturn
from urllib.parse import parse_qsl, urlsplit

import attrs
import h11
import trio

from .clock import wall_seconds

log = logging.getLogger("foreman.stub")

MAX_BODY = 32 * 1024 * 1024
RECEIVE_SIZE = 65536

Headers = Iterable[tuple[str, str]]


class ClientGone(Exception):
    """The client closed or reset the connection before the response was complete."""


class Aborted(Exception):
    """The handler ended the connection on purpose (a fault); nothing more can be sent."""


class _BodyTooLarge(Exception):
    pass


@attrs.frozen
class Request:
    """A whole request: `path` without the query string, header names in lower case."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: tuple[tuple[str, str], ...]
    body: bytes
    http_version: str = "1.1"

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in reversed(self.headers):
            if key == wanted:
                return value
        return None


def _make_request(head: h11.Request, body: bytes) -> Request:
    target = head.target.decode("latin-1")
    parts = urlsplit(target)
    return Request(
        method=head.method.decode("ascii", "replace").upper(),
        target=target,
        path=parts.path or "/",
        query=dict(parse_qsl(parts.query, keep_blank_values=True)),
        headers=tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in head.headers),
        body=body,
        http_version=head.http_version.decode("ascii", "replace"),
    )


def _linger_zero(stream: trio.SocketStream) -> None:
    """Make the next close send RST instead of FIN."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Connection:
    """One accepted socket and its h11 state machine."""

    def __init__(self, stream: trio.SocketStream, ident: int) -> None:
        self.stream = stream
        self.ident = ident
        self.h11 = h11.Connection(h11.SERVER)
        self.scope = trio.CancelScope()
        self.control = False  # its latest request was a control request: survives drops
        self.dropped = False

    def drop(self) -> None:
        """Reset the connection now, as a crashing server would, and stop its task."""
        self.dropped = True
        _linger_zero(self.stream)
        self.stream.socket.close()
        self.scope.cancel()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class Exchange:
    """One request and the means to answer it, once."""

    def __init__(self, conn: Connection, request: Request) -> None:
        self.conn = conn
        self.request = request
        self.status: int | None = None
        self.finished = False
        self.client_gone = False
        self.aborted = False

    @property
    def started(self) -> bool:
        return self.status is not None

    async def _send(self, *events: h11.Event) -> None:
        data = b"".join(self.conn.h11.send(event) or b"" for event in events)
        try:
            await self.conn.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if not (self.aborted or self.conn.dropped):
                self.client_gone = True
            raise ClientGone from exc

    def _head(self, status: int, content_type: str | None, headers: Headers) -> h11.Response:
        self.status = status
        fields = [(b"date", email.utils.formatdate(wall_seconds(), usegmt=True).encode())]
        if content_type is not None:
            fields.append((b"content-type", content_type.encode()))
        fields.extend((k.encode(), v.encode()) for k, v in headers)
        return h11.Response(status_code=status, headers=fields, reason=_reason(status))

    async def respond(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Headers = (),
    ) -> None:
        """Send a whole response with a Content-Length (no body bytes for HEAD)."""
        head = self._head(status, content_type, [*headers, ("content-length", str(len(body)))])
        events: list[h11.Event] = [head]
        if body and self.request.method != "HEAD":
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        await self._send(*events)
        self.finished = True

    async def start(
        self,
        status: int,
        content_type: str,
        headers: Headers = (),
        content_length: int | None = None,
    ) -> None:
        """Send the head of a streamed response: chunked unless a length is given."""
        extra = list(headers)
        if content_length is not None:
            extra.append(("content-length", str(content_length)))
        await self._send(self._head(status, content_type, extra))

    async def send(self, data: bytes) -> None:
        """Send one piece of a streamed body, flushed at once."""
        if data and self.request.method != "HEAD":
            await self._send(h11.Data(data=data))

    async def end(self) -> None:
        await self._send(h11.EndOfMessage())
        self.finished = True

    def abort(self, *, rst: bool) -> NoReturn:
        """Close the connection mid-exchange: RST when `rst`, else a bare FIN."""
        self.aborted = True
        if rst:
            _linger_zero(self.conn.stream)
        self.conn.stream.socket.close()
        raise Aborted


Handler = Callable[[Exchange], Awaitable[None]]


async def serve_connection(conn: Connection, handler: Handler) -> None:
    """Serve requests on one connection until either side closes it."""
    try:
        with conn.scope:
            while True:
                request = await _read_request(conn)
                if request is None:
                    return
                exchange = Exchange(conn, request)
                await _run(exchange, handler)
                if not exchange.finished or conn.h11.our_state is not h11.DONE:
                    return
                if conn.h11.their_state is not h11.DONE:
                    return
                conn.h11.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, ClientGone, Aborted):
        pass
    except h11.RemoteProtocolError as exc:
        await _reject(conn, exc.error_status_hint)
    except _BodyTooLarge:
        await _reject(conn, 413)
    finally:
        await trio.aclose_forcefully(conn.stream)


async def _read_request(conn: Connection) -> Request | None:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.h11.next_event()
        if event is h11.NEED_DATA:
            if conn.h11.they_are_waiting_for_100_continue:
                informational = h11.InformationalResponse(status_code=100, headers=[])
                await conn.stream.send_all(conn.h11.send(informational) or b"")
            conn.h11.receive_data(await conn.stream.receive_some(RECEIVE_SIZE))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise _BodyTooLarge
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return _make_request(head, bytes(body))
        else:  # ConnectionClosed, or PAUSED after a protocol switch we never agree to
            return None


async def _run(exchange: Exchange, handler: Handler) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_peer, exchange, nursery.cancel_scope)
        try:
            await handler(exchange)
        except (ClientGone, Aborted):
            pass
        except Exception:
            log.exception(
                "stub handler failed on %s %s", exchange.request.method, exchange.request.path
            )
            if not exchange.started:
                body = b'{"error":"internal stub error"}'
                with contextlib.suppress(ClientGone):
                    await exchange.respond(500, body, "application/json; charset=utf-8")
        nursery.cancel_scope.cancel()


async def _watch_peer(exchange: Exchange, scope: trio.CancelScope) -> None:
    """Cancel the handler when the client goes away; keep any pipelined bytes for later."""
    conn = exchange.conn
    while True:
        try:
            data = await conn.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            if not (exchange.aborted or conn.dropped or exchange.finished):
                exchange.client_gone = True
            scope.cancel()
            return
        conn.h11.receive_data(data)


async def _reject(conn: Connection, status: int) -> None:
    """Answer a malformed request as Go does, then let the connection close."""
    if conn.dropped or conn.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = f"{status} {_reason(status).decode()}".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    try:
        data = b"".join(
            conn.h11.send(event) or b""
            for event in (
                h11.Response(status_code=status, headers=headers, reason=_reason(status)),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
        )
        await conn.stream.send_all(data)
    except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
