"""The live dashboard: the page at /ui and the queue summary it draws from.

/ui and its two assets are static and open (they hold no data and no key). The data
comes from /queue (one JSON document) and /queue/events (server-sent events: `hello`
says who the caller is and whether it may act, `snapshot` gives the summary and the
recent jobs, then `job` events as jobs change and a fresh `summary` after each burst of
changes). Any valid key may watch; a non-admin key sees only its own jobs (and only its
own row of the per-owner table), and the actions on the page (cancel, retry, purge)
are the job API's routes, which refuse a key without the scope they need.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

import trio
from quart import Blueprint, Response, request

from foreman.api.auth import caller, key_check, owner_filter
from foreman.api.errors import ollama_error
from foreman.api.jobs import key_name, stream_refusal
from foreman.api.responses import (
    KEEP_ALIVE_COMMENT,
    SSE_KEEPALIVE,
    event_stream,
    json_response,
    sse_event,
)
from foreman.api.services import Services
from foreman.board import Board, job_view
from foreman.events import StreamSlot, TooManyStreams
from foreman.jobs import Job
from foreman.keys import ALL_SCOPES
from foreman.validate import InvalidRequest, limit_arg

# the page's files: served from the package, never from a path the client names
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# the page runs only its own script and talks only to its own origin
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        " img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def asset(name: str) -> bytes:
    return resources.files("foreman.ui").joinpath(name).read_bytes()


def blueprint(services: Services) -> Blueprint:
    bp = Blueprint("dashboard", __name__)
    queue = services.queue
    board = services.board

    @bp.errorhandler(InvalidRequest)
    async def invalid(exc: InvalidRequest) -> Response:
        return ollama_error(400, str(exc))

    @bp.route("/ui", methods=["GET", "HEAD"])
    @bp.route("/ui/", methods=["GET", "HEAD"])
    async def page() -> Response:
        return _asset("index.html")

    @bp.route("/ui/<name>", methods=["GET", "HEAD"])
    async def page_asset(name: str) -> Response:
        if name not in ASSETS:
            return ollama_error(404, f"no such file: /ui/{name}")
        return _asset(name)

    @bp.route("/queue", methods=["GET"])
    async def overview() -> Response:
        owner = owner_filter()
        jobs = await queue.list_jobs(limit=limit_arg(request.args.get("limit")), key_name=owner)
        return json_response(
            {
                "you": _you(services),
                "summary": visible_summary(await board.summary(), owner),
                "jobs": [job_view(j) for j in jobs],
            }
        )

    @bp.errorhandler(TooManyStreams)
    async def too_many_streams(exc: TooManyStreams) -> Response:
        return stream_refusal(services, exc)

    @bp.route("/queue/events", methods=["GET"])
    async def events() -> Response:
        limit = limit_arg(request.args.get("limit"))
        # the dashboard's streams count against the same caps as the job API's
        slot = services.streams.take(key_name())
        return _stream(
            services, board, owner_filter(), _you(services), limit, key_check(services), slot
        )

    return bp


def _asset(name: str) -> Response:
    return Response(asset(name), 200, content_type=ASSETS[name], headers=PAGE_HEADERS)


def _you(services: Services) -> dict[str, Any]:
    """Who the page is talking as: a key's name and scopes, never the key."""
    key = caller()
    scopes = key.scopes if key is not None else ALL_SCOPES
    return {
        "name": key.name if key is not None else None,
        "scopes": sorted(s.value for s in scopes),
        "keys_enabled": services.keys.ring.enabled,
        "can_act": key is None or key.admin,
    }


def visible_summary(summary: dict[str, Any], owner: str | None) -> dict[str, Any]:
    """The summary as a key that sees only its own jobs may see it: the counts, models
    and timings stay; another key's job ids, refs and errors go, and of the per-owner
    table and the queued jobs' places only its own."""
    if owner is None:
        return summary
    out = dict(summary)
    out["owners"] = [row for row in summary.get("owners", ()) if row["owner"] == owner]
    running = summary.get("running")
    if running is not None:
        out["running"] = _seen_by(running, owner)
    out["upstreams"] = [
        {**lane, "running": [_seen_by(job, owner) for job in lane["running"]]}
        for lane in summary.get("upstreams", ())
    ]
    out["swaps"] = [{**s, "job_id": None} for s in summary.get("swaps", ())]
    out["places"] = {
        job_id: place
        for job_id, place in summary.get("places", {}).items()
        if place.get("owner") == owner
    }
    return out


def _seen_by(job: dict[str, Any], owner: str) -> dict[str, Any]:
    return job if job.get("owner") == owner else {k: job[k] for k in _ANONYMOUS if k in job}


# what anyone may see of a job that is not theirs
_ANONYMOUS = (
    "state",
    "model",
    "started_at",
    "enqueued_at",
    "attempts",
    "tokens",
    "stream",
    "upstream",
)


def _job_event(job: Job) -> bytes:
    """A job's `job` event (encoded once per change however many streams send it)."""
    return sse_event("job", job_view(job))


def _stream(
    services: Services,
    board: Board,
    owner: str | None,
    you: dict[str, Any],
    limit: int,
    still_valid: Callable[[], bool],
    slot: StreamSlot,
) -> Response:
    async def events() -> AsyncIterator[bytes]:
        # subscribed before the jobs are read, so no change falls between the two; the
        # changes numbered at or below the board's version at the read are in it already
        feed = board.open_feed(owner=owner)
        try:
            yield sse_event("hello", you)

            async def snapshot() -> tuple[int, bytes]:
                seen = board.version
                jobs = await services.queue.list_jobs(limit=limit, key_name=owner)
                summary = visible_summary(await board.summary(), owner)
                data = {"summary": summary, "jobs": [job_view(j) for j in jobs]}
                return seen, sse_event("snapshot", data)

            seen, first = await snapshot()
            yield first
            # a summary goes out `board.spacing` seconds after the first change it covers
            # (or when the board's cached headline is due a refresh)
            due = board.refresh_due()
            while True:
                wait = SSE_KEEPALIVE if due is None else max(0.0, due - trio.current_time())
                batch = await feed.next_batch(wait, seen, still_valid)
                if batch is None:
                    if due is None:
                        yield KEEP_ALIVE_COMMENT
                    else:
                        summary = await board.summary()
                        due = board.refresh_due()
                        yield sse_event("summary", visible_summary(summary, owner))
                    continue
                if batch.resync:
                    # jobs were deleted: a new snapshot holds every change before it
                    seen, fresh = await snapshot()
                    yield fresh
                elif batch.changes:
                    yield b"".join(change.encoded(_job_event) for change in batch.changes)
                if batch.ended:
                    return  # fell behind, shutting down or the key changed: the page reconnects
                soon = trio.current_time() + board.spacing
                due = soon if due is None else min(due, soon)
        finally:
            feed.stop()
            slot.release()

    return event_stream(events())
