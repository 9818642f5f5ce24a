"""The job API: submit now, collect later, watch live, and manage what is queued.

JSON in and out; errors in Ollama's shape (`{"error": "..."}`). Waiting (long-polls and
event streams) listens to the in-process broadcaster, never to the database. With API
keys, a key sees only the jobs it made (an admin key sees all): another key's job is
answered as unknown.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import attrs
import trio
from quart import Blueprint, Response, request

from foreman.api.auth import caller, key_check, note, owner_filter
from foreman.api.errors import ollama_error
from foreman.api.openapi import spec
from foreman.api.responses import (
    KEEP_ALIVE_COMMENT,
    SSE_KEEPALIVE,
    event_stream,
    json_response,
    request_body,
    sse_event,
)
from foreman.api.services import Services
from foreman.events import StreamSlot, TooManyStreams
from foreman.forecast import Standing
from foreman.jobs import Job, JobState, NewJob
from foreman.keys import ApiKey
from foreman.queue import BatchNeverFits, IdempotencyConflict, JobQueue, NotTerminal
from foreman.residency import normalise_model
from foreman.standing import REFRESH_SECONDS, Standings
from foreman.timefmt import rfc3339
from foreman.validate import (
    BatchItem,
    BatchTooLarge,
    InvalidRequest,
    batch_submission,
    check_idempotency_key,
    decode_cursor,
    encode_cursor,
    limit_arg,
    number_arg,
    submission,
)

MAX_WAIT = 60.0
# how long a queue-wide event stream gathers changes before it writes them: at least
# this long, and longer with many such streams open, so that together they write about
# STREAM_WRITES times a second at most, however many there are
STREAM_BATCH = 0.1
STREAM_WRITES = 1000.0
# seconds a client refused an event stream is asked to wait before it asks again
STREAM_RETRY_AFTER = 5


# the range a timestamp can be written in (years 1970 to 9999)
_LAST_MOMENT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def timestamp(value: float | None) -> str | None:
    """RFC 3339 UTC with milliseconds, e.g. 2026-11-23T16:05:09.123Z.

    Never raises: a stored time beyond the year 9999 (a deadline an older foreman let
    through) is shown as the last moment that can be written, and one that is not a
    number at all as null, so no row can break a listing or an event stream.
    """
    if value is None or not math.isfinite(value):
        return None
    return rfc3339(min(max(value, 0.0), _LAST_MOMENT))


def job_json(job: Job) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id,
        "state": job.state.value,
        "endpoint": job.endpoint.value,
        "model": job.model,
        "priority": job.priority,
        "ref": job.ref,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created_at": timestamp(job.created_at),
        "started_at": timestamp(job.started_at),
        "finished_at": timestamp(job.finished_at),
        "queue_ms": job.queue_ms,
        "deadline": timestamp(job.deadline),
        "error": job.error,
        "upstream": job.upstream,
    }
    if job.state is JobState.DONE:
        out["result"] = job.result
    return out


def standing_json(standing: Standing | None, start: float | None) -> dict[str, Any]:
    """Where a job stands: its `position` (jobs that start before it) and
    `estimated_start`, both null unless it is queued (see foreman/standing.py)."""
    return {
        "position": standing.position if standing is not None else None,
        "estimated_start": timestamp(start),
    }


def request_hash(*parts: Any) -> str:
    """What an idempotency key stands for."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def batch_job(item: BatchItem, holder: ApiKey | None) -> NewJob:
    """A batch item as the job POST /jobs would make of it: the item's own key stands
    where POST /jobs reads the Idempotency-Key header."""
    new = item.new
    if item.key is not None:
        assert item.content is not None
        new = attrs.evolve(
            new, idempotency_key=item.key, request_hash=request_hash("jobs", item.content)
        )
    if holder is not None:
        new = attrs.evolve(new, key_name=holder.name, weight=holder.weight)
    return new


