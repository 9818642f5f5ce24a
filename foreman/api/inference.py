"""Answers a chat or generate request (native or /v1) from its job: waits for the worker,
passes on what it sends.

If the client hangs up while its job waits, the job is cancelled and never reaches
Ollama; if it hangs up while the job runs, the upstream request is closed at once
(except during shutdown, when jobs stay queued for the next start).

Heartbeat: a request still without an answer after FOREMAN_HEARTBEAT seconds (streamed
ones always, non-streamed ones when asked with `X-Foreman-Heartbeat: 1` or the setting)
gets its response head (status 200) at once, then a heartbeat part every interval until
the real answer flows, so a tunnel that drops silent responses keeps it open. The
trade-off: from then on the status code is spent, and a failure arrives in the body, as
Ollama's in-band error line (or OpenAI's error event, or the error document).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncGenerator, AsyncIterator

import attrs
import trio
from quart import Response, request

from foreman.answers import Family, heartbeat_part, replay_stream
from foreman.api.auth import caller, note
from foreman.api.errors import error_for, failure_line, failure_reply
from foreman.api.responses import (
    EVENT_STREAM,
    JSON,
    STREAMING_HEADERS,
    build_response,
    compact_json,
    request_body,
)
from foreman.api.services import Services
from foreman.config import Settings
from foreman.jobs import Endpoint, Job, JobState, NewJob
from foreman.queue import (
    Chunk,
    Failed,
    IdempotencyConflict,
    JobQueue,
    Message,
    Reply,
    StreamStart,
    Ticket,
)
from foreman.timefmt import rfc3339
from foreman.upstream import error_message
from foreman.validate import (
    InvalidRequest,
    check_idempotency_key,
    check_ref,
    inference_request,
    parse_priority,
)

DISCONNECTED = "client disconnected"
# bound on the shielded clean-up after a client leaves (a store write, normally instant)
CLEANUP_SECONDS = 30
# asks for heartbeats (`1`) or none (`0`) on one request; answers with heartbeats carry it
HEARTBEAT_HEADER = "X-Foreman-Heartbeat"
# the header's old name, still read and sent for one release
OLD_HEARTBEAT_HEADER = "X-Foreman-Keepalive"
# the most a stream's waiting parts are joined into before one write to the client
COALESCE_BYTES = 64 * 1024


async def submit_and_answer(services: Services, endpoint: Endpoint) -> Response:
    """A synchronous chat/generate request: validate, store as a job, wait, answer.

    X-Foreman-Priority and X-Foreman-Ref set the job's priority and ref; an
    Idempotency-Key that names an existing job answers from that job instead.
    """
    raw = await request_body()
    headers = request.headers
    try:
        parsed = inference_request(endpoint, raw)
        priority = parse_priority(headers.get("X-Foreman-Priority"))
        ref = check_ref(headers.get("X-Foreman-Ref"))
        key = check_idempotency_key(headers.get("Idempotency-Key"))
    except InvalidRequest as exc:
        return error_for(endpoint.value, 400, str(exc))
    key_holder = caller()
    new = NewJob(
        endpoint=endpoint,
        model=parsed.model,
        model_key=parsed.model_key,
        body=raw,
        stream=parsed.stream,
        priority=priority,
        ref=ref,
        max_attempts=services.settings.max_attempts,
        idempotency_key=key,
        request_hash=hashlib.sha256(endpoint.value.encode() + b"\0" + raw).hexdigest()
        if key
        else None,
        key_name=key_holder.name if key_holder is not None else None,
        weight=key_holder.weight if key_holder is not None else 1,
    )
    try:
        limit = key_holder.max_queued if key_holder is not None else None
        submitted = await services.queue.submit(new, attach=True, max_queued=limit)
    except IdempotencyConflict as exc:
        return error_for(endpoint.value, 409, str(exc))
    note(job=submitted.job.id)
    interval = heartbeat_interval(services.settings, parsed.stream)
    if submitted.ticket is None:
        return await replay(services.queue, submitted.job, interval)
    return await answer(services.queue, submitted.job, submitted.ticket, interval)


def heartbeat_interval(settings: Settings, stream: bool) -> float | None:
    """Seconds between heartbeat parts for this request, or None for none: on for
    streams, for others only if asked (`X-Foreman-Heartbeat: 1` or the setting); the
    header also turns it off (`0`). The header's old name still counts for one release;
    given both, the new one wins."""
    wanted = stream or settings.heartbeat_unstreamed
    header = request.headers.get(HEARTBEAT_HEADER, request.headers.get(OLD_HEARTBEAT_HEADER))
    if header is not None:
        wanted = header.strip().lower() not in ("0", "false", "no", "off")
    if not wanted or settings.heartbeat <= 0:
        return None
    return settings.heartbeat


async def replay(queue: JobQueue, job: Job, heartbeat: float | None = None) -> Response:
    """Answer a repeated request (same Idempotency-Key) from the job it already made:
    wait for it to end, then answer with its stored result. With heartbeats on, a wait
    longer than one interval turns into an answer with heartbeats, as a first request's
    does."""
    while not job.state.terminal:
        if not queue.accepting:
            return error_for(
                job.endpoint.value, 503, "foreman is shutting down", {"Retry-After": "30"}
            )
        current = await queue.wait(job.id, 60.0 if heartbeat is None else heartbeat)
        if current is None:
            return error_for(job.endpoint.value, 404, f"job {job.id} is gone")
        job = current
        if heartbeat is not None and not job.state.terminal:
            return _replay_with_heartbeats(queue, job, heartbeat)
    headers = dict(foreman_headers(job.id, job.queue_ms or 0))
    if job.state is not JobState.DONE:
        return error_for(job.endpoint.value, *_no_answer(job, repeated=True), headers)
    content_type, data = _stored_answer(job)
    return Response(data, 200, headers, content_type=content_type)


def _stored_answer(job: Job) -> tuple[str, bytes]:
    """A done job's stored result as its request expects it: for a stream, one part in
    the endpoint's own framing (an NDJSON line, or one SSE event and [DONE] on /v1)."""
    if job.stream:
        return replay_stream(job.endpoint, job.result)
    return JSON, compact_json(job.result).encode()


