"""Error bodies foreman writes itself, one builder per route family."""

from __future__ import annotations

import json

from quart import Response

from foreman.answers import Family, openai_error_document
from foreman.api.responses import JSON


def ollama_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Ollama's shape: {"error": "..."} with a meaningful status."""
    return Response(
        Family.OLLAMA.error_body(status, message), status=status, content_type=JSON, headers=headers
    )


def openai_error(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
) -> Response:
    """OpenAI's shape, as Ollama's /v1 routes answer:
    {"error": {"message", "type", "param", "code"}}, typed by status."""
    body = json.dumps(openai_error_document(status, message, param=param, code=code))
    return Response(body, status=status, content_type=JSON, headers=headers)


def error_for(
    path: str, status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    """An error in the shape of the route family `path` belongs to."""
    if Family.of(path) is Family.OPENAI:
        return openai_error(status, message, headers)
    return ollama_error(status, message, headers)


def http_error(path: str, status: int, message: str) -> Response:
    """The answer to a routing or protocol error (404, 405, 413, ...) on `path`. A native
    404 is gin's plain text, as Ollama answers an unknown route."""
    if status == 404 and Family.of(path) is Family.OLLAMA:
        return Response("404 page not found", status=404, content_type="text/plain")
    return error_for(path, status, message)
