"""Checks every request's target before the app routes or authorises it (`target.py`).

An ASGI wrapper around the app's own `asgi_app`, so no route, hook or error handler sees a
target that was not checked. An accepted absolute-form target is rewritten to its path, so
the path the app routes and authorises on is the path the relay sends to Ollama. A refusal
is a 400 in the route family's error shape.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import unquote

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

from foreman.answers import Family
from foreman.api.responses import JSON
from foreman.target import TargetRefused, checked_path

ASGIApp = Any


class TargetCheck:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self, asgi_scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if asgi_scope["type"] != "http":
            await self.app(asgi_scope, receive, send)
            return
        scope = cast(dict[str, Any], asgi_scope)
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        try:
            path = checked_path(raw, _host(scope))
        except TargetRefused as refused:
            await _refuse(send, refused)
            return
        if path != raw:
            scope = {**scope, "raw_path": path, "path": unquote(path.decode("latin-1"))}
        await self.app(scope, receive, send)


def _host(scope: dict[str, Any]) -> bytes | None:
    for name, value in scope.get("headers") or ():
        if name.lower() == b"host":
            return bytes(value)
    return None


async def _refuse(send: ASGISendCallable, refused: TargetRefused) -> None:
    body = Family.of(refused.path).error_body(400, refused.message)
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
            "trailers": False,
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
