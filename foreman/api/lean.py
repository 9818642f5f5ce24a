"""The lean path: embeddings and the plain relayed routes served below the web framework.

An ASGI wrapper in front of the Quart app (behind the request-target check and the access
log). It answers the routes where foreman only relays, embeddings (/api/embed,
/api/embeddings, /v1/embeddings) always and the read-only relayed routes (/, version,
status, tags, ps, show, /v1/models) when there is one upstream, without building
the framework's request, response and handler tasks for them: those cost several times
what the relay itself does. It keeps every check the app makes on those routes: the key
and its scope (`auth.decide`), the body limit (413) and its deadline (408), the target
(checked before this wrapper sees it), and errors in the route family's shape. Every
other request, and every method those routes do not take, goes on to the app.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import attrs
import httpx
import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from werkzeug.exceptions import RequestTimeout

from foreman import choose
from foreman.answers import Family
from foreman.api import fleet_relay
from foreman.api.auth import ACCESS_INFO, Refusal, decide
from foreman.api.proxy import EMBEDDING_ROUTES, model_of, named
from foreman.api.responses import JSON
from foreman.api.services import Services
from foreman.fleet import Member
from foreman.residency import normalise_model
from foreman.retry import FailureKind
from foreman.upstream import (
    RelayedAnswer,
    Upstream,
    UpstreamError,
    forwarded_headers,
    relayed_headers,
)

log = logging.getLogger("foreman.api")

ASGIApp = Any
# how long a client may take to send its body, as the app allows (408 after)
BODY_TIMEOUT = 120.0
# the read-only routes answered from the one upstream of a fleet of one
PLAIN = frozenset(
    {
        fleet_relay.any_upstream,
        fleet_relay.tags,
        fleet_relay.loaded,
        fleet_relay.show,
        fleet_relay.openai_models,
        fleet_relay.openai_model,
    }
)
Head = list[tuple[bytes, bytes]]


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


@attrs.frozen
class Answer:
    """An answer read whole: status, headers as sent, body; `length` overrides the
    Content-Length (the answer to a HEAD declares the length of what it does not send)."""

    status: int
    headers: Head
    body: bytes
    length: int | None = None


def _error(path: str, status: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    """An error foreman writes itself, in the shape of `path`'s route family."""
    head: Head = [(b"content-type", JSON.encode())]
    for name, value in (headers or {}).items():
        head.append((name.lower().encode(), value.encode("latin-1")))
    return Answer(status, head, Family.of(path).error_body(status, message))


async def send_answer(send: ASGISendCallable, answer: Answer) -> None:
    """Write a whole answer: one head and one body event, framed with its length."""
    headers = list(answer.headers)
    if answer.status >= 200 and answer.status not in (204, 304):
        length = len(answer.body) if answer.length is None else answer.length
        headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    """The first value of header `name` (lowercase), as the app reads it (latin-1)."""
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def read_body(scope: dict[str, Any], receive: ASGIReceiveCallable, limit: int) -> bytes:
    """The request body, whole. Raises _TooLarge past `limit` bytes (declared or sent),
    trio.TooSlowError past BODY_TIMEOUT, _ClientGone when the client leaves first."""
    declared = _header(scope, b"content-length")
    try:
        if declared is not None and int(declared) > limit:
            raise _TooLarge
    except ValueError:
        pass
    parts: list[bytes] = []
    size = 0
    with trio.fail_after(BODY_TIMEOUT):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            if message["type"] != "http.request":
                continue
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)


Handler = Callable[["Exchange"], Awaitable["Answer | None"]]


@attrs.define
class Exchange:
    """One request on the lean path: what it asked, and how to answer it."""

    services: Services
    scope: dict[str, Any]
    send: ASGISendCallable
    body: bytes = b""
    started: bool = False

    @property
    def path(self) -> str:
        return cast(str, self.scope["path"])

    @property
    def method(self) -> str:
        return cast(str, self.scope["method"])

    def target(self) -> str:
        """The target as the client sent it (still percent-encoded, checked before
        routing), with its query: as `proxy.relay_target` gives it."""
        raw = self.scope.get("raw_path") or self.path.encode()
        target = bytes(raw).decode("latin-1")
        query = self.scope.get("query_string") or b""
        if query:
            target += "?" + bytes(query).decode("latin-1")
        return target

    async def ask(self, upstream: Upstream) -> RelayedAnswer:
        """Send the request to `upstream` (on its lean pool): the answer's head. Raises
        UpstreamError and httpx.InvalidURL as `Upstream.relay` does."""
        return await upstream.relay(
            self.method,
            self.target(),
            body=self.body,
            headers=forwarded_headers(self.scope.get("headers") or ()),
        )

    def error(self, status: int, message: str) -> Answer:
        return _error(self.path, status, message)


