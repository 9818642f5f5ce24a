"""Relays a request straight to Ollama and its answer straight back (no queue)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import httpx
import trio
from quart import Response, request

from foreman.api.errors import error_for
from foreman.metrics import Metrics
from foreman.residency import normalise_model
from foreman.upstream import Upstream, UpstreamError, request_headers, response_headers

if TYPE_CHECKING:
    from foreman.api.app import Services

EMBEDDING_ROUTES = frozenset({"/api/embed", "/api/embeddings", "/v1/embeddings"})


async def request_body() -> bytes:
    """The raw request body, exactly as the client sent it."""
    data = await request.get_data(cache=True, as_text=False, parse_form_data=False)
    return data


async def relay(
    upstream: Upstream,
    path: str | None = None,
    metrics: Metrics | None = None,
    on_embedding: Callable[[str], None] | None = None,
) -> Response:
    """Pass the current request to Ollama byte for byte, and its answer back as it came.

    A body with a length is read whole; anything else (pull progress, streams) is relayed
    chunk by chunk as it arrives, and closing the client closes the upstream request.
    `on_embedding` hears the model of each embedding request Ollama answered.
    """
    started = trio.current_time()
    body = await request_body()
    # the path as the client sent it, still percent-encoded (decoded, a tab or NUL in it
    # made httpx raise, a 500), and checked before routing (`request_target`): no other
    # host, no dot segments, no encoded slashes, so it names the route foreman authorised
    raw_path = request.scope.get("raw_path") or request.path.encode()
    target = path or raw_path.decode("latin-1")
    if request.query_string:
        target += "?" + request.query_string.decode("latin-1")
    try:
        response = await upstream.send(
            request.method,
            target,
            body=body or None,
            headers=request_headers(request.scope.get("headers") or ()),
        )
    except httpx.InvalidURL:
        return error_for(request.path, 400, "the request path is not a valid URL path")
    except UpstreamError as err:
        if metrics is not None:
            metrics.upstream_error(err.metric_kind)
        return error_for(request.path, 502, str(err))
    headers = response_headers(response.headers)
    if request.method == "HEAD" or "content-length" in response.headers:
        try:
            data = await response.aread()
        except httpx.HTTPError as exc:
            if metrics is not None:
                metrics.upstream_error("transient")
            return error_for(request.path, 502, f"connection to ollama failed: {exc!r}")
        finally:
            await response.aclose()
        if request.path in EMBEDDING_ROUTES:
            if metrics is not None:
                seconds = trio.current_time() - started
                metrics.embedding(request.path, response.status_code, seconds)
            model = _model_of(body)
            if on_embedding is not None and response.status_code < 300 and model is not None:
                on_embedding(normalise_model(model))
        length = _declared_length(response) if request.method == "HEAD" else None
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


async def relay_for(services: Services) -> Response:
    """`relay` as the Ollama and /v1 routes that bypass the queue use it: embeddings
    counted in the metrics, and the embedding model used shown on the dashboard."""
    board = services.board
    return await relay(
        services.upstream,
        metrics=services.metrics,
        on_embedding=board.embedding_used if board is not None else None,
    )


def _model_of(body: bytes) -> str | None:
    """The model an embedding request named, for the dashboard; None when the body does
    not say. Ollama has answered by now: nothing here may fail the request (a body
    nested past the parser's recursion limit made it a 500)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) and model.strip() else None


def _declared_length(response: httpx.Response) -> int | None:
    """The Content-Length Ollama declared (the answer to a HEAD has no body to count)."""
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None


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
