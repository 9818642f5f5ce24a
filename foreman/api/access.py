"""The access log: one line per request with its status and duration.

An ASGI wrapper around the app, so the duration covers the whole answer, streams
included, and a request the client abandoned is logged too. It logs the method, the
path (never the query string), the status, the bytes sent, the duration, the client's
address and the name of the API key used; never a key, a header's value or a body.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope

from foreman.api.auth import ACCESS_INFO

log = logging.getLogger("foreman.access")


class AccessLog:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(
        self, asgi_scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if asgi_scope["type"] != "http":
            await self.app(asgi_scope, receive, send)
            return
        info: dict[str, Any] = {}
        scope = cast(dict[str, Any], dict(asgi_scope))
        scope["extensions"] = {**(scope.get("extensions") or {}), ACCESS_INFO: info}
        started = trio.current_time()
        status = 0
        sent = 0
        outcome = ""

        async def watch(message: ASGISendEvent) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except BaseException:
            outcome = " (aborted)"
            raise
        finally:
            client = scope.get("client") or ("-", 0)
            job = info.get("job")
            log.info(
                "%s %s %s %d %dB %.1fms client=%s key=%s%s%s",
                scope.get("method", "-"),
                scope.get("path", "-"),
                f"HTTP/{scope.get('http_version', '1.1')}",
                status,
                sent,
                (trio.current_time() - started) * 1000,
                client[0],
                info.get("key", "-"),
                f" job {job}" if job else "",
                outcome,
                extra={"job_id": job} if job else None,
            )