class LeanRelay:
    """Serves the lean routes itself and hands every other request to `app`."""

    def __init__(self, services: Services, app: ASGIApp, routes: Any) -> None:
        self.services = services
        self.app = app
        # (path, method) -> handler; paths ending in "/" take one more segment or more
        self._exact: dict[tuple[str, str], Handler] = {}
        self._prefixed: list[tuple[str, str, Handler]] = []
        for rule, methods, handler in routes:
            lean = self._lean_handler(handler)
            if lean is None:
                continue
            prefix, variable, _ = rule.partition("<")
            for method in methods:
                if variable:
                    self._prefixed.append((prefix, method, lean))
                else:
                    self._exact[(rule, method)] = lean

    @staticmethod
    def _lean_handler(handler: Any) -> Handler | None:
        if handler is embedding_route:
            return _embedding
        if handler in PLAIN:
            return _plain
        return None

    def _handler(self, method: str, path: str) -> Handler | None:
        found = self._exact.get((path, method))
        if found is not None:
            return found
        for prefix, wanted, handler in self._prefixed:
            # werkzeug's `path` converter: one character or more, the first not a slash
            if (
                method == wanted
                and path.startswith(prefix)
                and path[len(prefix) : len(prefix) + 1] not in ("", "/")
            ):
                return handler
        return None

    async def __call__(
        self, asgi_scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        handler = None
        if asgi_scope["type"] == "http":
            handler = self._handler(asgi_scope["method"], asgi_scope["path"])
        if handler is _plain and len(self.services.fleet) != 1:
            # several upstreams: the app chooses or gathers (`fleet_relay`)
            handler = None
        if handler is None:
            await self.app(asgi_scope, receive, send)
            return
        exchange = Exchange(self.services, cast(dict[str, Any], asgi_scope), send)
        try:
            answer = await self._serve(exchange, handler, receive)
        except Exception:
            log.exception("unexpected error answering a request")
            if exchange.started:
                raise
            answer = exchange.error(500, "internal error in foreman")
        if answer is not None:
            await send_answer(send, answer)

    async def _serve(
        self, exchange: Exchange, handler: Handler, receive: ASGIReceiveCallable
    ) -> Answer | None:
        services = self.services
        scope = exchange.scope
        path = exchange.path
        decided = decide(
            services,
            exchange.method,
            path,
            _header(scope, b"authorization"),
            _header(scope, b"x-service-key"),
        )
        key = decided.key if isinstance(decided, Refusal) else decided
        if key is not None:
            info = (scope.get("extensions") or {}).get(ACCESS_INFO)
            if isinstance(info, dict):
                info["key"] = key.name
        if isinstance(decided, Refusal):
            return _error(path, decided.status, decided.message, decided.headers)
        limit = services.settings.max_body
        try:
            exchange.body = await read_body(scope, receive, limit)
        except _TooLarge:
            services.metrics.reject("too_large")
            return exchange.error(413, f"request body is larger than {limit} bytes")
        except trio.TooSlowError:
            return exchange.error(408, RequestTimeout.description or "request timeout")
        except _ClientGone:
            return None
        answer: Answer | None = None
        # a client that hangs up cancels the relay (and with it the upstream request)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            answer = await handler(exchange)
            if answer is not None:
                await send_answer(exchange.send, answer)
                answer = None
            nursery.cancel_scope.cancel()
        return answer


async def _cancel_on_disconnect(receive: ASGIReceiveCallable, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def embedding_route(services: Services) -> Any:
    """The app's own entry for the embedding routes: it only answers their other methods
    (405); a POST is served by `LeanRelay` before the app sees it."""
    raise RuntimeError("an embedding request reached the app past the lean path")


async def _plain(exchange: Exchange) -> Answer | None:
    """A read-only route with one upstream: relayed as it came (`proxy.passthrough`)."""
    services = exchange.services
    upstream = services.fleet.members[0].relay
    try:
        response = await exchange.ask(upstream)
    except httpx.InvalidURL:
        return exchange.error(400, "the request path is not a valid URL path")
    except UpstreamError as err:
        services.metrics.upstream_error(err.metric_kind)
        return exchange.error(502, str(err))
    if exchange.method == "HEAD" or response.header(b"content-length") is not None:
        try:
            data = await response.aread()
        except httpx.HTTPError as exc:
            services.metrics.upstream_error("transient")
            return exchange.error(502, f"connection to ollama failed: {exc!r}")
        finally:
            await response.aclose()
        length = _declared_length(response) if exchange.method == "HEAD" else None
        return Answer(response.status_code, relayed_headers(response.headers), data, length)
    await _relay_chunks(exchange, response)
    return None


async def _relay_chunks(exchange: Exchange, response: RelayedAnswer) -> None:
    """An answer without a length, chunk by chunk as it comes; a connection that breaks
    ends the answer where it broke, as the app's relay does."""
    send = exchange.send
    try:
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": relayed_headers(response.headers),
            }
        )
        exchange.started = True
        try:
            async for chunk in response.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError:
            pass
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        with trio.CancelScope(shield=True):
            await response.aclose()


