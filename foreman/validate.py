"""Checks a request must pass before it becomes a job. Pure.

Only what foreman itself depends on is checked (a JSON object, a model name, the shapes
that decide streaming and residency); everything else is Ollama's to judge, and its
answer reaches the client unchanged. One exception: the body must be JSON that can be
stored and shown again, so foreman refuses what Python's parser takes but JSON does not
(NaN, Infinity, a number too large for a float) and text that is not Unicode (a lone
surrogate escape such as "\\ud800"), wherever in the body it is.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any, NoReturn

import attrs

from foreman.jobs import Endpoint, NewJob
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


# a \\uXXXX escape in the surrogate range: paired ones (an emoji written as two escapes)
# are fine, so a match is only a reason to look at the parsed strings
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object that foreman can store and show again.

    Python's parser is laxer than JSON: it takes NaN and Infinity, turns 1e400 into
    infinity, and keeps a lone surrogate escape as a code point no UTF-8 text can hold
    (SQLite refuses it, and so would every answer that shows it). All are refused.
    """
    if not raw.strip():
        raise InvalidRequest("missing request body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("request body is not valid UTF-8") from None
    try:
        data = json.loads(text, parse_constant=_not_json, parse_float=_finite_float)
    except InvalidRequest:
        raise
    except ValueError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        # json.loads gives up on nesting deeper than Python's recursion limit
        raise InvalidRequest("request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(text) and _holds_lone_surrogate(data):
        raise InvalidRequest(
            "request body holds a lone surrogate escape (\\ud800-\\udfff without its pair),"
            " which is not Unicode text"
        )
    return data


def _not_json(name: str) -> NoReturn:
    raise InvalidRequest(f"request body is not valid JSON: {name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidRequest(f"request body holds a number too large for a float: {text[:40]}")
    return value


def _holds_lone_surrogate(data: Any) -> bool:
    """Whether any string (key or value) anywhere in `data` holds a surrogate code point
    (the parser pairs the escapes it can, so what is left is alone). A loop, not
    recursion: the body may be nested as deep as the parser allows."""
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def inference_request(endpoint: Endpoint, raw: bytes) -> InferenceRequest:
    """Validate a chat or generate body for `endpoint`, whichever family it belongs to."""
    if endpoint.openai:
        return _openai_request(endpoint, raw)
    return _native_request(endpoint, raw)


MAX_MODEL_CHARS = 512


def _model(data: dict[str, Any]) -> str:
    """The model name: stored, logged and shown on the dashboard, so printable and short
    (Ollama's own names are a few dozen characters of a small alphabet)."""
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model is required (a non-empty string)")
    if len(model) > MAX_MODEL_CHARS or not model.isprintable():
        raise InvalidRequest(
            f"model must be a printable name of at most {MAX_MODEL_CHARS} characters"
        )
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
# the furthest deadline a job may have: a year (further is no deadline at all, and a
# number beyond that could not be shown as a date)
MAX_DEADLINE = 365 * 24 * 3600


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


def check_deadline(value: Any, now: float) -> float | None:
    """A job's `deadline` (seconds from now, at most a year) as the wall-clock time by
    which it must have started."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest("deadline must be a number of seconds from now")
    # a comparison, not float(): a whole number too large for a float is refused too
    if not 0 < value <= MAX_DEADLINE:
        raise InvalidRequest(
            f"deadline must be a positive number of seconds from now, at most {MAX_DEADLINE}"
            " (a year)"
        )
    return now + float(value)


# -- the job API: a submission and the query arguments of its listings --

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def encode_cursor(job_id: str) -> str:
    return base64.urlsafe_b64encode(job_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequest("cursor is not one this server gave out") from None
    if len(raw) != 26 or not raw.isalnum():
        raise InvalidRequest("cursor is not one this server gave out")
    return raw


def number_arg(name: str, raw: str | None, *, default: float, low: float = 0.0) -> float:
    """A query argument that counts seconds."""
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number of seconds") from None
    if not math.isfinite(value) or value < low:
        raise InvalidRequest(f"{name} must be a number of seconds, at least {low:g}")
    return value


def limit_arg(raw: str | None) -> int:
    """The page size of a listing."""
    if raw is None:
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return value


SUBMISSION_FIELDS = frozenset({"endpoint", "body", "priority", "ref", "max_attempts", "deadline"})


def submission(raw: bytes, default_attempts: int, now: float) -> NewJob:
    """A POST /jobs body, validated exactly as the synchronous routes validate theirs."""
    return envelope_submission(parse_json_object(raw), default_attempts, now)


def envelope_submission(envelope: dict[str, Any], default_attempts: int, now: float) -> NewJob:
    """A parsed POST /jobs body (or one item of a batch) as a job to store."""
    unknown = set(envelope) - SUBMISSION_FIELDS
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    names = [e.value for e in Endpoint]
    endpoint_name = envelope.get("endpoint")
    if endpoint_name not in names:
        raise InvalidRequest(f"endpoint must be one of {', '.join(names)}")
    endpoint = Endpoint(endpoint_name)
    body = envelope.get("body")
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object (the request for the endpoint)")
    # collected later, so answered whole: the upstream request never streams
    upstream_body = json.dumps({**body, "stream": False}, separators=(",", ":")).encode()
    parsed = inference_request(endpoint, upstream_body)
    priority = envelope.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > MAX_PRIORITY:
        raise InvalidRequest(
            f"priority must be a whole number between -{MAX_PRIORITY} and {MAX_PRIORITY}"
        )
    ref = check_ref(envelope.get("ref"))
    max_attempts = envelope.get("max_attempts", default_attempts)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        raise InvalidRequest("max_attempts must be a whole number from 1 to 100")
    if not 1 <= max_attempts <= 100:
        raise InvalidRequest("max_attempts must be a whole number from 1 to 100")
    deadline = check_deadline(envelope.get("deadline"), now)
    return NewJob(
        endpoint=endpoint,
        model=parsed.model,
        model_key=parsed.model_key,
        body=upstream_body,
        stream=False,
        priority=priority,
        max_attempts=max_attempts,
        ref=ref,
        deadline=deadline,
    )


# -- POST /jobs/batch: many submissions in one request --

# the one field a batch item has beyond a POST /jobs body: its Idempotency-Key
ITEM_KEY = "idempotency_key"


@attrs.frozen
class BatchItem:
    """One item of a batch: its job, its idempotency key, and what the key stands for
    (the item's content without the key, written canonically; None without a key)."""

    new: NewJob
    key: str | None
    content: bytes | None


class BatchTooLarge(InvalidRequest):
    """More items than one batch may carry."""


def batch_submission(
    raw: bytes, default_attempts: int, now: float, max_batch: int
) -> list[BatchItem]:
    """A POST /jobs/batch body: `{"jobs": [item, ...]}`, each item a POST /jobs body with
    an optional `idempotency_key`. Every item is checked before any is stored; the first
    bad one is named by its index."""
    envelope = parse_json_object(raw)
    unknown = set(envelope) - {"jobs"}
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    items = envelope.get("jobs")
    if not isinstance(items, list):
        raise InvalidRequest("jobs must be a list of job submissions")
    if not items:
        raise InvalidRequest("jobs must hold at least one job submission")
    if len(items) > max_batch:
        raise BatchTooLarge(
            f"a batch holds at most {max_batch} jobs (this one has {len(items)}); split it"
        )
    out: list[BatchItem] = []
    for index, item in enumerate(items):
        try:
            out.append(_batch_item(item, default_attempts, now))
        except InvalidRequest as exc:
            raise InvalidRequest(f"jobs[{index}]: {exc}") from None
    return out


def _batch_item(item: Any, default_attempts: int, now: float) -> BatchItem:
    if not isinstance(item, dict):
        raise InvalidRequest("a job submission must be a JSON object")
    fields = {name: value for name, value in item.items() if name != ITEM_KEY}
    key = item.get(ITEM_KEY)
    if key is not None and (
        not isinstance(key, str) or not key or len(key) > 255 or not key.isprintable()
    ):
        raise InvalidRequest(f"{ITEM_KEY} must be a printable string of 1 to 255 characters")
    new = envelope_submission(fields, default_attempts, now)
    if key is None:
        return BatchItem(new, None, None)
    # the parsed item, not its bytes: key order and spacing do not make another request
    content = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return BatchItem(new, key, content)
