"""Error bodies foreman writes itself, one builder per route family, and what a client
of a synchronous request sees of a job that failed."""

from __future__ import annotations

import json

from quart import Response

from foreman.answers import Family, openai_error_document
from foreman.api.responses import JSON
from foreman.jobs import Endpoint
from foreman.queue import Ending, Failed, Reply

JSON_HEADERS = (("Content-Type", JSON),)


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


def failure_reply(endpoint: Endpoint, failed: Failed) -> Reply:
    """A failed job's answer to a client that has seen nothing of it yet: Ollama's own
    error answer when it gave one, else foreman's (502, or 503 when shutdown put the job
    back), in the shape of the job's route family."""
    family = Family.of(endpoint)
    upstream = failed.upstream
    if failed.ending is Ending.PUT_BACK or upstream is None:
        status = 503 if failed.ending is Ending.PUT_BACK else 502
        return Reply(
            status, JSON_HEADERS, family.error_body(status, failed.message), failed.queue_ms
        )
    body = upstream.body
    if endpoint.openai and failed.answered_by != endpoint.value:
        # Ollama answered a native call made for the job (its model's load, or the check
        # that Ollama has it): Ollama's /v1 middleware wraps the native handler's error
        # text, status kept, in OpenAI's shape, so the client gets what its own route
        # would have given (both families answer errors as application/json)
        body = family.error_body(upstream.status, failed.message)
    return Reply(upstream.status, upstream.headers, body, failed.queue_ms)


def failure_line(endpoint: Endpoint, failed: Failed) -> bytes:
    """A failed job's last part for a client already reading its stream: Ollama's own
    in-band error line (or event) when it sent one, else one in the family's framing."""
    return failed.line or Family.of(endpoint).stream_error(failed.message)
