"""A lean HTTP/1.1 client for the relay's hot path: keep-alive connections to one upstream.

httpx spends more on each request than the relay itself does: its connection pool looks
at every pooled connection (state, expiry, a readability check) to place each request,
and writes a request's head and body in separate sends. This pool keeps idle connections
on a stack (the most recently used is taken first, the oldest expire from the bottom),
checks only the connection it takes, and sends a request in one write. HTTP/1.1 itself
(framing, Content-Length and chunked bodies, keep-alive, malformed answers) is h11's.

It only ever connects to the host and port of the base URL it was built with; the
request's target comes from `Upstream.url`, which checks it. Failures are raised as
httpx's exceptions, so that `upstream` classifies them as it classifies httpx's own.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator

import attrs
import h11
import httpx
import trio

Head = list[tuple[bytes, bytes]]

# how long to wait for a connection and for each write (both clients to Ollama, this and
# httpx, use these), and how large a head may be (as httpx)
CONNECT_TIMEOUT = 10.0
WRITE_TIMEOUT = 60.0
MAX_HEAD = 100 * 1024
# idle connections kept, and for how long (httpx's defaults: an idle connection the
# server has dropped is found on reuse, but one kept for minutes mostly has been)
MAX_IDLE = 32
IDLE_EXPIRY = 5.0
READ_SIZE = 64 * 1024
# methods whose request always declares a length, even an empty one
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@attrs.define(eq=False)
class _Connection:
    stream: trio.SocketStream
    http: h11.Connection
    idle_since: float = 0.0

    def close(self) -> None:
        # synchronous: safe in a `finally` under cancellation
        self.stream.socket.close()


class RelayPool:
    """Keep-alive connections to the upstream at `base_url` (http only), at most
    `max_connections` at once; a request finding every one busy waits for one."""

    def __init__(self, base_url: str, max_connections: int) -> None:
        url = httpx.URL(base_url)
        if url.scheme != "http" or not url.host:
            raise ValueError(f"the lean relay speaks plain http only, not {base_url!r}")
        self.host = url.host
        self.port = url.port or 80
        # the Host header httpx would send: the port only when it is not the default
        self.authority = url.netloc
        self._slots = trio.Semaphore(max_connections)
        self._idle: collections.deque[_Connection] = collections.deque()
        self._closed = False

    async def send(
        self,
        method: str,
        target: bytes,
        headers: Head,
        body: bytes = b"",
        read_timeout: float | None = None,
    ) -> RelayResponse:
        """Send a request and return once the head of its answer has arrived; the caller
        reads the body and must close the response (which keeps the connection for the
        next request when the answer was read to its end, and closes it otherwise).

        A reused connection the server closed while idle is never written to; one that
        fails on the very first write (no byte of the request sent) is replaced by a
        fresh connection once. Raises httpx.TransportError on any failure."""
        head: Head = [(b"host", self.authority), *headers]
        if body or method in _BODY_METHODS:
            head.append((b"content-length", str(len(body)).encode()))
        return await self.send_head(method, target, head, body, read_timeout)

    async def send_head(
        self,
        method: str,
        target: bytes,
        head: Head,
        body: bytes = b"",
        read_timeout: float | None = None,
    ) -> RelayResponse:
        """`send` with the request's whole head as given, Host and framing included: for a
        caller that must send exactly the head another client would have."""
        await self._slots.acquire()
        try:
            connection, reused = await self._take()
            try:
                data = _request_bytes(connection.http, method, target, head, body)
                if not await _write(connection, data, first_may_fail=reused):
                    connection.close()
                    connection = await self._connect()
                    data = _request_bytes(connection.http, method, target, head, body)
                    await _write(connection, data, first_may_fail=False)
                response = await _read_head(connection, read_timeout)
            except BaseException:
                connection.close()
                raise
        except BaseException:
            self._slots.release()
            raise
        return RelayResponse(self, connection, response, read_timeout)

    async def _take(self) -> tuple[_Connection, bool]:
        """An idle connection (the most recent first) that the server has not closed, or
        a new one; and whether it was reused."""
        self._expire()
        while self._idle:
            connection = self._idle.pop()
            # an idle connection has nothing to read; if it has, the server closed it
            # (or broke the protocol): either way it cannot carry a request
            if connection.stream.socket.is_readable():
                connection.close()
                continue
            return connection, True
        return await self._connect(), False

    def _expire(self) -> None:
        deadline = trio.current_time() - IDLE_EXPIRY
        while self._idle and self._idle[0].idle_since < deadline:
            self._idle.popleft().close()

    async def _connect(self) -> _Connection:
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(self.host, self.port)
        except trio.TooSlowError:
            raise httpx.ConnectTimeout("connecting timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from None
        http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        return _Connection(stream, http)

    def _release(self, connection: _Connection, reusable: bool) -> None:
        if reusable and not self._closed and len(self._idle) < MAX_IDLE:
            connection.http.start_next_cycle()
            connection.idle_since = trio.current_time()
            self._idle.append(connection)
        else:
            connection.close()
        self._slots.release()

    def close(self) -> None:
        """Close the idle connections; those in use close when their answer does."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()