def _replay_with_heartbeats(queue: JobQueue, job: Job, interval: float) -> Response:
    """A repeated request whose job is still under way: status 200 and the head now,
    heartbeat parts until the job ends, then its stored answer (a failure in-band)."""

    async def parts() -> AsyncIterator[bytes]:
        current: Job | None = job
        yield _tick(queue, job)
        while current is not None and not current.state.terminal:
            if not queue.accepting:
                yield _failure(job, 503, "foreman is shutting down; ask again after the restart")
                return
            current = await queue.wait(job.id, interval)
            if current is not None and not current.state.terminal:
                yield _tick(queue, job)
        if current is None:
            yield _failure(job, 404, f"job {job.id} is gone")
        elif current.state is JobState.DONE:
            yield _stored_answer(current)[1]
        else:
            yield _failure(job, *_no_answer(current, repeated=True))

    return Response(parts(), 200, _heartbeat_headers(job), content_type=_content_type(job))


async def answer(
    queue: JobQueue, job: Job, ticket: Ticket, heartbeat: float | None = None
) -> Response:
    first: Message | None = None
    try:
        try:
            with trio.move_on_after(math.inf if heartbeat is None else heartbeat):
                first = await ticket.receive_channel.receive()
        except trio.EndOfChannel:
            ticket.release()
            return await _ended_without_answer(queue, job, ticket)
    except trio.Cancelled:
        with trio.move_on_after(CLEANUP_SECONDS, shield=True):
            await _client_left(queue, job, ticket)
        raise
    if first is None:
        assert heartbeat is not None
        return _with_heartbeats(queue, job, ticket, heartbeat)
    if isinstance(first, Reply | Failed):
        ticket.release()
        reply = _whole(job, first)
        return build_response(reply.body, reply.status, reply.headers)
    assert isinstance(first, StreamStart)
    headers = first.headers + foreman_headers(job.id, first.queue_ms)
    return build_response(
        _delivered(queue, job, ticket, _stream_rest(job, first, ticket)), first.status, headers
    )


def foreman_headers(job_id: str, queue_ms: int) -> tuple[tuple[str, str], ...]:
    """Which job answered the client, and how long it waited in the queue."""
    return (("X-Foreman-Job-Id", job_id), ("X-Foreman-Queue-Ms", str(queue_ms)))


def _whole(job: Job, message: Reply | Failed) -> Reply:
    """The whole answer the client gets: Ollama's, or the failure in the shape of the
    job's route family, with foreman's headers after Ollama's."""
    reply = message if isinstance(message, Reply) else failure_reply(job.endpoint, message)
    return attrs.evolve(reply, headers=reply.headers + foreman_headers(job.id, reply.queue_ms))


async def _stream_rest(job: Job, start: StreamStart, ticket: Ticket) -> AsyncGenerator[bytes, None]:
    """A stream's first part, then each chunk the worker relays, until the last (a
    failure's in-band line, if the stream failed). Parts already waiting when the client's
    socket is ready go out together, one write for many lines (`waiting_parts`)."""
    yield start.first
    channel = ticket.receive_channel
    async for message in channel:
        yield _part(job, message) + waiting_parts(job, channel)


def waiting_parts(job: Job, channel: trio.MemoryReceiveChannel[Message]) -> bytes:
    """Every part already in `channel`, joined, without waiting for more (up to
    COALESCE_BYTES, so a fast stream still reaches the client in pieces)."""
    parts: list[bytes] = []
    size = 0
    while size < COALESCE_BYTES:
        try:
            message = channel.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        part = _part(job, message)
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def _part(job: Job, message: Message) -> bytes:
    if isinstance(message, Failed):
        return failure_line(job.endpoint, message)
    assert isinstance(message, Chunk)
    return message.data


