"""Builds the Quart-Trio app from foreman's parts; it starts no tasks of its own."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs
from quart import request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from foreman.api import jobs, ollama, openai
from foreman.api.errors import http_error
from foreman.config import Settings
from foreman.queue import JobQueue
from foreman.upstream import Upstream

log = logging.getLogger("foreman.api")

MAX_BODY = 32 * 1024 * 1024


@attrs.frozen
class Services:
    """What the routes may call: handed to the app at construction, never global."""

    settings: Settings
    queue: JobQueue
    upstream: Upstream


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio(__name__, root_path=str(Path(__file__).parent))
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY,
        # a queued request may wait (and a stream may run) far longer than Quart's 60 s
        RESPONSE_TIMEOUT=None,
        BODY_TIMEOUT=120,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    app.extensions["foreman"] = services
    app.register_blueprint(ollama.blueprint(services))
    app.register_blueprint(openai.blueprint(services))
    app.register_blueprint(jobs.blueprint(services))

    # foreman's own errors take the shape of the route family the path belongs to
    @app.errorhandler(HTTPException)
    async def protocol_error(exc: HTTPException) -> Any:
        code = exc.code or 500
        if code == 413:
            return http_error(request.path, 413, f"request body is larger than {MAX_BODY} bytes")
        return http_error(request.path, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Any:
        log.exception("unexpected error answering a request")
        return http_error(request.path, 500, "internal error in foreman")

    return app