def blueprint(services: Services) -> Blueprint:
    bp = Blueprint("jobs", __name__)
    queue = services.queue
    settings = services.settings
    standings = services.standings

    @bp.errorhandler(InvalidRequest)
    async def invalid(exc: InvalidRequest) -> Response:
        return ollama_error(400, str(exc))

    async def detailed(job: Job) -> dict[str, Any]:
        """A job's JSON with where it stands, for a read of one job. Lists and the answers
        to submissions leave the standing out: each costs a count of the jobs ahead, which
        a caller sending thousands of jobs should not pay per job."""
        standing = await standings.of(job)
        start = standings.start_time(standing) if standing is not None else None
        return job_json(job) | standing_json(standing, start)

    async def find(job_id: str) -> Job:
        job = await queue.get(job_id)
        if job is None or not _visible(job):
            raise NotFound(job_id)
        return job

    @bp.errorhandler(LookupError)
    async def not_found(exc: LookupError) -> Response:
        return ollama_error(404, f"job {exc.args[0]} not found")

    @bp.route("/openapi.json", methods=["GET"])
    async def openapi() -> Response:
        return json_response(spec())

    @bp.route("/jobs", methods=["POST"])
    async def submit() -> Response:
        raw = await request_body()
        new = submission(raw, settings.max_attempts, queue.now())
        key = check_idempotency_key(request.headers.get("Idempotency-Key"))
        if key is not None:
            digest = request_hash("jobs", raw)
            new = attrs.evolve(new, idempotency_key=key, request_hash=digest)
        holder = caller()
        if holder is not None:
            new = attrs.evolve(new, key_name=holder.name, weight=holder.weight)
        limit = holder.max_queued if holder is not None else None
        try:
            submitted = await queue.submit(new, max_queued=limit)
        except IdempotencyConflict as exc:
            return ollama_error(409, str(exc))
        job = submitted.job
        note(job=job.id)
        return json_response(job_json(job), 202, {"Location": f"/jobs/{job.id}"})

    @bp.route("/jobs/batch", methods=["POST"])
    async def submit_batch() -> Response:
        """Many jobs in one request and one commit, all or none (docs/architecture.md)."""
        raw = await request_body()
        try:
            items = batch_submission(raw, settings.max_attempts, queue.now(), settings.max_batch)
        except BatchTooLarge as exc:
            services.metrics.reject("too_large")
            return ollama_error(413, str(exc))
        holder = caller()
        owner = holder.name if holder is not None else None
        news = [batch_job(item, holder) for item in items]
        limit = holder.max_queued if holder is not None else None
        try:
            submitted = await queue.submit_all(news, owner=owner, max_queued=limit)
        except BatchNeverFits as exc:
            services.metrics.reject("too_large")
            return ollama_error(413, str(exc))
        except IdempotencyConflict as exc:
            return ollama_error(409, f"jobs[{exc.index}]: {exc}")
        return json_response({"jobs": [job_json(s.job) for s in submitted]}, 202)

    @bp.route("/jobs", methods=["GET"])
    async def list_jobs() -> Response:
        args = request.args
        state = args.get("state")
        if state is not None and state not in {s.value for s in JobState}:
            raise InvalidRequest(f"state must be one of {', '.join(s.value for s in JobState)}")
        limit = limit_arg(args.get("limit"))
        cursor = args.get("cursor")
        model = args.get("model")
        jobs = await queue.list_jobs(
            state=JobState(state) if state else None,
            model_name=normalise_model(model) if model else None,
            ref=args.get("ref"),
            before=decode_cursor(cursor) if cursor else None,
            limit=limit + 1,
            key_name=owner_filter(),
        )
        more = len(jobs) > limit
        jobs = jobs[:limit]
        next_cursor = encode_cursor(jobs[-1].id) if more and jobs else None
        return json_response({"jobs": [job_json(j) for j in jobs], "next_cursor": next_cursor})

    @bp.route("/jobs", methods=["DELETE"])
    async def purge() -> Response:
        raw = request.args.get("older_than")
        if raw is None:
            raise InvalidRequest("older_than (seconds) is required to purge")
        older_than = number_arg("older_than", raw, default=0.0)
        return json_response({"purged": await queue.purge(older_than)})

    @bp.errorhandler(TooManyStreams)
    async def too_many_streams(exc: TooManyStreams) -> Response:
        return stream_refusal(services, exc)

    @bp.route("/jobs/events", methods=["GET"])
    async def all_events() -> Response:
        slot = services.streams.take(key_name())
        return _event_stream(queue, key_check(services), slot, owner_filter())

    @bp.route("/jobs/<job_id>", methods=["GET"])
    async def show(job_id: str) -> Response:
        raw = request.args.get("wait")
        if raw is None:
            return json_response(await detailed(await find(job_id)))
        seconds = min(number_arg("wait", raw, default=0.0), MAX_WAIT)
        job = await queue.wait(job_id, seconds, visible=_visible)
        if job is None:
            raise NotFound(job_id)
        return json_response(await detailed(job))

    @bp.route("/jobs/<job_id>/events", methods=["GET"])
    async def job_events(job_id: str) -> Response:
        await find(job_id)
        slot = services.streams.take(key_name())
        return _job_stream(queue, standings, job_id, key_check(services), slot)

    @bp.route("/jobs/<job_id>/cancel", methods=["POST"])
    async def cancel(job_id: str) -> Response:
        before = await find(job_id)
        if before.state.terminal:
            return ollama_error(409, f"job {job_id} has already ended ({before.state.value})")
        job = await queue.cancel(job_id, "cancelled by request")
        if job is None:
            raise NotFound(job_id)
        if job.state is not JobState.CANCELLED:
            return ollama_error(409, f"job {job_id} ended ({job.state.value}) before the cancel")
        return json_response(job_json(job))

    @bp.route("/jobs/<job_id>/retry", methods=["POST"])
    async def retry(job_id: str) -> Response:
        before = await find(job_id)
        job = await queue.retry(job_id)
        if job is None:
            return ollama_error(
                409, f"only a failed or cancelled job can be retried (it is {before.state.value})"
            )
        return json_response(job_json(job))

    @bp.route("/jobs/<job_id>", methods=["DELETE"])
    async def delete(job_id: str) -> Response:
        await find(job_id)
        try:
            deleted = await queue.delete(job_id)
        except NotTerminal:
            return ollama_error(409, f"job {job_id} has not finished; cancel it first")
        if not deleted:
            raise NotFound(job_id)
        return json_response({"deleted": job_id})

    return bp


