"""The Ollama client: every HTTP request foreman makes to Ollama goes through here.

Failures leave this module as one `UpstreamError` whose kind (`retry.FailureKind`) tells
the worker what to do. Requests carry Ollama's own Host (httpx derives it from the base
URL): Ollama on loopback refuses a foreign Host, and behind a tunnel the client's Host
is the public name.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from contextlib import aclosing, asynccontextmanager
from typing import Any, Protocol

import attrs
import httpx

from foreman.jobs import Endpoint
from foreman.relay_client import (
    CONNECT_TIMEOUT,
    WRITE_TIMEOUT,
    Head,
    RelayPool,
    RelayResponse,
)
from foreman.retry import FailureKind, classify_status
from foreman.target import TargetRefused, checked_path

# Hop-by-hop and framing headers are the proxy's own business on each side; the rest of
# the client's headers reach Ollama, and the rest of Ollama's reach the client.
HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "host",
    }
)
# Headers that are foreman's own and never go upstream (keys, foreman's controls: the
# upstream an admin request names; any other X-Foreman-* as well, see request_headers).
PRIVATE_HEADERS = frozenset({"authorization", "x-service-key", "cookie", "x-foreman-upstream"})
# Ollama's headers that foreman's own server writes for the client: relayed as well, the
# client got two of each.
SERVER_HEADERS = frozenset({"date", "server"})

Headers = tuple[tuple[str, str], ...]


@attrs.define
class UpstreamError(Exception):
    """A failed call to Ollama, classified; carries Ollama's answer when there was one."""

    kind: FailureKind
    message: str
    status: int | None = None
    body: bytes | None = None
    headers: Headers = ()
    # the route that answered `status` (a job's own, or a call the worker made for it)
    route: str | None = None
    # Ollama went silent for longer than foreman waits (or the job ran out of time)
    timed_out: bool = False
    # the connection broke before the answer was whole: Ollama's runner failing, or the
    # whole server gone (which only a probe tells apart)
    broken: bool = False

    @property
    def metric_kind(self) -> str:
        """The kind as /metrics counts it: a timeout is told apart from other transients."""
        return "timeout" if self.timed_out else self.kind.value

    def __str__(self) -> str:
        return self.message


def forwarded_headers(incoming: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The client's headers that may go to Ollama, as the bytes the client sent.

    `incoming` is the header list of the request as it arrived (the ASGI scope's): the
    web framework's view adds headers of its own (`Remote-Addr`) that no client sent.
    Values go on as bytes: httpx refuses text beyond ASCII, which made relaying a header
    like `X-Name: é` a 500."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in incoming:
        lower = name.decode("latin-1").lower()
        if lower in HOP_HEADERS or lower in PRIVATE_HEADERS or lower.startswith("x-foreman-"):
            continue
        out.append((bytes(name), bytes(value)))
    return out


def request_headers(incoming: Iterable[tuple[bytes, bytes]]) -> httpx.Headers:
    """`forwarded_headers` for httpx."""
    return httpx.Headers(forwarded_headers(incoming))


def response_headers(headers: httpx.Headers) -> Headers:
    """Ollama's headers that may go back to the client: not the framing, which foreman's
    server sets for its own answer, nor `Date` and `Server`, which it writes itself."""
    return tuple(
        (k, v)
        for k, v in headers.multi_items()
        if k.lower() not in HOP_HEADERS and k.lower() not in SERVER_HEADERS
    )


_NOT_RELAYED = frozenset(name.encode() for name in HOP_HEADERS | SERVER_HEADERS)


def relayed_headers(
    headers: httpx.Headers | Iterable[tuple[bytes, bytes]],
) -> list[tuple[bytes, bytes]]:
    """`response_headers` as the bytes Ollama sent (names lowercased), for an answer
    written straight to the ASGI server: nothing decoded to be encoded again."""
    out: list[tuple[bytes, bytes]] = []
    raw = headers.raw if isinstance(headers, httpx.Headers) else headers
    for name, value in raw:
        lower = name.lower()
        if lower not in _NOT_RELAYED:
            out.append((lower, value))
    return out


def error_message(body: bytes, status: int) -> str:
    """Ollama's `error` text from an error body, or a description of the status."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    text = body.decode("utf-8", "replace").strip()
    return f"ollama answered {status}" + (f": {text[:200]}" if text else "")


def _network_error(exc: httpx.HTTPError, what: str) -> UpstreamError:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return UpstreamError(FailureKind.OUTAGE, f"cannot reach ollama ({what}): {exc!r}")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(FailureKind.TRANSIENT, f"ollama timed out ({what})", timed_out=True)
    return UpstreamError(
        FailureKind.TRANSIENT, f"connection to ollama failed ({what}): {exc!r}", broken=True
    )


# Connections to Ollama, in separate pools so that no one use can take them all: relayed
# requests (embeddings, pulls, model information: as many as clients send), the worker
# (its jobs, with their loads and unloads) and the readiness probe (which anyone may
# call). A flood of slow relayed requests waits for the relay's pool, not the worker.
RELAY_CONNECTIONS = 64
# the lean relay's own pool (`relay_client`), beside the relay's httpx pool
LEAN_RELAY_CONNECTIONS = RELAY_CONNECTIONS
WORKER_CONNECTIONS = 4
PROBE_CONNECTIONS = 4


def worker_connections(slots: int) -> int:
    """The worker's pool for an upstream with `slots`: one connection per slot, and the
    spare ones a single slot always had (a probe of a silent upstream while its jobs
    hold theirs). A pool smaller than the slots would quietly run fewer jobs at once."""
    return WORKER_CONNECTIONS + slots - 1


def upstream_connections(slots: int) -> int:
    """Every connection foreman may open to an upstream with `slots`."""
    # the worker's pool, and its lean pool for its jobs
    return (
        RELAY_CONNECTIONS
        + LEAN_RELAY_CONNECTIONS
        + 2 * worker_connections(slots)
        + PROBE_CONNECTIONS
    )


def default_client(base_url: str, max_connections: int = RELAY_CONNECTIONS) -> httpx.AsyncClient:
    """No read timeout by default: a load or a long non-streamed generation sends nothing
    for minutes, and closing a request early makes Ollama abort its load. Requests that
    should not go silent for long ask for one (`Upstream.read_timeout`); the worker also
    bounds every attempt with the job timeout. A request finding every connection busy
    waits for one (no pool timeout)."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(connect=CONNECT_TIMEOUT, read=None, write=WRITE_TIMEOUT, pool=None),
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=min(max_connections, 32),
        ),
        follow_redirects=False,
    )


