"""Routes for operators: liveness, readiness and metrics.

/health answers 200 while the process serves HTTP and touches nothing else, so a
supervisor can call it as often as it likes. /ready says whether foreman can do its
work: the database takes a write (a probe that changes nothing, so a full disk shows) and
is still the file foreman opened, Ollama answers, and shutdown has not begun.
"""

from __future__ import annotations

import logging

import trio
from quart import Blueprint, Response

from foreman.api.responses import JSON, compact_json
from foreman.api.services import Services
from foreman.metrics import CONTENT_TYPE
from foreman.upstream import UpstreamError

log = logging.getLogger("foreman.api")

# bound on Ollama's answer to the readiness probe
READY_PROBE_SECONDS = 5.0


def blueprint(services: Services) -> Blueprint:
    bp = Blueprint("ops", __name__)

    @bp.route("/health", methods=["GET", "HEAD"])
    async def health() -> Response:
        return _json('{"status":"ok"}', 200)

    @bp.route("/ready", methods=["GET", "HEAD"])
    async def ready() -> Response:
        reasons = []
        if not services.queue.accepting:
            reasons.append("shutting down")
        queue = services.queue
        problem = await queue.write_problem()
        if problem is not None:
            log.warning("readiness: database %s is not writable: %s", queue.database, problem)
            reasons.append(f"database is not writable: {problem}")
        reachable = False
        with trio.move_on_after(READY_PROBE_SECONDS):
            try:
                await services.probes.probe()
                reachable = True
            except UpstreamError:
                pass
        if not reachable:
            reasons.append("ollama is unreachable")
        if reasons:
            return _json(_document("unready", reasons), 503)
        return _json(_document("ready", []), 200)

    @bp.route("/metrics", methods=["GET"])
    async def metrics() -> Response:
        return Response(services.metrics.exposition(), 200, content_type=CONTENT_TYPE)

    return bp


def _document(status: str, reasons: list[str]) -> str:
    return compact_json({"status": status, "reasons": reasons})


def _json(body: str, status: int) -> Response:
    return Response(body, status, content_type=JSON)
