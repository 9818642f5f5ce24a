"""GET /openapi.json: a description of foreman's own API (the job routes in full, the
dashboard's routes, the Ollama and OpenAI routes by reference to their upstream
documentation)."""

from __future__ import annotations

from typing import Any

from foreman import __version__
from foreman.jobs import Endpoint, JobState
from foreman.validate import MAX_DEADLINE

ERROR = {"$ref": "#/components/schemas/Error"}
JOB = {"$ref": "#/components/schemas/Job"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(ERROR, description)


def _id_param() -> dict[str, Any]:
    return {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


def _relayed(summary: str) -> dict[str, Any]:
    return {"summary": summary, "responses": {"default": {"description": "Ollama's answer"}}}


# the admin routes' choice of upstream (every one in turn without it)
_UPSTREAM_HEADER = {
    "name": "X-Foreman-Upstream",
    "in": "header",
    "schema": {"type": "string"},
    "description": "the name of the one upstream to send this to; without it, every"
    " upstream in turn (progress lines relayed upstream after upstream, a failure naming"
    " its upstream). Never forwarded to Ollama.",
}


_DIGEST = {"name": "digest", "in": "path", "required": True, "schema": {"type": "string"}}


def _admin(summary: str, *parameters: dict[str, Any]) -> dict[str, Any]:
    """An admin route, relayed to every upstream or the one the header names."""
    return {
        "summary": summary + " (admin key), on every upstream or the one named",
        "parameters": [*parameters, _UPSTREAM_HEADER],
        "responses": {
            "default": {"description": "Ollama's answer (each upstream's, for a stream)"},
            "400": _error("X-Foreman-Upstream names no upstream (the error lists them)"),
        },
    }


# an event stream refused at its cap (both with Retry-After)
_STREAM_REFUSALS = {
    "429": _error("the key holds as many open event streams as it may"),
    "503": _error("foreman holds as many open event streams as it will"),
}


def _submission(extra: dict[str, Any]) -> dict[str, Any]:
    """A POST /jobs body, with `extra` properties (a batch item's idempotency key)."""
    return {
        "type": "object",
        "required": ["endpoint", "body"],
        "additionalProperties": False,
        "properties": {
            "endpoint": {"type": "string", "enum": [e.value for e in Endpoint]},
            "body": {"type": "object", "description": "the request for endpoint"},
            "priority": {"type": "integer", "default": 0},
            "ref": {"type": "string", "maxLength": 256},
            "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
            "deadline": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": MAX_DEADLINE,
                "description": "seconds from now by which the job must start",
            },
            **extra,
        },
    }


def spec() -> dict[str, Any]:
    states = [s.value for s in JobState]
    job_ops = {
        "/jobs": {
            "post": {
                "summary": "Submit a job to collect later",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        "description": "one job per key and API key",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Submit"}}
                    },
                },
                "responses": {
                    "202": _json(JOB, "queued (or the job its idempotency key names)"),
                    "400": _error("invalid submission"),
                    "409": _error("idempotency key reused by this API key with another request"),
                    "429": _error("the API key has its max_queued unfinished jobs (Retry-After)"),
                    "503": _error(
                        "the queue is full, foreman is stopping, or its database"
                        " cannot be written (Retry-After)"
                    ),
                },
            },
            "get": {
                "summary": "List jobs, newest first",
                "parameters": [
                    _query("state", {"type": "string", "enum": states}, "filter by state"),
                    _query("model", {"type": "string"}, "filter by model"),
                    _query("ref", {"type": "string"}, "filter by ref"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "page"),
                    _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "jobs": {"type": "array", "items": JOB},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                        },
                        "a page of jobs",
                    ),
                    "400": _error("bad filter or cursor"),
                },
            },
            "delete": {
                "summary": "Purge finished jobs older than older_than seconds",
                "parameters": [
                    {
                        "name": "older_than",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "number", "minimum": 0},
                    }
                ],
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"purged": {"type": "integer"}}},
                        "how many were purged",
                    ),
                    "400": _error("older_than missing or invalid"),
                },
            },
        },
        "/jobs/batch": {
            "post": {
                "summary": "Submit many jobs in one request: one commit, all or none",
                "description": "Each item is checked as POST /jobs checks a submission, and"
                " every item before any is stored. A key's max_queued and the queue's"
                " max_queue count the whole batch.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/SubmitBatch"}}
                    },
                },
                "responses": {
                    "202": _json(
                        {
                            "type": "object",
                            "properties": {"jobs": {"type": "array", "items": JOB}},
                        },
                        "all queued (or the jobs their idempotency keys name), in item order",
                    ),
                    "400": _error("an invalid item (named `jobs[i]: ...`); nothing stored"),
                    "409": _error(
                        "an item's idempotency key reused with another request; nothing stored"
                    ),
                    "413": _error(
                        "more items than max_batch, or than the key's max_queued or the"
                        " queue's max_queue could ever hold"
                    ),
                    "429": _error(
                        "the batch would take the API key past its max_queued (Retry-After);"
                        " nothing stored"
                    ),
                    "503": _error(
                        "the batch would pass the queue's limit, foreman is stopping, or its"
                        " database cannot be written (Retry-After); nothing stored"
                    ),
                },
            }
        },
        "/jobs/events": {
            "get": {
                "summary": "Server-sent events: every job change, as it happens",
                "responses": {
                    "200": {"description": "text/event-stream of `job` events"},
                    **_STREAM_REFUSALS,
                },
            }
        },
        "/jobs/{id}": {
            "get": {
                "summary": "One job; with wait, a long-poll until it ends",
                "parameters": [
                    _id_param(),
                    _query("wait", {"type": "number", "minimum": 0, "maximum": 60}, "seconds"),
                ],
                "responses": {
                    "200": _json(JOB, "the job"),
                    "400": _error("bad wait"),
                    "404": _error("no such job"),
                },
            },
            "delete": {
                "summary": "Delete a finished job",
                "parameters": [_id_param()],
                "responses": {
                    "200": _json({"type": "object"}, "deleted"),
                    "404": _error("no such job"),
                    "409": _error("the job has not finished"),
                },
            },
        },
        "/jobs/{id}/events": {
            "get": {
                "summary": "Server-sent events for one job, ending after its terminal state;"
                " while it is queued, `position` events as its position or estimated start"
                " changes (at most one a second)",
                "parameters": [_id_param()],
                "responses": {
                    "200": {"description": "text/event-stream of `job` and `position` events"},
                    "404": _error("no such job"),
                    **_STREAM_REFUSALS,
                },
            }
        },
        "/jobs/{id}/cancel": {
            "post": {
                "summary": "Cancel a queued or running job",
                "parameters": [_id_param()],
                "responses": {
                    "200": _json(JOB, "cancelled"),
                    "404": _error("no such job"),
                    "409": _error("the job has already ended"),
                },
            }
        },
        "/jobs/{id}/retry": {
            "post": {
                "summary": "Queue a failed or cancelled job again",
                "parameters": [_id_param()],
                "responses": {
                    "200": _json(JOB, "queued again"),
                    "404": _error("no such job"),
                    "409": _error("the job is not failed or cancelled"),
                },
            }
        },
    }
    limit = _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "newest jobs")
    dashboard_ops: dict[str, Any] = {
        "/queue": {
            "get": {
                "summary": "The dashboard's data: who the key is, the queue summary, recent jobs",
                "description": "Any key may read it; a non-admin key sees only its own jobs."
                " Times are Unix seconds. See the README's dashboard section for the fields.",
                "parameters": [limit],
                "responses": {
                    "200": _json({"type": "object"}, "`{you, summary, jobs}`"),
                    "400": _error("a bad limit"),
                    "401": _error("no key, or an unknown one"),
                },
            }
        },
        "/queue/events": {
            "get": {
                "summary": "The dashboard's live feed (Server-Sent Events)",
                "description": "`hello` (who the key is), `snapshot` (summary and jobs), then"
                " a `job` event per change and a fresh `summary` after each burst.",
                "parameters": [limit],
                "responses": {
                    "200": {"description": "an event stream", "content": {"text/event-stream": {}}},
                    "401": _error("no key, or an unknown one"),
                    **_STREAM_REFUSALS,
                },
            }
        },
        "/ui": {
            "get": {
                "summary": "The dashboard page",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
            }
        },
    }
    ollama_ops: dict[str, Any] = {
        "/api/chat": {"post": _relayed("Chat, through the queue (Ollama's API)")},
        "/api/generate": {"post": _relayed("Generate, through the queue (Ollama's API)")},
        "/api/embed": {"post": _relayed("Embeddings, relayed past the queue")},
        "/api/embeddings": {"post": _relayed("Embeddings (legacy), relayed past the queue")},
        "/api/tags": {"get": _relayed("Installed models (every healthy upstream's, each once)")},
        "/api/ps": {"get": _relayed("Loaded models (every copy on every healthy upstream)")},
        "/api/show": {"post": _relayed("Model details (from an upstream that has the model)")},
        "/api/version": {"get": _relayed("Ollama's version")},
        "/api/pull": {"post": _admin("Pull a model")},
        "/api/push": {"post": _admin("Push a model")},
        "/api/create": {"post": _admin("Create a model")},
        "/api/copy": {"post": _admin("Copy a model")},
        "/api/delete": {"delete": _admin("Delete a model")},
        "/api/blobs/{digest}": {
            "head": _admin("Whether a blob exists", _DIGEST),
            "post": _admin("Upload a blob", _DIGEST),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "foreman",
            "version": __version__,
            "description": "A durable, drain-by-model job queue in front of Ollama.",
        },
        "paths": {**job_ops, **dashboard_ops, **ollama_ops},
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "Submit": _submission({}),
                "BatchItem": _submission(
                    {
                        "idempotency_key": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 255,
                            "description": "as POST /jobs's Idempotency-Key header: one"
                            " job per key and API key",
                        }
                    }
                ),
                "SubmitBatch": {
                    "type": "object",
                    "required": ["jobs"],
                    "additionalProperties": False,
                    "properties": {
                        "jobs": {
                            "type": "array",
                            "minItems": 1,
                            "description": "at most max_batch items (1000 by default)",
                            "items": {"$ref": "#/components/schemas/BatchItem"},
                        }
                    },
                },
                "Job": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "state": {"type": "string", "enum": states},
                        "endpoint": {"type": "string"},
                        "model": {"type": "string"},
                        "priority": {"type": "integer"},
                        "ref": {"type": ["string", "null"]},
                        "attempts": {"type": "integer"},
                        "max_attempts": {"type": "integer"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "started_at": {"type": ["string", "null"], "format": "date-time"},
                        "finished_at": {"type": ["string", "null"], "format": "date-time"},
                        "queue_ms": {"type": ["integer", "null"]},
                        "deadline": {"type": ["string", "null"], "format": "date-time"},
                        "error": {"type": ["string", "null"]},
                        "upstream": {
                            "type": ["string", "null"],
                            "description": "the name of the upstream that ran the latest"
                            " attempt; null before the first",
                        },
                        "position": {
                            "type": ["integer", "null"],
                            "description": "a queued job: how many jobs start before it,"
                            " across every upstream (GET /jobs/{id} only; null unless"
                            " queued)",
                        },
                        "estimated_start": {
                            "type": ["string", "null"],
                            "format": "date-time",
                            "description": "a queued job: when it is expected to start,"
                            " from measured job and load times; null until its model's jobs"
                            " have been measured, or unless queued",
                        },
                        "result": {"description": "the upstream's answer, once done"},
                    },
                },
            }
        },
    }