class RelayedAnswer(Protocol):
    """An answer relayed on the hot path, whichever client fetched it: its head, and its
    body to read once (raising httpx.HTTPError when the connection fails)."""

    status_code: int
    # as Ollama sent them, names lowercased
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None: ...
    def aiter_raw(self) -> AsyncIterator[bytes]: ...
    async def aread(self) -> bytes: ...
    async def aclose(self) -> None: ...


class _HttpxAnswer:
    """An httpx answer as a `RelayedAnswer` (an upstream without a lean pool: https)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status_code = response.status_code
        self.headers = [(name.lower(), value) for name, value in response.headers.raw]

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def aiter_raw(self) -> AsyncIterator[bytes]:
        return self.response.aiter_raw()

    async def aread(self) -> bytes:
        return await self.response.aread()

    async def aclose(self) -> None:
        await self.response.aclose()


class StreamedAnswer(Protocol):
    """An answer `Upstream.open` gives, whichever client fetched it: httpx's own, or the
    lean pool's as `_LeanAnswer`."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> httpx.Headers: ...
    def aiter_raw(self) -> AsyncIterator[bytes]: ...
    async def aread(self) -> bytes: ...
    async def aclose(self) -> None: ...


class _LeanAnswer:
    """A lean pool's answer as httpx would have given it: its headers as `httpx.Headers`
    (decoded as httpx decodes them), its whole body decoded by its Content-Encoding."""

    def __init__(self, response: RelayResponse) -> None:
        self.response = response
        self.status_code = response.status_code
        self.headers = httpx.Headers(response.headers)

    def aiter_raw(self) -> AsyncIterator[bytes]:
        return self.response.aiter_raw()

    async def aread(self) -> bytes:
        raw = await self.response.aread()
        if self.response.header(b"content-encoding") is None:
            return raw
        # rare (Ollama does not compress), so httpx's own decoders do it
        return httpx.Response(self.status_code, headers=self.headers, content=raw).content

    async def aclose(self) -> None:
        await self.response.aclose()