def key_name() -> str | None:
    """The caller's API key's name (None: foreman runs without keys)."""
    holder = caller()
    return holder.name if holder is not None else None


def stream_refusal(services: Services, exc: TooManyStreams) -> Response:
    """No room for another event stream: 429 or 503, and when to try again."""
    services.metrics.reject("too_many_streams")
    return ollama_error(exc.status, str(exc), {"Retry-After": str(STREAM_RETRY_AFTER)})


class NotFound(LookupError):
    """No job with that id (or none the caller may see)."""


def _visible(job: Job) -> bool:
    """May the current caller see this job?"""
    owner = owner_filter()
    return owner is None or job.key_name == owner


def _event_stream(
    queue: JobQueue,
    still_valid: Callable[[], bool],
    slot: StreamSlot,
    owner: str | None = None,
) -> Response:
    """Server-sent events of the whole queue (or a key's jobs): one `job` event per
    change, until the caller's key is revoked. Holds `slot` until it ends.

    The stream gathers the changes of `batch_seconds` into one write: with hundreds of
    streams open, a write per change per stream would crowd the worker out of the loop it
    shares with them. Each change is still sent, once and in order, and encoded once for
    every stream that sends it."""

    def gather() -> float:
        return batch_seconds(queue.events.watching_all())

    async def events() -> AsyncIterator[bytes]:
        # the finally (not a with block) is what runs when the client leaves mid-yield
        feed = queue.events.open_feed(None, owner)
        try:
            # a comment, so the client knows it hears every change from here on
            yield b": listening\n\n"
            while True:
                batch = await feed.next_batch(SSE_KEEPALIVE, gather, still_valid)
                if batch.changes:
                    yield b"".join(c.encoded(_sse) for c in batch.changes)
                elif not batch.ended:
                    yield KEEP_ALIVE_COMMENT
                if batch.ended:
                    # the client fell too far behind (it reconnects and catches up), the
                    # key no longer stands, or foreman is shutting down
                    return
        finally:
            feed.stop()
            slot.release()

    return event_stream(events())


