"""Builds the Quart-Trio app from foreman's parts; it starts no tasks of its own."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from quart import request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from foreman.api import auth, dashboard, jobs, ollama, openai, ops
from foreman.api.errors import error_for, http_error
from foreman.api.lean import BODY_TIMEOUT, LeanRelay
from foreman.api.request_target import TargetCheck
from foreman.api.services import Services
from foreman.queue import (
    BUSY_MESSAGE,
    UNWRITABLE_RETRY_AFTER,
    QueueFull,
    Refused,
    StoreUnwritable,
    unwritable_message,
)

log = logging.getLogger("foreman.api")


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio(__name__, root_path=str(Path(__file__).parent))
    app.config.update(
        MAX_CONTENT_LENGTH=services.settings.max_body,
        # a queued request may wait (and a stream may run) far longer than Quart's 60 s
        RESPONSE_TIMEOUT=None,
        BODY_TIMEOUT=BODY_TIMEOUT,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    # before routing and authorisation: the path they see is the path relayed to Ollama
    # and in front of the framework, the lean path for the routes that only relay
    routes = (*ollama.RELAYED_ROUTES, *openai.RELAYED_ROUTES)
    lean_path = LeanRelay(services, app.asgi_app, routes)
    app.asgi_app = TargetCheck(lean_path)  # type: ignore[method-assign,assignment]
    max_body = services.settings.max_body

    @app.before_request
    async def check_key() -> Any:
        return await auth.authorise(services)

    app.register_blueprint(ops.blueprint(services))
    app.register_blueprint(ollama.blueprint(services))
    app.register_blueprint(openai.blueprint(services))
    app.register_blueprint(jobs.blueprint(services))
    app.register_blueprint(dashboard.blueprint(services))

    # foreman's own errors take the shape of the route family the path belongs to
    @app.errorhandler(HTTPException)
    async def protocol_error(exc: HTTPException) -> Any:
        code = exc.code or 500
        if code == 413:
            services.metrics.reject("too_large")
            return http_error(request.path, 413, f"request body is larger than {max_body} bytes")
        return http_error(request.path, code, exc.description or exc.name)

    # a full queue or a shutdown: 503 with Retry-After, as Ollama answers when it is full;
    # a key over its own `max_queued`: 429 with Retry-After
    @app.errorhandler(Refused)
    async def refused(exc: Refused) -> Any:
        services.metrics.reject(exc.reason)
        message = BUSY_MESSAGE if isinstance(exc, QueueFull) else str(exc)
        headers = {"Retry-After": str(exc.retry_after)}
        return error_for(request.path, exc.status, message, headers)

    # any other write (a cancel, a retry, a delete) while the database cannot be written
    @app.errorhandler(StoreUnwritable)
    async def unwritable(exc: StoreUnwritable) -> Any:
        log.warning("answering 503: %s", exc)
        return error_for(
            request.path,
            503,
            unwritable_message(exc.reason),
            {"Retry-After": str(UNWRITABLE_RETRY_AFTER)},
        )

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Any:
        log.exception("unexpected error answering a request")
        return http_error(request.path, 500, "internal error in foreman")

    return app