class Upstream:
    """`read_timeout` is the longest silence accepted where Ollama should keep talking:
    small calls (version, ps, show, unload) and streamed jobs. Loads, non-streamed jobs
    and relayed requests wait as long as they take (the job timeout, or the client,
    bounds them). `lean`, when given, carries the relay's hot path (`relay`) and the
    worker's jobs (`open` with `lean`)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        read_timeout: float | None = None,
        lean: RelayPool | None = None,
    ) -> None:
        self.client = client
        self.read_timeout = read_timeout
        self.lean = lean
        # the head httpx would send, by method and headers (see `_lean_head`)
        self._heads: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[Head, int]] = {}

    async def relay(
        self, method: str, path: str, *, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> RelayedAnswer:
        """`send` for the relay's hot path: the same target (`url`, which checks it) and
        headers (the client's `forwarded_headers`; Ollama's own Host), with no read
        timeout, on the lean pool when there is one. The caller reads the body and must
        close the answer. Raises UpstreamError, and httpx.InvalidURL for a bad target."""
        if self.lean is None:
            response = await self.send(
                method, path, body=body or None, headers=httpx.Headers(headers)
            )
            return _HttpxAnswer(response)
        target = self.url(path).raw_path
        try:
            return await self.lean.send(method, target, headers, body)
        except httpx.HTTPError as exc:
            raise _network_error(exc, f"{method} {path}") from None

    @asynccontextmanager
    async def open(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        check: bool = True,
        read_timeout: float | None = None,
        lean: bool = False,
    ) -> AsyncIterator[StreamedAnswer]:
        """A streamed response. With `check`, any status but 2xx raises UpstreamError
        (its body read in full); the response is closed on exit, which aborts the
        request at Ollama if it has not finished. With `lean`, a request with a body goes
        through the lean pool when there is one (the same request, byte for byte)."""
        response: StreamedAnswer
        if lean and self.lean is not None and body:
            response = await self._send_lean(self.lean, method, path, body, headers, read_timeout)
        else:
            response = await self.send(
                method, path, body=body, headers=headers, read_timeout=read_timeout
            )
        try:
            if check and not 200 <= response.status_code < 300:
                try:
                    raw = await response.aread()
                except httpx.HTTPError as exc:
                    raise _network_error(exc, f"{method} {path}") from None
                status = response.status_code
                raise UpstreamError(
                    classify_status(status),
                    error_message(raw, status),
                    status=status,
                    body=raw,
                    headers=response_headers(response.headers),
                    route=path,
                )
            yield response
        finally:
            await response.aclose()

    async def send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> httpx.Response:
        """Send a request and return as soon as the head of the answer arrives; the caller
        reads the body and must close the response. `read_timeout` bounds each silence
        (None: wait as long as it takes)."""
        timeout = httpx.Timeout(
            connect=CONNECT_TIMEOUT, read=read_timeout, write=WRITE_TIMEOUT, pool=None
        )
        request = self.client.build_request(
            method, self.url(path), content=body, headers=headers, timeout=timeout
        )
        try:
            return await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _network_error(exc, f"{method} {path}") from None

    async def _send_lean(
        self,
        pool: RelayPool,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str] | None,
        read_timeout: float | None,
    ) -> _LeanAnswer:
        """`send` on the lean pool: the same target, head and body, the same failures."""
        target = self.url(path).raw_path
        head = self._lean_head(method, headers, len(body))
        try:
            response = await pool.send_head(method, target, head, body, read_timeout)
        except httpx.HTTPError as exc:
            raise _network_error(exc, f"{method} {path}") from None
        return _LeanAnswer(response)

    def _lean_head(self, method: str, headers: Mapping[str, str] | None, length: int) -> Head:
        """The head httpx builds for this request (its own Host, Accept, User-Agent...,
        in its order and case), built by httpx once per method and headers, with this
        body's Content-Length."""
        key = (method, tuple((headers or {}).items()))
        known = self._heads.get(key)
        if known is None:
            request = self.client.build_request(
                method, self.url("/"), content=b"-", headers=headers
            )
            raw = list(request.headers.raw)
            at = next(i for i, (name, _) in enumerate(raw) if name.lower() == b"content-length")
            known = self._heads[key] = (raw, at)
        template, at = known
        head = template.copy()
        head[at] = (template[at][0], str(length).encode())
        return head

    def url(self, path: str) -> httpx.URL:
        """The configured Ollama base URL with `path` (and query) appended.

        `path` is never parsed as a URL of its own: a client's `http://other-host/x` or
        `//other-host/x` would name another host. Raises httpx.InvalidURL for anything
        but a path, and for dot segments, which httpx would resolve (possibly out of the
        base URL's own path)."""
        if not path.startswith("/"):
            raise httpx.InvalidURL(f"not a path: {path[:80]!r}")
        raw = path.encode("utf-8")
        try:
            checked_path(raw.partition(b"?")[0], None)
        except TargetRefused as refused:
            raise httpx.InvalidURL(refused.message) from None
        base = self.client.base_url
        return base.copy_with(raw_path=base.raw_path + raw[1:])

    async def call(
        self, method: str, path: str, payload: Any = None, *, patient: bool = False
    ) -> Any:
        """A small JSON request to Ollama and its decoded answer (for residency calls).

        Bounded by the read timeout unless `patient` (a load, which says nothing until
        the model is in memory)."""
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else None
        read_timeout = None if patient else self.read_timeout
        async with self.open(
            method, path, body=body, headers=headers, read_timeout=read_timeout
        ) as response:
            try:
                raw = await response.aread()
            except httpx.HTTPError as exc:
                raise _network_error(exc, f"{method} {path}") from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    async def load(
        self, model: str, options: dict[str, Any], endpoint: Endpoint, keep_alive: str
    ) -> None:
        """Load a model with its runner options and pin it for `keep_alive`.

        Uses the native route the job's endpoint runs through (an empty chat or prompt),
        so a model that cannot do the other kind of request still loads, and an unknown
        model fails exactly as the job itself would: named as the client named it, so
        Ollama's error text is the one the client would have had. Ollama's answer comes
        back as it is, from the native route: a /v1 client gets it in its own shape from
        the route that answers it.
        """
        payload: dict[str, Any] = {"model": model, "keep_alive": _keep_alive_value(keep_alive)}
        if endpoint.native is Endpoint.CHAT:
            payload["messages"] = []
        if options:
            payload["options"] = options
        await self.call("POST", endpoint.native.value, payload, patient=True)

    async def unload(self, model: str, endpoint: Endpoint) -> None:
        """Ask Ollama to drop a model now (keep_alive 0 with nothing to generate), on the
        native route the endpoint runs through."""
        payload: dict[str, Any] = {"model": model, "keep_alive": 0}
        if endpoint.native is Endpoint.CHAT:
            payload["messages"] = []
        await self.call("POST", endpoint.native.value, payload)

    async def running_models(self) -> list[dict[str, Any]]:
        data = await self.call("GET", "/api/ps")
        models = data.get("models") if isinstance(data, dict) else None
        return [m for m in models or [] if isinstance(m, dict)]

    async def show(self, model: str) -> dict[str, Any]:
        data = await self.call("POST", "/api/show", {"model": model})
        return data if isinstance(data, dict) else {}

    async def probe(self) -> None:
        """Raises UpstreamError unless Ollama answers."""
        await self.call("GET", "/api/version")


