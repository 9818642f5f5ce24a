"""A lean HTTP/1.1 client for load: keep-alive connections, pre-encoded requests.

httpx is the right client for applications but costs far more CPU per request than
foreman does to answer one; on a 2-core machine it would measure itself. This client
does just enough HTTP/1.1 (Content-Length and chunked bodies, keep-alive, reconnect on
`Connection: close`) to drive foreman and the stub over loopback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio


class HttpError(Exception):
    """The server broke the protocol or closed the connection mid-answer."""


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    # perf_counter seconds: request sent, first body byte, last byte
    sent: float
    first: float
    done: float

    def json(self) -> Any:
        return json.loads(self.body)


def encode_request(
    method: str,
    target: str,
    host: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


class Connection:
    """One keep-alive connection; not for concurrent use (one request at a time)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.authority = parts.netloc
        self._stream: trio.SocketStream | None = None
        self._buffer = bytearray()

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    async def _connect(self) -> trio.SocketStream:
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(self.host, self.port)
            self._buffer.clear()
        return self._stream

    async def _fill(self, stream: trio.SocketStream) -> None:
        data = await stream.receive_some(65536)
        if not data:
            raise HttpError("connection closed by the server")
        self._buffer += data

    async def send(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        on_chunk: Callable[[bytes], None] | None = None,
    ) -> Answer:
        return await self.send_raw(
            encode_request(method, target, self.authority, body, headers), on_chunk
        )

    async def send_raw(
        self, request: bytes, on_chunk: Callable[[bytes], None] | None = None
    ) -> Answer:
        stream = await self._connect()
        sent = time.perf_counter()
        try:
            await stream.send_all(request)
            return await self._read_answer(stream, sent, on_chunk)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self.aclose()
            raise HttpError(str(exc)) from exc
        except HttpError:
            await self.aclose()
            raise

    async def _read_answer(
        self,
        stream: trio.SocketStream,
        sent: float,
        on_chunk: Callable[[bytes], None] | None,
    ) -> Answer:
        buf = self._buffer
        while (end := buf.find(b"\r\n\r\n")) < 0:
            await self._fill(stream)
        head = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[: end + 4]
        status = int(head[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        first = 0.0
        body = bytearray()
        if "content-length" in headers:
            length = int(headers["content-length"])
            while len(buf) < length:
                await self._fill(stream)
            first = time.perf_counter()
            body += buf[:length]
            del buf[:length]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                while (eol := buf.find(b"\r\n")) < 0:
                    await self._fill(stream)
                size = int(bytes(buf[:eol]).split(b";")[0], 16)
                while len(buf) < eol + 2 + size + 2:
                    await self._fill(stream)
                chunk = bytes(buf[eol + 2 : eol + 2 + size])
                del buf[: eol + 2 + size + 2]
                if size == 0:
                    break
                if not first:
                    first = time.perf_counter()
                body += chunk
                if on_chunk is not None:
                    on_chunk(chunk)
        else:
            # body until close
            try:
                while True:
                    await self._fill(stream)
            except HttpError:
                pass
            body += buf
            buf.clear()
            first = time.perf_counter()
            await self.aclose()
        done = time.perf_counter()
        if headers.get("connection", "").lower() == "close":
            await self.aclose()
        return Answer(status, headers, bytes(body), sent, first or done, done)


class Pool:
    """N connections handed out one task at a time (a tiny connection pool)."""

    def __init__(self, url: str, size: int) -> None:
        self._send, self._receive = trio.open_memory_channel[Connection](size)
        self._all = [Connection(url) for _ in range(size)]
        for conn in self._all:
            self._send.send_nowait(conn)

    async def send(self, method: str, target: str, body: bytes | None = None, **kw: Any) -> Answer:
        conn = await self._receive.receive()
        try:
            return await conn.send(method, target, body, **kw)
        finally:
            self._send.send_nowait(conn)

    async def aclose(self) -> None:
        for conn in self._all:
            await conn.aclose()
