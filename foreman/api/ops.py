"""Routes for operators: liveness, readiness and metrics.

/health answers 200 while the process serves HTTP and touches nothing else, so a
supervisor can call it as often as it likes. /ready says whether foreman can do its
work: the database takes a write (a probe that changes nothing, so a full disk shows) and
is still the file foreman opened, at least one upstream answers (each is named, up or
down), and shutdown has not begun. A replica on PostgreSQL also names the upstreams whose
lease it holds (the ones it drives) and whether it runs the janitor.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from quart import Blueprint, Response

from foreman.api.responses import JSON, compact_json
from foreman.api.services import Services
from foreman.fleet import Fleet, Member
from foreman.metrics import CONTENT_TYPE
from foreman.status import LeaseStatus
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
        up = await _probe_all(services.fleet)
        down = [name for name, answers in up.items() if not answers]
        # some upstreams down while another answers: ready (it carries the work), and said
        unready = bool(reasons) or len(down) == len(up)
        if len(up) == 1:
            reasons += ["ollama is unreachable"] if down else []
        else:
            reasons += [f"upstream {name} is unreachable" for name in down]
        upstreams = {name: "up" if answers else "down" for name, answers in up.items()}
        leases = services.metrics.status().leases
        if unready:
            return _json(_document("unready", reasons, upstreams, leases), 503)
        return _json(_document("ready", reasons, upstreams, leases), 200)

    @bp.route("/metrics", methods=["GET"])
    async def metrics() -> Response:
        return Response(services.metrics.exposition(), 200, content_type=CONTENT_TYPE)

    return bp


async def _probe_all(fleet: Fleet) -> dict[str, bool]:
    """Whether each upstream answers its probe, asked all at once on their probe pools,
    each bounded by READY_PROBE_SECONDS; in configuration order."""
    up = dict.fromkeys((m.name for m in fleet), False)

    async def probe(member: Member) -> None:
        with trio.move_on_after(READY_PROBE_SECONDS):
            try:
                await member.probes.probe()
                up[member.name] = True
            except UpstreamError:
                pass

    async with trio.open_nursery() as nursery:
        for member in fleet:
            nursery.start_soon(probe, member)
    return up


def _document(
    status: str, reasons: list[str], upstreams: dict[str, str], leases: LeaseStatus | None
) -> str:
    document: dict[str, Any] = {"status": status, "reasons": reasons, "upstreams": upstreams}
    if leases is not None:
        # a replica: the database is shared, and these are the parts it runs
        document["database"] = "postgresql"
        document["leases"] = list(leases.upstreams)
        document["janitor"] = leases.janitor
    return compact_json(document)


def _json(body: str, status: int) -> Response:
    return Response(body, status, content_type=JSON)