def _request_bytes(
    http: h11.Connection, method: str, target: bytes, head: Head, body: bytes
) -> bytes:
    try:
        data = http.send(h11.Request(method=method, target=target, headers=head)) or b""
        if body:
            data += http.send(h11.Data(data=body)) or b""
        return data + (http.send(h11.EndOfMessage()) or b"")
    except h11.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(f"cannot send this request: {exc}") from None


async def _write(connection: _Connection, data: bytes, *, first_may_fail: bool) -> bool:
    """Write the whole request. With `first_may_fail`, a first send that fails (so that
    no byte went out) returns False instead of raising: the request may go elsewhere."""
    sock = connection.stream.socket
    try:
        with trio.fail_after(WRITE_TIMEOUT):
            sent = 0
            try:
                sent = await sock.send(data)
            except OSError:
                if first_may_fail:
                    return False
                raise
            view = memoryview(data)
            while sent < len(data):
                sent += await sock.send(view[sent:])
    except trio.TooSlowError:
        raise httpx.WriteTimeout("writing the request timed out") from None
    except OSError as exc:
        raise httpx.WriteError(str(exc) or repr(exc)) from None
    return True


async def _next_event(connection: _Connection, read_timeout: float | None) -> h11.Event:
    http = connection.http
    while True:
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(f"ollama broke HTTP/1.1: {exc}") from None
        if event is not h11.NEED_DATA:
            if isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError("the server closed the connection")
            return event  # type: ignore[return-value]
        try:
            if read_timeout is None:
                data = await connection.stream.socket.recv(READ_SIZE)
            else:
                with trio.fail_after(read_timeout):
                    data = await connection.stream.socket.recv(READ_SIZE)
        except trio.TooSlowError:
            raise httpx.ReadTimeout("ollama went silent") from None
        except OSError as exc:
            raise httpx.ReadError(str(exc) or repr(exc)) from None
        http.receive_data(data)


async def _read_head(connection: _Connection, read_timeout: float | None) -> h11.Response:
    while True:
        event = await _next_event(connection, read_timeout)
        if isinstance(event, h11.Response):
            return event
        if not isinstance(event, h11.InformationalResponse):
            raise httpx.RemoteProtocolError(f"expected an answer's head, got {event!r}")


class RelayResponse:
    """An answer whose head has arrived: its status, its headers as sent (names
    lowercased), and a body to read once, whole or in chunks."""

    def __init__(
        self,
        pool: RelayPool,
        connection: _Connection,
        head: h11.Response,
        read_timeout: float | None,
    ) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self._read_timeout = read_timeout
        self.status_code = head.status_code
        self.headers: Head = list(head.headers)

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lowercase)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body as it arrives (unframed), None at its end. Raises
        httpx.TransportError when the connection breaks or the server breaks the
        protocol; the response is then closed."""
        connection = self._connection
        if connection is None:
            return None
        try:
            while True:
                event = await _next_event(connection, self._read_timeout)
                if isinstance(event, h11.Data):
                    return bytes(event.data)
                if isinstance(event, h11.EndOfMessage):
                    self._done()
                    return None
        except BaseException:
            self.aclose_now()
            raise

    def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body chunk by chunk, as `next_chunk` gives it (an iterator, not a
        generator: one left unfinished needs no finalizing)."""
        return self

    def __aiter__(self) -> RelayResponse:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.next_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aread(self) -> bytes:
        """The whole body."""
        parts = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    def _done(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            http = connection.http
            reusable = http.our_state is h11.DONE and http.their_state is h11.DONE
            self._pool._release(connection, reusable)

    def aclose_now(self) -> None:
        """Close the answer: an answer not read to its end closes its connection (which
        tells the server the request was given up)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool._release(connection, reusable=False)

    async def aclose(self) -> None:
        self.aclose_now()