def _job_stream(
    queue: JobQueue,
    standings: Standings,
    job_id: str,
    still_valid: Callable[[], bool],
    slot: StreamSlot,
) -> Response:
    """Server-sent events of one job: a `job` event per change, starting with its current
    state and ending after its terminal state (or when the caller's key is revoked); and
    while it is queued, a `position` event whenever its position or estimated start
    changes, at most once a second. Holds `slot` until it ends. Each change of the job is
    written at once: a job's stream carries a few in all."""

    async def events() -> AsyncIterator[bytes]:
        # subscribed before reading the job, so no change falls between the two; the
        # finally (not a with block) is what runs when the client leaves mid-yield
        feed = queue.events.open_feed(job_id)
        try:
            current = await queue.get(job_id)
            if current is None:
                return
            yield _sse(current)
            if current.state.terminal:
                return
            watch = _Watch(standings, job_id)
            quiet_until = trio.current_time() + SSE_KEEPALIVE
            while True:
                if current.state is JobState.QUEUED:
                    shown = await watch.check(current)
                    if shown is not None:
                        yield shown
                        quiet_until = trio.current_time() + SSE_KEEPALIVE
                now = trio.current_time()
                wait = quiet_until - now
                if current.state is JobState.QUEUED:
                    wait = min(wait, max(0.0, watch.next_check - now))
                batch = await feed.next_batch(max(0.0, wait), None, still_valid)
                if batch.changes:
                    current = batch.changes[-1].job
                    yield b"".join(c.encoded(_sse) for c in batch.changes)
                    quiet_until = trio.current_time() + SSE_KEEPALIVE
                elif not batch.ended and trio.current_time() >= quiet_until:
                    yield KEEP_ALIVE_COMMENT
                    quiet_until = trio.current_time() + SSE_KEEPALIVE
                if batch.ended:
                    # the job ended, the client fell too far behind (it reconnects and
                    # catches up), the key no longer stands, or foreman is shutting down
                    return
        finally:
            feed.stop()
            slot.release()

    return event_stream(events())


class _Watch:
    """A queued job's standing as its stream last sent it, and when to look again."""

    def __init__(self, standings: Standings, job_id: str) -> None:
        self.standings = standings
        self.job_id = job_id
        self.next_check = trio.current_time()
        self.version = -1
        self.position: int | None = None
        self.start: float | None = None

    async def check(self, job: Job) -> bytes | None:
        """A `position` event if the job's standing changed (a position, or an estimate
        moved by a second or more), at most once per `REFRESH_SECONDS`."""
        now = trio.current_time()
        if now < self.next_check:
            return None
        self.next_check = now + REFRESH_SECONDS
        if not self.standings.changed_since(self.version):
            return None
        self.version = self.standings.version
        standing = await self.standings.of(job)
        if standing is None:
            return None
        start = self.standings.start_time(standing)
        moved = (start is None) != (self.start is None) or (
            start is not None and self.start is not None and abs(start - self.start) >= 1.0
        )
        if standing.position == self.position and not moved:
            return None
        self.position, self.start = standing.position, start
        body = {"id": self.job_id} | standing_json(standing, start)
        return sse_event("position", body, self.job_id)


def batch_seconds(streams: int) -> float:
    """How long a queue-wide stream gathers changes, with `streams` such streams open."""
    return max(STREAM_BATCH, streams / STREAM_WRITES)


def _sse(job: Job) -> bytes:
    return sse_event("job", job_json(job), job.id)