def _keep_alive_value(raw: str) -> str | int:
    """Bare integers are seconds in foreman's settings; Ollama wants a number for those."""
    try:
        return int(raw)
    except ValueError:
        return raw


async def read_body(response: StreamedAnswer) -> bytes:
    try:
        return await response.aread()
    except httpx.HTTPError as exc:
        raise _network_error(exc, "reading the answer") from None


async def iter_lines(response: StreamedAnswer) -> AsyncGenerator[bytes, None]:
    """The NDJSON lines of a streamed answer, exactly as sent, each with its newline.

    Each chunk is scanned once from where its last line ended, and a line that spans
    chunks is joined once when its end arrives: no byte is copied twice, however large
    the chunks or the lines. A connection that breaks mid-stream raises a transient
    UpstreamError.
    """
    # the pieces of a line begun in earlier chunks
    parts: list[bytes] = []
    try:
        async for chunk in response.aiter_raw():
            start = 0
            while (cut := chunk.find(b"\n", start)) >= 0:
                if parts:
                    parts.append(chunk[start : cut + 1])
                    line = b"".join(parts)
                    parts.clear()
                else:
                    line = chunk[start : cut + 1]
                yield line
                start = cut + 1
            if start < len(chunk):
                parts.append(chunk[start:] if start else chunk)
    except httpx.HTTPError as exc:
        raise _network_error(exc, "reading the stream") from None
    rest = b"".join(parts)
    if rest.strip():
        yield rest


async def iter_events(response: StreamedAnswer) -> AsyncGenerator[bytes, None]:
    """The Server-Sent Events of a streamed answer, exactly as sent: each event's lines
    with the blank line that ends it.

    An event cut off before its blank line is not an event and is not yielded; a
    connection that breaks mid-stream raises a transient UpstreamError.
    """
    event = b""
    # the caller closes this generator (aclosing), which closes the line reader in turn
    async with aclosing(iter_lines(response)) as lines:
        async for line in lines:
            event += line
            if not line.strip(b"\r\n"):
                yield event  # noqa: ASYNC119
                event = b""
