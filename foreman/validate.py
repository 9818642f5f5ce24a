"""Checks a request must pass before it becomes a job. Pure.

Only what foreman itself depends on is checked (a JSON object, a model name, the shapes
that decide streaming and residency); everything else is Ollama's to judge, and its
answer reaches the client unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from foreman.jobs import Endpoint
from foreman.residency import residency_key


class InvalidRequest(ValueError):
    """The request cannot be queued; the message is shown to the client."""


@attrs.frozen
class InferenceRequest:
    endpoint: Endpoint
    model: str
    model_key: str
    stream: bool
    body: dict[str, Any]


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise InvalidRequest("missing request body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("request body is not valid UTF-8") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        # json.loads gives up on nesting deeper than Python's recursion limit
        raise InvalidRequest("request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data


def inference_request(endpoint: Endpoint, raw: bytes) -> InferenceRequest:
    """Validate a chat or generate body for `endpoint`, whichever family it belongs to."""
    if endpoint.openai:
        return _openai_request(endpoint, raw)
    return _native_request(endpoint, raw)


def _model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model is required (a non-empty string)")
    return model


def _stream(data: dict[str, Any], default: bool) -> bool:
    """`stream` as a boolean; absent or null means the family's default."""
    stream = data.get("stream")
    if stream is None:
        return default
    if not isinstance(stream, bool):
        raise InvalidRequest("stream must be true or false")
    return stream


def _messages(data: dict[str, Any], *, required: bool) -> None:
    messages = data.get("messages")
    if messages is None and not required:
        return
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("messages must be a list of objects")


def _native_request(endpoint: Endpoint, raw: bytes) -> InferenceRequest:
    """/api/chat or /api/generate: streams by default, as Ollama does."""
    data = parse_json_object(raw)
    model = _model(data)
    stream = _stream(data, True)
    options = data.get("options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("options must be a JSON object")
    if endpoint is Endpoint.CHAT:
        _messages(data, required=False)
    else:
        prompt = data.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise InvalidRequest("prompt must be a string")
    return InferenceRequest(endpoint, model, residency_key(model, options), stream, data)


def _openai_request(endpoint: Endpoint, raw: bytes) -> InferenceRequest:
    """/v1/chat/completions or /v1/completions: `stream` defaults to false, and the
    residency key is the model name alone, since /v1 cannot carry runner options."""
    data = parse_json_object(raw)
    model = _model(data)
    stream = _stream(data, False)
    if endpoint is Endpoint.V1_CHAT:
        _messages(data, required=True)
    else:
        prompt = data.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            # OpenAI also allows a list of prompts or tokens; Ollama's /v1 does not
            raise InvalidRequest("prompt must be a string")
    return InferenceRequest(endpoint, model, residency_key(model), stream, data)


# -- job options, shared by the job API and the X-Foreman-* headers of the sync routes --

MAX_PRIORITY = 1_000_000


def check_ref(value: Any) -> str | None:
    """A caller's own tag for a job ("note:42"): opaque, short, printable."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 256 or not value.isprintable():
        raise InvalidRequest("ref must be a printable string of 1 to 256 characters")
    return value


def check_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not value or len(value) > 255 or not value.isprintable():
        raise InvalidRequest("Idempotency-Key must be a printable string of 1 to 255 characters")
    return value


def parse_priority(value: str | None) -> int:
    """The X-Foreman-Priority header: a whole number, higher runs first (default 0)."""
    if value is None:
        return 0
    try:
        priority = int(value.strip())
    except ValueError:
        raise InvalidRequest("X-Foreman-Priority must be a whole number") from None
    if abs(priority) > MAX_PRIORITY:
        raise InvalidRequest(
            f"X-Foreman-Priority must be between -{MAX_PRIORITY} and {MAX_PRIORITY}"
        )
    return priority