def _declared_length(response: RelayedAnswer) -> int | None:
    try:
        return int(response.header(b"content-length") or b"")
    except ValueError:
        return None


async def _embedding(exchange: Exchange) -> Answer:
    """/api/embed, /api/embeddings, /v1/embeddings: past the queue, to the upstream
    `choose.for_embedding` names; when it cannot be reached, once more on another."""
    started = trio.current_time()
    services = exchange.services
    fleet = services.fleet
    metrics = services.metrics
    model = model_of(exchange.body)
    key = normalise_model(model) if model is not None else None
    member = choose.for_embedding(fleet, key)
    if member is None:
        return exchange.error(502, f"no upstream is up ({choose.names(fleet)})")
    label = member.name if len(fleet) > 1 else None
    try:
        return await _embed_on(exchange, member, started, key, label)
    except httpx.InvalidURL:
        return exchange.error(400, "the request path is not a valid URL path")
    except UpstreamError as err:
        metrics.upstream_error(err.metric_kind)
        failed = err
    if failed.kind is FailureKind.OUTAGE:
        other = choose.for_embedding(fleet, key, avoid=member)
        if other is not None:
            try:
                return await _embed_on(exchange, other, started, key, other.name)
            except UpstreamError as err:
                metrics.upstream_error(err.metric_kind)
                message = f"{named(label, str(failed))}; {named(other.name, str(err))}"
                return exchange.error(502, message)
    return exchange.error(502, named(label, str(failed)))


async def _embed_on(
    exchange: Exchange, member: Member, started: float, key: str | None, label: str | None
) -> Answer:
    """Relay the embedding request to `member` and read its answer whole (one JSON
    document, however Ollama framed it), counted in its embeddings in flight until
    then; a 2xx answer records that the model `key` is loaded there. Raises
    UpstreamError when the request cannot be sent."""
    services = exchange.services
    metrics = services.metrics
    member.embeddings_in_flight += 1
    try:
        response = await exchange.ask(member.relay)
        try:
            data = await response.aread()
        except httpx.HTTPError as exc:
            metrics.upstream_error("transient")
            return exchange.error(502, named(label, f"connection to ollama failed: {exc!r}"))
        finally:
            await response.aclose()
    finally:
        member.embeddings_in_flight -= 1
    status = response.status_code
    if exchange.path in EMBEDDING_ROUTES:
        metrics.embedding(exchange.path, status, trio.current_time() - started)
    if status < 300 and key is not None:
        member.embedding_models[key] = trio.current_time()
        services.board.embedding_used(key)
    length = _declared_length(response) if exchange.method == "HEAD" else None
    return Answer(status, relayed_headers(response.headers), data, length)
