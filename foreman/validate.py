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
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data


def inference_request(endpoint: Endpoint, raw: bytes) -> InferenceRequest:
    """Validate a native /api/chat or /api/generate body (streams by default, as Ollama)."""
    data = parse_json_object(raw)
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model is required (a non-empty string)")
    stream = data.get("stream", True)
    if stream is None:
        stream = True
    if not isinstance(stream, bool):
        raise InvalidRequest("stream must be true or false")
    options = data.get("options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("options must be a JSON object")
    if endpoint is Endpoint.CHAT:
        messages = data.get("messages")
        if messages is not None and (
            not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages)
        ):
            raise InvalidRequest("messages must be a list of objects")
    else:
        prompt = data.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise InvalidRequest("prompt must be a string")
    return InferenceRequest(endpoint, model, residency_key(model, options), stream, data)