async def _delivered(
    queue: JobQueue, job: Job, ticket: Ticket, parts: AsyncGenerator[bytes, None]
) -> AsyncIterator[bytes]:
    """Send `parts` to the client; if it leaves before they end, its job goes as a
    departed client's does. Either way the ticket is let go."""
    complete = False
    try:
        async for part in parts:
            yield part
        complete = True
    finally:
        with trio.move_on_after(CLEANUP_SECONDS, shield=True):
            await parts.aclose()
            if not complete:
                await _client_left(queue, job, ticket)
        ticket.release()


def _with_heartbeats(queue: JobQueue, job: Job, ticket: Ticket, interval: float) -> Response:
    """The answer of a request that waited `interval` without one: status 200 and the
    head now, heartbeat parts until the real answer, then the answer itself (a failure
    in-band, since the status is spent)."""

    async def parts() -> AsyncGenerator[bytes, None]:
        yield _tick(queue, job)
        message: Message | None = None
        ended = False
        while message is None and not ended:
            with trio.move_on_after(interval):
                try:
                    message = await ticket.receive_channel.receive()
                except trio.EndOfChannel:
                    ended = True
            if message is None and not ended:
                yield _tick(queue, job)
        if message is None:
            current = await queue.get(job.id) or job
            yield _failure(job, *_no_answer(current, ticket.closed_because))
        elif isinstance(message, Reply | Failed):
            reply = _whole(job, message)
            if 200 <= reply.status < 300 or not job.stream:
                yield reply.body
            else:
                yield _failure(job, reply.status, error_message(reply.body, reply.status))
        else:
            assert isinstance(message, StreamStart)
            async for part in _stream_rest(job, message, ticket):
                yield part

    return Response(
        _delivered(queue, job, ticket, parts()),
        200,
        _heartbeat_headers(job),
        content_type=_content_type(job),
    )


def _heartbeat_headers(job: Job) -> dict[str, str]:
    return {
        "X-Foreman-Job-Id": job.id,
        HEARTBEAT_HEADER: "1",
        OLD_HEARTBEAT_HEADER: "1",
        **STREAMING_HEADERS,
    }


def _content_type(job: Job) -> str:
    """What an answer with heartbeats is, announced before the answer exists."""
    if not job.stream:
        return JSON
    return EVENT_STREAM if job.endpoint.openai else "application/x-ndjson"


def _tick(queue: JobQueue, job: Job) -> bytes:
    return heartbeat_part(job.endpoint, job.model, _ollama_time(queue), job.stream)


def _failure(job: Job, status: int, message: str) -> bytes:
    """A failure after the head went out: in-band, in the job's own framing."""
    family = Family.of(job.endpoint)
    if job.stream:
        return family.stream_error(message)
    return family.error_body(status, message)


def _ollama_time(queue: JobQueue) -> str:
    """Now, as Ollama writes `created_at` (RFC 3339, UTC, trailing Z)."""
    return rfc3339(queue.now(), "microseconds")


def _no_answer(
    current: Job, closed_because: str | None = None, *, repeated: bool = False
) -> tuple[int, str]:
    """The status and message for a job that ended (or was let go) without an answer.

    A first request's client hears that its job was cancelled (and why, if it was
    said); a repeated request (same Idempotency-Key) hears the job's stored error."""
    if closed_because is not None:
        return 503, closed_because
    if current.state is JobState.CANCELLED and not repeated:
        message = f"job {current.id} was cancelled"
        return 499, message + (f": {current.error}" if current.error else "")
    status = 499 if current.state is JobState.CANCELLED else 500
    return status, current.error or f"job {current.id} ended as {current.state.value}"


async def _client_left(queue: JobQueue, job: Job, ticket: Ticket) -> None:
    """Cancel the job of a client that hung up (callers shield this). During shutdown
    the job stays queued: it runs after the restart, and its result can be collected."""
    ticket.release()
    if queue.accepting:
        await queue.cancel(job.id, DISCONNECTED)


async def _ended_without_answer(queue: JobQueue, job: Job, ticket: Ticket) -> Response:
    """The job finished without the worker answering us (e.g. it was cancelled), or
    shutdown let us go while it stays queued; the error takes the shape of the job's
    route family."""
    headers = {"X-Foreman-Job-Id": job.id}
    if ticket.closed_because is not None:
        headers["Retry-After"] = "30"
        return error_for(job.endpoint.value, 503, ticket.closed_because, headers)
    current = await queue.get(job.id) or job
    status, message = _no_answer(current, ticket.closed_because)
    return Response(
        Family.of(job.endpoint).error_body(status, message),
        status=status,
        content_type=JSON,
        headers=headers,
    )
