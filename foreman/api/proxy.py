"""Passes a request straight through to Ollama and its answer straight back (no queue)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import httpx
import trio
from quart import Blueprint, Response, request

from foreman.api.errors import error_for
from foreman.api.responses import build_response, request_body
from foreman.api.services import Services
from foreman.metrics import Metrics
from foreman.residency import normalise_model
from foreman.upstream import Upstream, UpstreamError, request_headers, response_headers

EMBEDDING_ROUTES = frozenset({"/api/embed", "/api/embeddings", "/v1/embeddings"})
# a rule's variable parts, `<digest>` or `<path:model>`, in the name of its endpoint
_RULE_VARIABLE = re.compile(r"<(?:[^:>]*:)?([^>]*)>")


async def passthrough(
    upstream: Upstream,
    path: str | None = None,
    metrics: Metrics | None = None,
    on_embedding: Callable[[str], None] | None = None,
    *,
    label: str | None = None,
) -> Response:
    """Pass the current request to Ollama byte for byte, and its answer back as it came.

    A body with a length is read whole; anything else (pull progress, streams) is relayed
    chunk by chunk as it arrives, and closing the client closes the upstream request.
    `on_embedding` hears the model of each embedding request Ollama answered. `label`
    names the upstream in foreman's own errors (one of several).
    """
    started = trio.current_time()
    body = await request_body()
    try:
        response = await send_current(upstream, body, path)
    except httpx.InvalidURL:
        return error_for(request.path, 400, "the request path is not a valid URL path")
    except UpstreamError as err:
        if metrics is not None:
            metrics.upstream_error(err.metric_kind)
        return error_for(request.path, 502, named(label, str(err)))
    embedding = on_embedding is not None and request.path in EMBEDDING_ROUTES
    model = model_of(body) if embedding else None
    return await relay_answer(response, started, metrics, model, on_embedding, label=label)


def named(label: str | None, message: str) -> str:
    """`message` about the upstream `label` (None: the only one, named by no one)."""
    return message if label is None else f"upstream {label}: {message}"


def relay_target(path: str | None = None) -> str:
    """The target to ask Ollama for: `path`, or the path as the client sent it, still
    percent-encoded (decoded, a tab or NUL in it made httpx raise, a 500), and checked
    before routing (`request_target`): no other host, no dot segments, no encoded
    slashes, so it names the route foreman authorised. The query goes on as it came."""
    raw_path = request.scope.get("raw_path") or request.path.encode()
    target = path or raw_path.decode("latin-1")
    if request.query_string:
        target += "?" + request.query_string.decode("latin-1")
    return target


async def send_current(upstream: Upstream, body: bytes, path: str | None = None) -> httpx.Response:
    """Send the current request (method, target, the client's headers that may go on) with
    `body` to `upstream`; the answer's head. Raises UpstreamError when it cannot be sent
    and httpx.InvalidURL for a target that is not a path."""
    return await upstream.send(
        request.method,
        relay_target(path),
        body=body or None,
        headers=request_headers(request.scope.get("headers") or ()),
    )


async def relay_answer(
    response: httpx.Response,
    started: float,
    metrics: Metrics | None,
    model: str | None = None,
    on_embedding: Callable[[str], None] | None = None,
    *,
    label: str | None = None,
) -> Response:
    """Ollama's answer to the client as it came: read whole when it has a length (an
    embedding's counted in the metrics, and `on_embedding` told the normalised `model` it
    named when Ollama answered 2xx), relayed chunk by chunk otherwise."""
    headers = response_headers(response.headers)
    if request.method == "HEAD" or "content-length" in response.headers:
        try:
            data = await response.aread()
        except httpx.HTTPError as exc:
            if metrics is not None:
                metrics.upstream_error("transient")
            message = f"connection to ollama failed: {exc!r}"
            return error_for(request.path, 502, named(label, message))
        finally:
            await response.aclose()
        if request.path in EMBEDDING_ROUTES:
            if metrics is not None:
                seconds = trio.current_time() - started
                metrics.embedding(request.path, response.status_code, seconds)
            if on_embedding is not None and response.status_code < 300 and model is not None:
                on_embedding(normalise_model(model))
        length = declared_length(response) if request.method == "HEAD" else None
        return build_response(data, response.status_code, headers, length=length)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except httpx.HTTPError:
            return
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()

    return build_response(chunks(), response.status_code, headers)


async def passthrough_for(services: Services) -> Response:
    """`passthrough` to the one upstream of a fleet of one, as the Ollama and /v1 routes
    that bypass the queue use it: embeddings counted in the metrics, and the embedding
    model used shown on the dashboard."""
    return await passthrough(
        services.fleet.members[0].relay,
        metrics=services.metrics,
        on_embedding=services.board.embedding_used,
    )


Relayed = Callable[[Services], Awaitable[Response]]


def register_relayed(
    bp: Blueprint, services: Services, routes: Iterable[tuple[str, tuple[str, ...], Relayed]]
) -> None:
    """Add each (rule, methods, handler) of `routes` to `bp`: a route that bypasses the
    queue, answered by `handler` (which chooses the upstream, see `fleet_relay`)."""
    for rule, methods, handler in routes:
        name = _RULE_VARIABLE.sub(r"\1", rule.strip("/") or "root").replace("/", "_")
        bp.add_url_rule(
            rule, "passthrough_" + name, _route(services, handler), methods=list(methods)
        )


def _route(services: Services, handler: Relayed) -> Callable[..., Awaitable[Response]]:
    async def route(**_: str) -> Response:
        return await handler(services)

    return route


def model_of(body: bytes) -> str | None:
    """The model a relayed request named (to choose an upstream, and for the dashboard);
    None when the body does not say. Nothing here may fail the request (a body nested
    past the parser's recursion limit made it a 500)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) and model.strip() else None


# its earlier, private name
_model_of = model_of


def declared_length(response: httpx.Response) -> int | None:
    """The Content-Length Ollama declared (the answer to a HEAD has no body to count)."""
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None
