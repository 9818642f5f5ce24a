"""The route table and the life of one Ollama request.

Every request under / (except /_stub/) is recorded on arrival, checked for an allowed Host,
matched against the fault switches, then dispatched; the record entry is closed whatever
happens, including the client going away. Errors are rendered here in the route family's shape.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from . import embeddings, inference, models_api, openai
from .call import JSON, TEXT, Call, HttpError
from .catalogue import normalise_name
from .durations import is_zero_keep_alive
from .faults import FaultKind
from .http import Exchange
from .shapes import dumps
from .state import StubState
from .streams import StreamEnded

log = logging.getLogger("foreman.stub")

Route = Callable[[Call], Awaitable[None]]

ROUTES: dict[str, dict[str, Route]] = {
    "/": {"GET": models_api.root, "HEAD": models_api.root},
    "/api/version": {"GET": models_api.version, "HEAD": models_api.version},
    "/api/status": {"GET": models_api.status},
    "/api/tags": {"GET": models_api.tags, "HEAD": models_api.tags},
    "/api/ps": {"GET": models_api.ps},
    "/api/show": {"POST": models_api.show},
    "/api/generate": {"POST": inference.generate},
    "/api/chat": {"POST": inference.chat},
    "/api/embed": {"POST": embeddings.embed},
    "/api/embeddings": {"POST": embeddings.embeddings},
    "/api/pull": {"POST": models_api.pull},
    "/api/push": {"POST": models_api.push},
    "/api/create": {"POST": models_api.create},
    "/api/copy": {"POST": models_api.copy},
    "/api/delete": {"DELETE": models_api.delete},
    "/v1/chat/completions": {"POST": openai.chat_completions},
    "/v1/completions": {"POST": openai.completions},
    "/v1/embeddings": {"POST": openai.embeddings},
    "/v1/models": {"GET": openai.list_models},
}
PREFIX_ROUTES: dict[str, dict[str, Route]] = {
    "/v1/models/": {"GET": openai.retrieve_model},
    "/api/blobs/": {"HEAD": models_api.blob_head, "POST": models_api.blob_upload},
}

_KINDS = {
    "/": "root",
    "/api/version": "version",
    "/api/status": "status",
    "/api/tags": "tags",
    "/api/ps": "ps",
    "/api/show": "show",
    "/api/embed": "embed",
    "/api/embeddings": "embeddings",
    "/api/pull": "pull",
    "/api/push": "push",
    "/api/create": "create",
    "/api/copy": "copy",
    "/api/delete": "delete",
    "/v1/chat/completions": "v1-chat",
    "/v1/completions": "v1-completions",
    "/v1/embeddings": "v1-embeddings",
    "/v1/models": "v1-models",
}
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def find_route(path: str) -> dict[str, Route] | None:
    route = ROUTES.get(path)
    if route is not None:
        return route
    for prefix, methods in PREFIX_ROUTES.items():
        if path.startswith(prefix) and len(path) > len(prefix):
            return methods
    return None


def peek_json(body: bytes) -> Any:
    """The body as JSON for the record and for classification; None if it is not JSON."""
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def classify(path: str, body: Any) -> tuple[str, str | None]:
    """The record's kind and normalised model for a request, before any validation."""
    fields: Mapping[str, Any] = body if isinstance(body, dict) else {}
    model = fields.get("model") or fields.get("name")
    if path == "/api/copy":
        model = fields.get("source")
    if path.startswith("/v1/models/"):
        return "v1-model", normalise_name(path[len("/v1/models/") :])
    if path.startswith("/api/blobs/"):
        return "blob", None
    name = normalise_name(model) if isinstance(model, str) and model else None
    content: object = None
    if path == "/api/chat":
        content = fields.get("messages")
    elif path == "/api/generate":
        content = fields.get("prompt")
    elif path in ("/api/embed", "/api/embeddings"):
        if fields.get("input") or fields.get("prompt"):
            return path.rsplit("/", 1)[-1], name
        return "load", name
    elif path == "/v1/completions" and not fields.get("prompt"):
        return "load", name
    else:
        return _KINDS.get(path, "unknown"), name
    if content:
        return path.rsplit("/", 1)[-1], name
    return ("unload" if is_zero_keep_alive(fields.get("keep_alive")) else "load"), name


@functools.cache
def _hostname() -> str:
    return socket.gethostname().lower()


def host_allowed(host: str | None) -> bool:
    """Ollama's rule when it listens on loopback: only local-looking Host headers get in."""
    if not host:
        return True
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name in ("localhost", _hostname()) or name.endswith(_LOCAL_SUFFIXES):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_unspecified


async def send_error(call: Call, error: HttpError) -> None:
    if call.family == "openai":
        await openai.send_error(call, error)
    else:
        body = dumps({"error": error.message})
        await call.exchange.respond(error.status, body, JSON)


async def serve_request(state: StubState, exchange: Exchange, loopback: bool) -> None:
    """Record, screen, fault and dispatch one Ollama request."""
    request = exchange.request
    body = peek_json(request.body)
    kind, model = classify(request.path, body)
    entry = state.recorder.begin(request.method, request.path, kind, model, trio.current_time())
    entry.connection = exchange.conn.ident
    entry.target = request.target
    entry.headers = list(request.headers)
    entry.body = body if body is not None else (request.body.decode("utf-8", "replace") or None)
    if isinstance(body, dict):
        entry.keep_alive = body.get("keep_alive")
    family = "openai" if request.path.startswith("/v1/") else "native"
    call = Call(state, exchange, entry, family)
    try:
        if loopback and state.config.check_host and not host_allowed(request.header("host")):
            await exchange.respond(403)
            return
        fault = state.faults.take(request.path, model, kind)
        if fault is not None:
            entry.fault = fault.kind.value
            if fault.kind is FaultKind.RESET:
                exchange.abort(rst=True)
            if fault.kind is FaultKind.HANG:
                await trio.sleep_forever()
            if fault.kind is FaultKind.STATUS:
                await send_error(call, HttpError(fault.status, fault.text))
                return
            call.fault = fault
        await _dispatch(call)
    finally:
        entry.status = exchange.status
        entry.cancelled = exchange.client_gone and not exchange.finished
        if exchange.conn.dropped and entry.fault is None:
            entry.fault = "down"
        state.recorder.finish(entry, trio.current_time())
        log.info(
            "%s %s model=%s status=%s %.3fs%s%s",
            request.method,
            request.path,
            model or "-",
            exchange.status if exchange.status is not None else "-",
            (entry.end or entry.arrival) - entry.arrival,
            f" fault={entry.fault}" if entry.fault else "",
            " cancelled" if entry.cancelled else "",
        )


async def _dispatch(call: Call) -> None:
    request = call.exchange.request
    methods = find_route(request.path)
    if methods is None:
        await call.exchange.respond(404, b"404 page not found", TEXT)
        return
    handler = methods.get(request.method)
    if handler is None:
        allow = ", ".join(sorted(methods))
        await call.exchange.respond(405, b"405 method not allowed", TEXT, [("allow", allow)])
        return
    try:
        await handler(call)
    except HttpError as error:
        if not call.exchange.started:
            await send_error(call, error)
    except StreamEnded:
        pass
