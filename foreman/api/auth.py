"""Who is calling: checks the API key of every request before its route runs.

Runs as a `before_request` hook, so a caller without a key never gets to send a body.
Which scope a route needs is `keys.required_scopes` (one table); the answer to a refused
request takes the route family's error shape. /metrics also accepts its own token.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from quart import Response, g, request

from foreman.api.errors import error_for
from foreman.api.services import Services
from foreman.keys import ApiKey, Scope, presented_key, required_scopes, same_secret

# the access log's notes on a request (key name, job id), in the ASGI scope's extensions
ACCESS_INFO = "foreman.access"


def caller() -> ApiKey | None:
    """The key the current request authenticated with (None: keys are off)."""
    key: ApiKey | None = g.get("api_key")
    return key


def owner_filter() -> str | None:
    """The key name whose jobs alone the caller may see, or None for every job (keys
    off, or an admin key)."""
    key = caller()
    if key is None or key.admin:
        return None
    return key.name


def key_check(services: Services) -> Callable[[], bool]:
    """For a long-lived answer (an event stream): a function that says whether the key
    the request came with still stands, so a revoked key or a changed scope ends the
    stream when the keys are reloaded (each reload wakes every open stream), or at its
    next event or keep-alive (the client reconnects and is asked again)."""
    key = caller()
    keys = services.keys

    def still_valid() -> bool:
        ring = keys.ring
        if key is None:
            return not ring.enabled
        return key in ring.keys

    return still_valid


def note(**fields: str) -> None:
    """Tell the access log something about the current request (never a secret)."""
    extensions = request.scope.get("extensions") or {}
    info = extensions.get(ACCESS_INFO)
    if isinstance(info, dict):
        info.update(fields)


def _matches(secret: str | None, presented: str | None) -> bool:
    return secret is not None and presented is not None and same_secret(secret, presented)


@attrs.frozen
class Refusal:
    """Why a request may not go on: its status, message and headers (401 or 403)."""

    status: int
    message: str
    headers: dict[str, str] | None = None
    # the key that was presented, when it was known but may not call the route
    key: ApiKey | None = None


def decide(
    services: Services,
    method: str,
    path: str,
    authorization: str | None,
    service_key: str | None,
) -> ApiKey | Refusal | None:
    """The key a request to `method path` authenticated with (None: it needs none, or
    keys are off), or its refusal (counted in the metrics). The one decision both the
    app's hook and the lean path (`lean.py`) take, from the request's first
    `Authorization` and `X-Service-Key` headers."""
    needed = required_scopes(method, path)
    if needed is None:
        return None
    ring = services.keys.ring
    token = services.settings.metrics_token
    if not ring.enabled and (path != "/metrics" or token is None):
        return None
    presented = presented_key(authorization, service_key)
    if path == "/metrics" and _matches(token, presented):
        return None
    key = ring.authenticate(presented)
    if key is None:
        services.metrics.reject("unauthorized")
        message = "missing API key" if presented is None else "unknown API key"
        return Refusal(401, message, {"WWW-Authenticate": 'Bearer realm="foreman"'})
    if not key.allows(needed):
        services.metrics.reject("forbidden")
        scopes = " or ".join(sorted(s.value for s in needed if s is not Scope.ADMIN) or ["admin"])
        message = f"key {key.name!r} may not call {method} {path} (needs {scopes})"
        return Refusal(403, message, key=key)
    return key


async def authorise(services: Services) -> Response | None:
    """None to let the request through; otherwise the 401 or 403 to answer with."""
    g.api_key = None
    path = request.path
    headers = request.headers
    decided = decide(
        services, request.method, path, headers.get("Authorization"), headers.get("X-Service-Key")
    )
    if isinstance(decided, Refusal):
        if decided.key is not None:
            g.api_key = decided.key
            note(key=decided.key.name)
        return error_for(path, decided.status, decided.message, decided.headers)
    if decided is not None:
        g.api_key = decided
        note(key=decided.name)
    return None
